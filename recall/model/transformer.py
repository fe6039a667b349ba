"""A SASRec-style self-attention encoder with a banded causal mask (Kang & McAuley 2018; the band and
the relative positions make one causal pass over a sequence give every position's exact query).

    item embeddings · √D ─► dropout
      ─► blocks × [ x + Dropout(MHA_band(LN(x)))  →  x + Dropout(FFN(LN(x))) ]   (pre-LayerNorm)
      ─► LN ─► the latest position's vector

Item i attends to itself and the `band − 1` items before it, with a learned bias per head and per
distance i − j (relative positions, T5-style) instead of SASRec's absolute position embeddings. So
the state of an item depends only on the items within `blocks · (band − 1)` before it, at their
distances — the same whether the item sits in a short serving history or deep inside a training
chunk. Padding is masked out of every attention (as keys) and zeroed after every block, so extra PAD
on the left changes nothing.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


def receptive_field(blocks: int, band: int) -> int:
    """How many of the latest items the last position's state depends on."""
    return blocks * (band - 1) + 1


class TransformerBlock(keras.layers.Layer):
    """One pre-LayerNorm block: banded causal multi-head self-attention with relative position biases
    and a point-wise FFN, each residual.

    call(x float [B, T, D], mask float [B, T, 1] (1 = item, 0 = padding), training) → [B, T, D],
    zeros at padding positions.
    """

    def __init__(self, dim: int, heads: int = 1, band: int = 8, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads, self.band, self.dropout_rate = dim, heads, band, dropout
        self.attention_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="attention_norm")
        self.qkv = keras.layers.Dense(3 * dim, name="qkv")
        self.attention_out = keras.layers.Dense(dim, name="attention_out")
        # bias[h, d]: what head h adds to the score of a key d items back (0 = the item itself).
        self.relative_bias = self.add_weight(shape=(heads, band), initializer="zeros", name="relative_bias")
        self.ffn_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="ffn_norm")
        self.ffn_inner = keras.layers.Dense(dim, activation="relu", name="ffn_inner")
        self.ffn_outer = keras.layers.Dense(dim, name="ffn_outer")
        self.drop = keras.layers.Dropout(dropout)

    def _attend(self, h, mask, training):
        steps, heads, head_dim = ops.shape(h)[1], self.heads, self.dim // self.heads
        q, k, v = (tf.transpose(tf.reshape(t, [-1, steps, heads, head_dim]), [0, 2, 1, 3])
                   for t in tf.split(self.qkv(h), 3, axis=-1))  # each [B, H, T, d]
        idx = tf.range(steps)
        back = idx[:, None] - idx[None, :]  # [T, T]: how far key j is behind query i
        in_band = (back >= 0) & (back < self.band)
        bias = tf.gather(self.relative_bias, tf.clip_by_value(back, 0, self.band - 1), axis=1)  # [H, T, T]
        allowed = in_band[None, None] & (tf.transpose(mask, [0, 2, 1])[:, None] > 0)  # [B, 1, T, T]
        scores = tf.matmul(q, k, transpose_b=True) / head_dim**0.5 + bias[None]
        weights = tf.nn.softmax(tf.where(allowed, scores, -1e9), axis=-1) * tf.cast(allowed, scores.dtype)
        out = tf.matmul(self.drop(weights, training=training), v)  # [B, H, T, d]
        return self.attention_out(tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [-1, steps, self.dim]))

    def call(self, x, mask, training=False):
        x = x + self.drop(self._attend(self.attention_norm(x), mask, training), training=training)
        h = self.ffn_norm(x)
        x = x + self.drop(self.ffn_outer(self.drop(self.ffn_inner(h), training=training)), training=training)
        return x * mask

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "heads": self.heads, "band": self.band,
                "dropout": self.dropout_rate}


class SelfAttentionEncoder(keras.layers.Layer):
    """`blocks` TransformerBlocks + a final LayerNorm over a sequence: every position's state.

    call(emb float [B, T, D] (zeros at padding), mask float [B, T, 1], training) → [B, T, D], the
    final-normed state of every position (zeros at padding). The caller owns the item embeddings
    (so they can be the tied output table) and picks the positions it needs.
    """

    def __init__(self, dim: int, blocks: int = 2, heads: int = 1, band: int = 8, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.blocks, self.heads, self.band, self.dropout_rate = dim, blocks, heads, band, dropout
        self.drop = keras.layers.Dropout(dropout)
        # Each block also gets an attribute of its own: tf.train.Checkpoint does not look inside
        # Keras 3's tracked lists (keras-team/keras#18398).
        self.block_layers = [TransformerBlock(dim, heads, band, dropout, name=f"block_{i}") for i in range(blocks)]
        for layer in self.block_layers:
            setattr(self, layer.name, layer)
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")

    def call(self, emb, mask, training=False):
        # SASRec's √D scaling: the (tied) table's elements start at stddev 1/√D, so item vectors
        # enter the residual stream at unit scale.
        x = self.drop(emb * self.dim**0.5, training=training) * mask
        for block in self.block_layers:
            x = block(x, mask, training=training)
        return self.final_norm(x) * mask

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "blocks": self.blocks, "heads": self.heads,
                "band": self.band, "dropout": self.dropout_rate}
