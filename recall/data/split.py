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
    time_span      (first, last) train timestamp of the whole log, the span example ages are measured
                   in; None = those of train_times (a worker of a sharded job holds only its users'
                   rows, and gets the job's span from the other workers: data/shards.py)
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
    time_span: tuple[int, int] | None = None

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def train_lengths(self) -> np.ndarray:
        return np.diff(self.train_indptr)

    @property
    def train_span(self) -> tuple[int, int] | None:
        """(first, last) train timestamp that example ages are measured in; None without train rows."""
        if self.time_span is not None:
            return self.time_span
        return (int(self.train_times.min()), int(self.train_times.max())) if len(self.train_times) else None


@dataclass(frozen=True)
class UserRows:
    """The leave-last-out cut of a log in raw ids, before the vocabulary maps them (U users, T train rows).

    user_ids [U], train_items [T] raw, train_times int64 [T], train_indptr int64 [U+1],
    valid_items / test_items [U] raw, valid_times int64 [U], train_weights float32 [T] or None.
    """

    user_ids: np.ndarray
    train_items: np.ndarray
    train_times: np.ndarray
    train_indptr: np.ndarray
    valid_items: np.ndarray
    valid_times: np.ndarray
    test_items: np.ndarray
    train_weights: np.ndarray | None = None


def build_vocabulary(train_item_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw ids of the train items sorted by frequency (descending), ties by raw id; and their counts."""
    ids, counts = np.unique(train_item_raw, return_counts=True)  # ids ascending
    order = np.argsort(-counts, kind="stable")  # stable keeps ascending raw id among ties
    return ids[order], counts[order].astype(np.int64)


def leave_last_out(df: pd.DataFrame, min_interactions: int = 3) -> Split:
    """Split an interaction frame (user_id, item_id, timestamp) per DESIGN.md. Vectorised.

    Raises RecallError when no user has `min_interactions` interactions.
    """
    rows = cut_users(df, min_interactions)
    if rows is None:
        raise RecallError(
            f"data: no user has at least {min_interactions} interactions, so nothing can be split into "
            "train/validation/test; check data.min_rating and the user/item columns"
        )
    return index_split(rows, *build_vocabulary(rows.train_items))


def cut_users(df: pd.DataFrame, min_interactions: int = 3) -> UserRows | None:
    """Per user (sorted by user id), ordered by (timestamp, item id): the last interaction → test, the
    second-to-last → validation, the rest → train. Users with fewer than `min_interactions` are
    dropped; None when none is left. Each user's cut depends on their own rows only."""
    df = df[["user_id", "item_id", "timestamp", *(["weight"] if "weight" in df else [])]].sort_values(
        ["user_id", "timestamp", "item_id"], kind="stable"
    )
    counts = df.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    df = df[counts >= min_interactions]
    if df.empty:
        return None
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
    train_lengths = (ends - starts - 2).astype(np.int64)
    return UserRows(
        user_ids=users[starts],
        train_items=items[is_train],
        train_times=times[is_train],
        train_indptr=np.r_[0, np.cumsum(train_lengths)].astype(np.int64),
        valid_items=items[valid_rows],
        valid_times=times[valid_rows],
        test_items=items[test_rows],
        train_weights=df["weight"].to_numpy(np.float32)[is_train] if "weight" in df else None,
    )


def index_split(rows: UserRows, item_ids: np.ndarray, item_counts: np.ndarray,
                time_span: tuple[int, int] | None = None) -> Split:
    """`rows` in internal ids of the vocabulary `item_ids` [N] (frequency-sorted, `build_vocabulary`);
    a validation or test item outside it becomes -1 (a miss)."""
    to_internal = _lookup(item_ids)
    return Split(
        train_items=to_internal(rows.train_items).astype(np.int32),
        train_times=rows.train_times,
        train_indptr=rows.train_indptr,
        valid_items=to_internal(rows.valid_items).astype(np.int32),
        valid_times=rows.valid_times,
        test_items=to_internal(rows.test_items).astype(np.int32),
        user_ids=rows.user_ids,
        item_ids=item_ids,
        item_counts=item_counts,
        train_weights=rows.train_weights,
        time_span=time_span,
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
