"""Attention pooling: the latest item asks which of the latest n items matter; positions are learned.

    scores_s = q · (e_s + P[position of s]) / √D,  q = W e_latest,  out = Σ_s softmax(scores)_s e_s

Positions count back from the query (P[n − 1] = the latest item), so the causal form reads the same
position embedding for an item at the same distance: it is exact.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from recall.model.encoders.base import HistoryEncoder, PositionView, SequenceView


class AttentionEncoder(HistoryEncoder):
    """Softmax-weighted mean of the latest `reads` items → [D] (zeros for an empty history)."""

    kind = "attention"

    def __init__(self, dim: int, reads: int, **kwargs):
        super().__init__(dim, reads, **kwargs)
        self.position_embeddings = self.add_weight(shape=(reads, dim), initializer="zeros",
                                                   name="position_embeddings")
        self.attention_query = keras.layers.Dense(dim, use_bias=False, name="attention_query")

    def per_position(self, view: PositionView, training=False):
        emb, mask = view.window(self.reads)  # [B, n, D], [B, n, 1]
        keys = emb + self.position_embeddings[None] * mask
        query = self.attention_query(emb[:, -1])  # [B, D]
        scores = ops.einsum("bd,bmd->bm", query, keys) / self.dim**0.5
        scores = ops.where(mask[..., 0] > 0, scores, -1e9)
        weights = ops.softmax(scores, axis=-1) * mask[..., 0]  # all-padding rows → zeros
        return ops.einsum("bm,bmd->bd", weights, emb)

    def causal(self, view: SequenceView, training=False):
        n, length, columns = self.reads, view.length, view.columns
        query = self.attention_query(view.latest(1)[0])  # [C, L, D]
        # Column s seen from labelled position l sits at window slot n − (j − s), j = context + l.
        j = view.context + np.arange(length)[:, None]
        slot = n - (j - np.arange(columns)[None, :])  # [L, S]
        inside = (slot >= 0) & (slot < n)
        one_hot = tf.constant(np.eye(n, dtype=np.float32)[np.where(inside, slot, 0)] * inside[..., None])  # [L, S, n]
        by_slot = tf.einsum("cld,nd->cln", query, self.position_embeddings)  # q · P[slot]  [C, L, n]
        scores = (tf.einsum("cld,csd->cls", query, view.emb) + tf.einsum("cln,lsn->cls", by_slot, one_hot))
        scores = scores / self.dim**0.5
        present = view.band(n)[None] * view.mask[:, None, :, 0]  # [C, L, S]
        weights = tf.nn.softmax(tf.where(present > 0, scores, -1e9), axis=-1) * present
        return tf.einsum("cls,csd->cld", weights, view.emb)
