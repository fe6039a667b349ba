"""The latest n history items, each in its own slot: the MLP sees their order."""

from __future__ import annotations

from keras import ops

from recall.model.encoders.base import HistoryEncoder, PositionView, SequenceView


class LastItemsEncoder(HistoryEncoder):
    """[item −n, …, item −1] (oldest slot first) → [n·D], zeros at slots the history does not reach."""

    kind = "last_items"

    def output_width(self) -> int:
        return self.reads * self.dim

    def per_position(self, view: PositionView, training=False):
        return ops.reshape(view.window(self.reads)[0], [-1, self.reads * self.dim])

    def causal(self, view: SequenceView, training=False):
        slots = [view.latest(k)[0] for k in range(self.reads, 0, -1)]  # oldest first, as per position
        return ops.concatenate(slots, axis=-1)
