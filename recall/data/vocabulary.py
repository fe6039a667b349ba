"""A run's vocabularies on disk: what row of each table holds which raw id or feature value.

Two files, the same in a run directory (`RUN_DIR/vocabulary/`, written when training starts) and in
an export bundle (`export/`):

    item_ids.npy        [N] raw item id of each row of the item table (int64, or unicode strings;
                        no pickle), row 0 = most frequent in the run's train split
    user_features.json  {"features": [{"name", "prefix", "vocabulary": [str, ...]}]}: code c ≥ 1 of
                        feature f ↔ vocabulary[c - 1] (code 0 = unknown); absent without user features

A warm start (recall/warm_start.py) reads the parent's to map its rows to the new run's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recall.errors import RecallError
from recall.io import write_json, write_npy

ITEMS_FILE = "item_ids.npy"
FEATURES_FILE = "user_features.json"


@dataclass(frozen=True)
class Vocabulary:
    """item_ids [N] raw ids by row; features: (name, prefix or None, values [V] str) per user feature."""

    item_ids: np.ndarray
    features: list[tuple[str, int | None, np.ndarray]]

    @property
    def string_ids(self) -> bool:
        return self.item_ids.dtype.kind in "USO"


def storable_ids(item_ids: np.ndarray) -> np.ndarray:
    """Raw item ids as saved: object arrays (pandas strings) become fixed-width unicode (np.save
    would pickle them)."""
    return item_ids.astype(str) if item_ids.dtype == object else item_ids


def write_vocabulary(folder: str | Path, item_ids: np.ndarray, features) -> None:
    """Write `item_ids` [N] and the vocabularies of `features` (a UserFeatures) into `folder`."""
    folder = Path(folder)
    write_npy(folder / ITEMS_FILE, storable_ids(np.asarray(item_ids)))
    if features.names:
        write_json(folder / FEATURES_FILE, {"features": [
            {"name": name, "prefix": features.prefix(i), "vocabulary": [str(v) for v in vocab]}
            for i, (name, vocab) in enumerate(zip(features.names, features.vocabs, strict=True))]})


def read_vocabulary(folder: str | Path) -> Vocabulary | None:
    """The vocabulary saved in `folder`, or None when it has no item_ids.npy."""
    folder = Path(folder)
    if not (folder / ITEMS_FILE).is_file():
        return None
    try:
        item_ids = np.load(folder / ITEMS_FILE, allow_pickle=False)
        raw = json.loads((folder / FEATURES_FILE).read_text()) if (folder / FEATURES_FILE).is_file() else {}
        features = [(f["name"], f.get("prefix"), np.asarray(f["vocabulary"], dtype=str).reshape(-1))
                    for f in raw.get("features", [])]
    except (OSError, ValueError, KeyError, TypeError) as err:  # json.JSONDecodeError is a ValueError
        raise RecallError(f"{folder}: its vocabulary files are unreadable ({type(err).__name__}: {err}); "
                          "the run directory is damaged — retrain it, or start cold") from None
    return Vocabulary(item_ids, features)
