"""A SASRec-style self-attention encoder over the most recent history items (Kang & McAuley 2018).

    item embeddings · √D + learned position embeddings ─► dropout
      ─► blocks × [ x + Dropout(MHA(LN(x)))  →  x + Dropout(FFN(LN(x))) ]   (pre-LayerNorm, causal)
      ─► LN ─► the latest position's vector `[batch, D]`

Histories are right-aligned (PAD on the left), so the latest item is always the last column and
position embeddings count back from it: position −1 is the latest item whatever the history's
length. Padding is masked out of every attention (as keys) and zeroed after every block, so extra
PAD on the left changes nothing.
"""

from __future__ import annotations

import keras
from keras import ops


class TransformerBlock(keras.layers.Layer):
    """One pre-LayerNorm block: causal multi-head self-attention and a point-wise FFN, each residual.

    call(x float [B, L, D], mask float [B, L, 1] (1 = item, 0 = padding), training) → [B, L, D],
    zeros at padding positions.
    """

    def __init__(self, dim: int, heads: int = 1, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads, self.dropout_rate = dim, heads, dropout
        self.attention_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="attention_norm")
        self.attention = keras.layers.MultiHeadAttention(heads, dim // heads, dropout=dropout, name="attention")
        self.ffn_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="ffn_norm")
        self.ffn_inner = keras.layers.Dense(dim, activation="relu", name="ffn_inner")
        self.ffn_outer = keras.layers.Dense(dim, name="ffn_outer")
        self.drop = keras.layers.Dropout(dropout)

    def call(self, x, mask, training=False):
        length = ops.shape(x)[1]
        keys = ops.cast(ops.transpose(mask, [0, 2, 1]) > 0, "bool")  # [B, 1, L]
        causal = ops.cast(ops.tril(ops.ones((length, length))), "bool")  # query i sees keys j ≤ i
        # [B, L, L]. A padding query sees no key at all; its (finite) output is zeroed below.
        attention_mask = ops.logical_and(keys, causal[None])
        h = self.attention_norm(x)
        x = x + self.drop(self.attention(h, h, h, attention_mask=attention_mask, training=training),
                          training=training)
        h = self.ffn_norm(x)
        x = x + self.drop(self.ffn_outer(self.drop(self.ffn_inner(h), training=training)), training=training)
        return x * mask

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "heads": self.heads, "dropout": self.dropout_rate}


class SelfAttentionEncoder(keras.layers.Layer):
    """Positions + `blocks` TransformerBlocks + a final LayerNorm; returns the latest position.

    call(emb float [B, L, D] (zeros at padding), mask float [B, L, 1], training) → [B, D], L ≤ `length`.
    The caller owns the item embeddings (so they can be the tied output table).
    """

    def __init__(self, length: int, dim: int, blocks: int = 2, heads: int = 1, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.length, self.dim, self.blocks, self.heads, self.dropout_rate = length, dim, blocks, heads, dropout
        # Row length − 1 is the latest item; rows count back from it.
        self.positions = self.add_weight(shape=(length, dim), name="positions",
                                         initializer=keras.initializers.TruncatedNormal(stddev=0.02))
        self.drop = keras.layers.Dropout(dropout)
        # Each block also gets an attribute of its own: tf.train.Checkpoint does not look inside
        # Keras 3's tracked lists (keras-team/keras#18398).
        self.block_layers = [TransformerBlock(dim, heads, dropout, name=f"block_{i}") for i in range(blocks)]
        for layer in self.block_layers:
            setattr(self, layer.name, layer)
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")

    def call(self, emb, mask, training=False):
        length = ops.shape(emb)[1]
        # SASRec's √D scaling: the (tied) table's elements start at stddev 1/√D, so item vectors
        # enter the residual stream at unit scale and the small learned positions adjust them.
        x = emb * self.dim**0.5 + self.positions[self.length - length :][None] * mask
        x = self.drop(x, training=training) * mask
        for block in self.block_layers:
            x = block(x, mask, training=training)
        # Right-aligned: the last column is the latest item (zeros when the history is empty).
        return self.final_norm(x[:, -1]) * mask[:, -1]

    def get_config(self):
        return {**super().get_config(), "length": self.length, "dim": self.dim, "blocks": self.blocks,
                "heads": self.heads, "dropout": self.dropout_rate}
