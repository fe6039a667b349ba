"""Pooled history: the mean of the latest n items (`mean`), and `recent` = that mean plus the latest item."""

from __future__ import annotations

from keras import ops

from recall.model.encoders.base import HistoryEncoder, PositionView, SequenceView


def _masked_mean(emb, mask):
    return ops.sum(emb, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)


class MeanEncoder(HistoryEncoder):
    """Mean of the latest `reads` history items → [D] (zeros for an empty history).

    Over the whole history matrix (reads = max_history) it is the shared sparse segment mean, whose
    gradient is one row per distinct item of the batch; the causal form is a band matmul.
    """

    kind = "mean"

    def __init__(self, dim: int, reads: int, max_history: int, **kwargs):
        super().__init__(dim, reads, **kwargs)
        self.whole = reads >= max_history
        self.reads_window = not self.whole
        self.max_history = max_history

    def per_position(self, view: PositionView, training=False):
        return view.mean if self.whole else _masked_mean(*view.window(self.reads))

    def causal(self, view: SequenceView, training=False):
        return view.windowed_mean(self.reads)

    def get_config(self):
        return {**super().get_config(), "max_history": self.max_history}


class RecentEncoder(HistoryEncoder):
    """[mean of the latest `reads` items, the latest item] → [2D] (zeros where there is none)."""

    kind = "recent"
    width_factor = 2

    def per_position(self, view: PositionView, training=False):
        latest = ops.reshape(view.window(1)[0], [-1, self.dim])
        return ops.concatenate([_masked_mean(*view.window(self.reads)), latest], axis=-1)

    def causal(self, view: SequenceView, training=False):
        return ops.concatenate([view.windowed_mean(self.reads), view.latest(1)[0]], axis=-1)
