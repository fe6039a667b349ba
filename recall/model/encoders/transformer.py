"""Self-attention over the latest items (recall/model/transformer.py): banded, with relative positions.

Each item attends to the `window` items up to and including itself; with `blocks` blocks the latest
item's state depends on the latest blocks · (window − 1) + 1 items (`reads`), at their distances. The
per-position form runs over exactly those; the causal form runs once over the chunk and reads the
state of column j − 1 for every labelled position j — the same function (exact).
"""

from __future__ import annotations

from recall.model.encoders.base import HistoryEncoder, PositionView, SequenceView
from recall.model.transformer import SelfAttentionEncoder, receptive_field


class TransformerEncoder(HistoryEncoder):
    """The final-normed state of the latest history item → [D] (zeros for an empty history)."""

    kind = "transformer"

    def __init__(self, dim: int, band: int, blocks: int = 2, heads: int = 1, dropout: float = 0.2, **kwargs):
        super().__init__(dim, receptive_field(blocks, band), **kwargs)
        self.band, self.blocks, self.heads, self.dropout_rate = band, blocks, heads, dropout
        self.encoder = SelfAttentionEncoder(dim, blocks, heads, band, dropout, name="encoder")

    def per_position(self, view: PositionView, training=False):
        emb, mask = view.window(self.reads)
        return self.encoder(emb, mask, training=training)[:, -1]

    def causal(self, view: SequenceView, training=False):
        lo, hi = view.context - self.reads, view.columns - 1  # all that the labelled positions depend on
        states = self.encoder(view.emb[:, lo:hi], view.mask[:, lo:hi], training=training)
        return states[:, self.reads - 1:]  # column j − 1's state for each labelled position j

    def get_config(self):
        return {**super().get_config(), "band": self.band, "blocks": self.blocks, "heads": self.heads,
                "dropout": self.dropout_rate}
