"""YouTube-DNN training examples and evaluation queries (Covington et al. 2016), vectorised.

For every position t of a user's train sequence: label = item t, history = the items strictly
before t (the most recent `max_history`). Examples are stored compactly as (label position,
history length) into the flat train sequence; `history_matrix` expands a batch of them into a
right-aligned, -1-padded `[batch, max_history]` matrix. So 10M interactions cost ~100 MB, not
10M × max_history ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recall.data.split import Split

PAD = -1  # history padding; the user tower masks ids < 0


@dataclass(frozen=True)
class Examples:
    """E training examples over the flat train sequence `Split.train_items` [T].

    label_pos  int64 [E]    row of the label in train_items; history = train_items[label_pos - hist_len : label_pos]
    hist_len   int32 [E]    min(position within the user's sequence, max_history)
    user       int32 [E]    user row (index into Split.user_ids)
    age        float32 [E]  example age in [0, 1]: 1 = oldest train event, 0 = newest (served as 0)
    weight     float32 [E]  the label interaction's sample weight (data.columns.weight), or None (all 1)
    """

    label_pos: np.ndarray
    hist_len: np.ndarray
    user: np.ndarray
    age: np.ndarray
    weight: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label_pos)


def make_examples(
    split: Split, max_history: int, min_history: int = 1, max_per_user: int | None = None
) -> Examples:
    """All (history → next item) examples of the train sequences; no history ever sees its label or later."""
    lengths = split.train_lengths
    num_rows = int(split.train_indptr[-1])
    user = np.repeat(np.arange(split.num_users, dtype=np.int32), lengths)
    position = np.arange(num_rows, dtype=np.int64) - np.repeat(split.train_indptr[:-1], lengths)
    keep = position >= min_history
    if max_per_user is not None:
        # Keep each user's latest `max_per_user` examples so heavy users don't dominate (YouTube paper).
        from_end = np.repeat(split.train_indptr[1:], lengths) - 1 - np.arange(num_rows)
        keep &= from_end < max_per_user
    rows = np.flatnonzero(keep)
    return Examples(
        label_pos=rows.astype(np.int64),
        hist_len=np.minimum(position[rows], max_history).astype(np.int32),
        user=user[rows],
        age=example_age(split.train_times[rows], split.train_span),
        weight=None if split.train_weights is None else split.train_weights[rows],
    )


def example_age(times: np.ndarray, span) -> np.ndarray:
    """Covington et al.'s example age: (newest train time − t) / train time span, clipped to [0, 1].

    times int64 [R] → float32 [R]; 0 = the end of the training window (what serving uses: "now").
    `span`: (first, last) train timestamp (`Split.train_span`; None = no train rows: all 0), or the
    train timestamps themselves (int64 [T]).
    """
    if span is not None and not isinstance(span, tuple):
        span = (int(np.min(span)), int(np.max(span))) if len(span) else None
    if span is None:
        return np.zeros(len(times), np.float32)
    t_min, t_max = span
    width = max(t_max - t_min, 1)
    return np.clip((t_max - np.asarray(times, np.int64)) / width, 0.0, 1.0).astype(np.float32)


def history_matrix(seq: np.ndarray, end: np.ndarray, length: np.ndarray, max_history: int) -> np.ndarray:
    """Right-aligned histories: row r = seq[end[r] - length[r] : end[r]], left-padded with PAD.

    seq [T], end [R], length [R] (≤ max_history) → int32 [R, max_history]. The last column is the
    most recent item.
    """
    cols = np.arange(max_history, dtype=np.int64)
    idx = end[:, None] - max_history + cols[None, :]
    valid = cols[None, :] >= (max_history - length[:, None])
    out = np.where(valid, seq[np.clip(idx, 0, max(len(seq) - 1, 0))] if len(seq) else PAD, PAD)
    return out.astype(np.int32)


@dataclass(frozen=True)
class Queries:
    """Evaluation queries, one per user. Q = number of users.

    history  int32 [Q, max_history]  the most recent items before the target (right-aligned, PAD left)
    targets  int32 [Q]               internal id of the held-out item (-1 = not in vocabulary: a miss)
    seen     (indptr [Q+1], ids)     every item of the query's whole history, for filtered ranking
    age      float32 [Q]             example age of the query's last event (its "now" when replayed)
    """

    history: np.ndarray
    targets: np.ndarray
    seen: tuple[np.ndarray, np.ndarray]
    age: np.ndarray


def make_queries(split: Split, which: str, max_history: int) -> Queries:
    """Validation queries (history = train) or test queries (history = train + validation item)."""
    if which == "valid":
        seq, indptr, targets = split.train_items, split.train_indptr, split.valid_items
        last_time = split.train_times[split.train_indptr[1:] - 1]
    elif which == "test":
        # Append each user's validation item after their train rows (skipped when out of vocabulary:
        # it has no embedding, exactly as serving ignores unknown ids).
        extra = (split.valid_items >= 0).astype(np.int64)
        lengths = split.train_lengths + extra
        indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        seq = np.empty(int(indptr[-1]), dtype=np.int32)
        is_valid_slot = np.zeros(len(seq), dtype=bool)
        is_valid_slot[(indptr[1:] - 1)[extra == 1]] = True
        seq[is_valid_slot] = split.valid_items[extra == 1]
        seq[~is_valid_slot] = split.train_items
        targets = split.test_items
        last_time = split.valid_times
    else:
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
    lengths = np.diff(indptr)
    history = history_matrix(seq, indptr[1:], np.minimum(lengths, max_history), max_history)
    return Queries(history=history, targets=targets.astype(np.int32), seen=(indptr, seq.astype(np.int64)),
                   age=example_age(last_time, split.train_span))
