"""The leave-last-out split and the frequency-sorted item vocabulary (DESIGN.md "Evaluation protocol").

Per user, interactions are ordered by (timestamp, item id). Users with fewer than 3 are dropped.
The last interaction is the test item, the second-to-last the validation item, the rest train.
The vocabulary is the set of train items, internal id 0 = most frequent in train: the log-uniform
sampler's Q(id) = log((id+2)/(id+1)) / log(N+1) is only a popularity model under that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recall.errors import RecallError


@dataclass(frozen=True)
class Split:
    """Everything downstream needs, in internal ids. U = kept users, N = items, T = train rows.

    train_items    int32 [T]    train sequences of all users, concatenated, chronological per user
    train_times    int64 [T]    their timestamps
    train_indptr   int64 [U+1]  user u's train rows are train_items[train_indptr[u]:train_indptr[u+1]]
    valid_items    int32 [U]    internal id of the validation item, -1 if not in the vocabulary
    valid_times    int64 [U]    its timestamp (the time of a test query's last event)
    test_items     int32 [U]    internal id of the test item, -1 if not in the vocabulary
    user_ids       [U]          raw user ids, row u ↔ user_ids[u]
    item_ids       [N]          raw item ids, internal id i ↔ item_ids[i]
    item_counts    int64 [N]    train frequency of each internal id (non-increasing)
    train_weights  float32 [T]  per-interaction sample weights (data.columns.weight), or None
    """

    train_items: np.ndarray
    train_times: np.ndarray
    train_indptr: np.ndarray
    valid_items: np.ndarray
    valid_times: np.ndarray
    test_items: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_counts: np.ndarray
    train_weights: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def train_lengths(self) -> np.ndarray:
        return np.diff(self.train_indptr)


def build_vocabulary(train_item_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw ids of the train items sorted by frequency (descending), ties by raw id; and their counts."""
    ids, counts = np.unique(train_item_raw, return_counts=True)  # ids ascending
    order = np.argsort(-counts, kind="stable")  # stable keeps ascending raw id among ties
    return ids[order], counts[order].astype(np.int64)


def leave_last_out(df: pd.DataFrame, min_interactions: int = 3) -> Split:
    """Split an interaction frame (user_id, item_id, timestamp) per DESIGN.md. Vectorised.

    Raises RecallError when no user has `min_interactions` interactions.
    """
    df = df[["user_id", "item_id", "timestamp", *(["weight"] if "weight" in df else [])]].sort_values(
        ["user_id", "timestamp", "item_id"], kind="stable"
    )
    counts = df.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    df = df[counts >= min_interactions]
    if df.empty:
        raise RecallError(
            f"data: no user has at least {min_interactions} interactions, so nothing can be split into "
            "train/validation/test; check data.min_rating and the user/item columns"
        )
    users = df["user_id"].to_numpy()
    items = df["item_id"].to_numpy()
    times = df["timestamp"].to_numpy(np.int64)
    # Start of each user's block in the sorted frame, and its length.
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    test_rows = ends - 1
    valid_rows = ends - 2
    is_train = np.ones(len(users), dtype=bool)
    is_train[test_rows] = False
    is_train[valid_rows] = False

    vocab_raw, vocab_counts = build_vocabulary(items[is_train])
    to_internal = _lookup(vocab_raw)

    train_lengths = (ends - starts - 2).astype(np.int64)
    return Split(
        train_items=to_internal(items[is_train]).astype(np.int32),
        train_times=times[is_train],
        train_indptr=np.r_[0, np.cumsum(train_lengths)].astype(np.int64),
        valid_items=to_internal(items[valid_rows]).astype(np.int32),
        valid_times=times[valid_rows],
        test_items=to_internal(items[test_rows]).astype(np.int32),
        user_ids=users[starts],
        item_ids=vocab_raw,
        item_counts=vocab_counts,
        train_weights=df["weight"].to_numpy(np.float32)[is_train] if "weight" in df else None,
    )


def _lookup(vocab_raw: np.ndarray):
    """Vectorised raw → internal id map; unknown raw ids map to -1."""
    order = np.argsort(vocab_raw, kind="stable")
    sorted_raw = vocab_raw[order]

    def to_internal(raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw)
        if len(sorted_raw) == 0 or len(raw) == 0:
            return np.full(len(raw), -1, dtype=np.int64)
        pos = np.searchsorted(sorted_raw, raw).clip(0, len(sorted_raw) - 1)
        found = sorted_raw[pos] == raw
        return np.where(found, order[pos], -1).astype(np.int64)

    return to_internal


def raw_to_internal(item_ids: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Map raw item ids to internal ids (-1 when unknown) given the vocabulary `item_ids` [N]."""
    return _lookup(np.asarray(item_ids))(np.asarray(raw))
