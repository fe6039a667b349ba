"""Sequence batching: the examples of each user cut into chunks of consecutive labelled positions.

`train.batching: sequences` trains on exactly the examples of data/examples.py (same `min_history`,
`max_examples_per_user`), grouped: a chunk is up to L consecutive examples of one user, and the user
tower encodes the chunk once, causally (recall/model/encoders/base.py), instead of once per example.
Each example belongs to exactly one chunk, so an epoch over the chunks trains on every example once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recall.data.examples import Examples


@dataclass(frozen=True)
class Chunks:
    """K chunks over the examples `Examples` [E].

    first  int64 [K]  index of the chunk's first example; its examples are first .. first + count − 1
    count  int32 [K]  examples in the chunk (1 ≤ count ≤ L): consecutive positions of one user
    """

    first: np.ndarray
    count: np.ndarray

    def __len__(self) -> int:
        return len(self.first)


def make_chunks(examples: Examples, length: int) -> Chunks:
    """Cut each user's run of examples into chunks of `length` (the last one shorter).

    Examples are in train-row order and a user's examples are consecutive positions (every position
    from `min_history` on, or the latest `max_examples_per_user`), which this checks.
    """
    n = len(examples)
    if n == 0:
        return Chunks(np.zeros(0, np.int64), np.zeros(0, np.int32))
    user = examples.user
    new_user = np.r_[True, user[1:] != user[:-1]]
    if np.any(~new_user & (np.diff(examples.label_pos, prepend=-1) != 1)):
        raise ValueError("a user's examples must be consecutive train rows")
    run_start = np.flatnonzero(new_user)
    run_index = np.cumsum(new_user) - 1  # which user run each example is in
    offset = np.arange(n) - run_start[run_index]  # position of the example within its run
    first = np.flatnonzero(offset % length == 0).astype(np.int64)
    count = np.diff(np.r_[first, n]).astype(np.int64)
    # A chunk ends at its user's last example too.
    run_end = np.r_[run_start[1:], n][run_index[first]]
    return Chunks(first=first, count=np.minimum(count, run_end - first).astype(np.int32))
