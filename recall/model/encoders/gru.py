"""A GRU over the latest n history items (GRU4Rec-style: order and short-term dynamics).

Per position it is Keras' GRU over the latest n items (recall/model/gru.py, unrolled for a CPU).
Its causal form is a *running* GRU: over each chunk it starts n items before the chunk's first
labelled position and emits its state after every item, so position j of a chunk (0-based among the
labelled ones) sees n + j items — between n and n + L − 1 — where evaluation and the exported tower
see the latest n. That is the one encoder whose two forms differ (`exact = False`): the first
labelled position of every chunk matches exactly, later ones carry state from further back.
tests/test_encoders.py measures the gap; prefer an exact encoder (transformer, minGRU, the means)
with `train.batching: sequences` when train/serve parity matters more than the GRU's recurrence.
"""

from __future__ import annotations

from recall.model.encoders.base import HistoryEncoder, PositionView, SequenceView
from recall.model.gru import UnrolledGRU


class GRUEncoder(HistoryEncoder):
    """GRU state after the latest `reads` items → [D] (zeros for an empty history)."""

    kind = "gru"
    exact = False

    def __init__(self, dim: int, reads: int, compute_dtype: str = "float32", **kwargs):
        super().__init__(dim, reads, **kwargs)
        self.compute_dtype_name = compute_dtype
        self.gru = UnrolledGRU(dim, matmul_dtype=compute_dtype, name="gru")

    def per_position(self, view: PositionView, training=False):
        # Right-aligned padding sits before the items, so a masked GRU simply skips it.
        emb, mask = view.window(self.reads)
        return self.gru(emb, mask=mask[..., 0] > 0)

    def causal(self, view: SequenceView, training=False):
        lo, hi = view.context - self.reads, view.columns - 1  # the items before the last labelled position
        states = self.gru(view.emb[:, lo:hi], mask=view.mask[:, lo:hi, 0] > 0, return_sequences=True)
        return states[:, self.reads - 1:]  # the state after column j − 1, for each labelled j

    def get_config(self):
        return {**super().get_config(), "compute_dtype": self.compute_dtype_name}
