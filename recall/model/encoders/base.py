"""The history-encoder interface: one function of "the items before a position", in two forms.

    per position  encoder.per_position(PositionView)  a batch of histories      → [B, out]
    causal        encoder.causal(SequenceView)  a batch of chunks  → [C, L, out], one vector per labelled
                  position of each chunk, each computed from the items before that position only

A *chunk* is a run of L consecutive labelled positions of one user's train sequence plus the
`context` items before its first one (fewer at the start of a sequence: padding). Its items are the
columns 0..S−1 (S = context + L) and position j ≥ context is labelled: its label is item j and its
history is the columns before j. So column j − 1 is the latest item of position j's history.

Every encoder reads at most its `reads` most recent items (≤ model.max_history ≤ context). Where an
encoder is exact (every one but the running GRU), `causal(view)[c, l]` equals `encoder(...)` on the
history of that position — tests/test_encoders.py checks it to 1e-5 for each.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops


class PositionView:
    """What per-position encoders read: one lookup of a batch's distinct history items, shared.

    mean     [B, D]  mean of each row's history items (zeros for an empty history)
    window(n) → (emb [B, n, D] zeros at padding, mask [B, n, 1]) of the latest n positions, left-padded
             when the history matrix is narrower than n (short serving histories)
    """

    def __init__(self, mean, rows, slots):
        self.mean = mean
        self._rows, self._slots = rows, slots  # [R + 1, D] (zero row last), int32 [B, M] (−1 = padding), or None
        # when no encoder reads a window
        self._windows: dict[int, tuple] = {}

    def window(self, n: int):
        # Each width gathers its own window rather than slicing a wider one: a slice's gradient is a
        # zero-filled copy of the tensor it was cut from (TF's StridedSliceGrad, ~5 % of the shipped
        # ML-1M step in TF's profiler); a gather's is its own rows.
        if n not in self._windows:
            slots = last_columns(self._slots, n)
            present = slots >= 0
            emb = tf.gather(self._rows, tf.where(present, slots, tf.shape(self._rows)[0] - 1))
            self._windows[n] = (emb, ops.cast(present, "float32")[..., None])
        return self._windows[n]


class SequenceView:
    """What causal encoders read: a batch of chunks.

    emb    [C, S, D]  item embeddings of the chunk's columns, zeros at padding
    mask   [C, S, 1]  1 = an item, 0 = padding
    length L          labelled positions: the last L columns (static)
    """

    def __init__(self, emb, mask, length: int):
        self.emb, self.mask, self.length = emb, mask, int(length)
        self.columns = int(emb.shape[1])
        self.context = self.columns - self.length
        if self.context < 1:
            raise ValueError(f"a chunk needs context columns before its {self.length} labelled positions, "
                             f"got {self.columns} columns")

    def latest(self, k: int = 1):
        """(emb [C, L, D], mask [C, L, 1]) of the k-th latest history item of every labelled position
        (k = 1: column j − 1 for position j)."""
        lo = self.context - k
        return self.emb[:, lo:lo + self.length], self.mask[:, lo:lo + self.length]

    def band(self, n: int, dtype="float32"):
        """`[L, S]` constant: 1 where column s is among the latest n history items of labelled position l
        (j − n ≤ s < j, j = context + l), else 0."""
        return tf.constant(band_matrix(self.length, self.columns, n), dtype)

    def windowed_mean(self, n: int):
        """Mean `[C, L, D]` of each labelled position's latest n history items (zeros when none): a matmul
        with the band, the causal twin of a masked mean over `PositionView.window(n)`."""
        band = self.band(n)
        sums = tf.einsum("ls,csd->cld", band, self.emb)
        counts = tf.einsum("ls,cs->cl", band, self.mask[..., 0])[..., None]
        return sums / tf.maximum(counts, 1.0)


def band_matrix(length: int, columns: int, n: int) -> np.ndarray:
    """`[length, columns]`: A[l, s] = 1 where j − n ≤ s < j for j = columns − length + l."""
    j = columns - length + np.arange(length)[:, None]
    s = np.arange(columns)[None, :]
    return ((s < j) & (s >= j - n)).astype(np.float32)


def last_columns(slots, window: int):
    """The last `window` columns of `slots` [B, M], left-padded with −1 when M < window (a short
    serving history): always `[B, window]` with a static width (the unrolled GRU needs it)."""
    if slots.shape[1] is not None and slots.shape[1] >= window:
        return slots[:, -window:]
    short = tf.maximum(window - tf.shape(slots)[1], 0)
    return tf.reshape(tf.pad(slots, [[0, 0], [short, 0]], constant_values=-1)[:, -window:], [-1, window])


class HistoryEncoder(keras.layers.Layer):
    """Base class. Subclasses set `reads` (the latest items they look at) and `width_factor` (output
    width / D) and implement `per_position(view: PositionView, training)` and `causal(view: SequenceView,
    training)`. The tower calls these methods directly (a view is not a tensor, which Keras' `__call__`
    wants): an encoder creates its weights in `__init__` or through sublayers, which build themselves.

    `exact`: the causal form equals the per-position form (False only for the running GRU).
    """

    kind = "base"
    exact = True
    width_factor = 1
    reads_window = True  # per position it reads `PositionView.window` (False: only the shared mean)

    def __init__(self, dim: int, reads: int, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.reads = dim, int(reads)
        self.built = True

    def per_position(self, view: PositionView, training=False):
        raise NotImplementedError

    def output_width(self) -> int:
        return self.width_factor * self.dim

    def causal(self, view: SequenceView, training=False):
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "reads": self.reads}
