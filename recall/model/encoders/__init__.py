"""History encoders: one module each, one interface (encoders/base.py), composed by the user tower.

A new encoder is a `HistoryEncoder` subclass in a module of its own, a pydantic spec in
recall/config.py (`EncoderConfig`) and one line in `ENCODERS` below.
"""

from __future__ import annotations

from recall.model.encoders.attention import AttentionEncoder
from recall.model.encoders.base import HistoryEncoder, PositionView, SequenceView
from recall.model.encoders.gru import GRUEncoder
from recall.model.encoders.last_items import LastItemsEncoder
from recall.model.encoders.mean import MeanEncoder, RecentEncoder
from recall.model.encoders.min_gru import MinGRUEncoder
from recall.model.encoders.transformer import TransformerEncoder

# kind → a function of (spec: dict of the config entry, dim, max_history, compute_dtype, name) → the layer.
ENCODERS = {
    "mean": lambda s, dim, m, dt, name: MeanEncoder(dim, s.get("window") or m, m, name=name),
    "recent": lambda s, dim, m, dt, name: RecentEncoder(dim, s.get("window", 5), name=name),
    "last_items": lambda s, dim, m, dt, name: LastItemsEncoder(dim, s.get("window", 1), name=name),
    "attention": lambda s, dim, m, dt, name: AttentionEncoder(dim, s.get("window") or m, name=name),
    "gru": lambda s, dim, m, dt, name: GRUEncoder(dim, s.get("window", 20), compute_dtype=dt, name=name),
    "min_gru": lambda s, dim, m, dt, name: MinGRUEncoder(dim, s.get("window", 20), s.get("heads"), name=name),
    "transformer": lambda s, dim, m, dt, name: TransformerEncoder(
        dim, s.get("band", 8), s.get("blocks", 2), s.get("heads", 1), s.get("dropout", 0.2), name=name),
}


def build_encoder(spec: dict, dim: int, max_history: int, compute_dtype: str = "float32",
                  name: str | None = None) -> HistoryEncoder:
    """The encoder layer for one `model.history` entry (a plain dict: `{"kind": "gru", "window": 20}`)."""
    kind = spec["kind"]
    if kind not in ENCODERS:
        raise ValueError(f"unknown history encoder {kind!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[kind](spec, dim, max_history, compute_dtype, name or kind)


__all__ = ["ENCODERS", "HistoryEncoder", "PositionView", "SequenceView", "build_encoder"]
