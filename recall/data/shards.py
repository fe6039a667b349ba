"""`data.shard_by_user`: each worker of a job reads, splits and trains on only its share of the users.

    worker w of N keeps user u  ⇔  siphash(str(u)) mod N == w        (`user_worker`)

The hash is of the id's string form with a fixed key (pandas' `hash_array`, not Python's salted
`hash`), so every worker, every restart and every file format (42 in a Parquet int column, "42" in a
CSV) puts a user on the same worker. A worker reads only its users' rows (data/readers.py
`keep_users`: Parquet a batch at a time), cuts them leave-last-out — per user, so exactly as one
process would (data/split.py `cut_users`) — and then agrees with the others, over the job's
collectives (distributed/collect.py), on what must be global:

- the item vocabulary: every worker's train item counts are summed, and each builds the same
  frequency-sorted vocabulary from the sums (ties by raw id, as `split.build_vocabulary` does) — the
  vocabulary one process builds from the whole log;
- the train time span example ages are measured in (first and last train timestamp of the job);
- the user-feature vocabularies (the union of every worker's users' values).

Everything else (examples, chunks, validation and test queries) is the worker's own users'.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recall.data.split import Split, cut_users, index_split
from recall.errors import RecallError

HASH_KEY = "recall-users-v1!"  # 16 bytes, pandas' siphash key: changing it moves every user


def user_worker(user_ids, num_workers: int) -> np.ndarray:
    """The worker (0 .. num_workers − 1) each user id [U] belongs to: int64 [U], a pure function of the
    id's string form (int 42 and str "42" go to the same worker)."""
    text = np.asarray(user_ids).astype(str).astype(object)
    hashed = pd.util.hash_array(text, encoding="utf8", hash_key=HASH_KEY, categorize=False)
    return (hashed % np.uint64(num_workers)).astype(np.int64)


def keep_users(worker: int, num_workers: int):
    """keep(user_ids [R]) → bool [R]: which rows belong to `worker`'s users (each distinct id hashed once)."""

    def keep(user_ids) -> np.ndarray:
        codes, uniques = pd.factorize(np.asarray(user_ids))
        return user_worker(uniques, num_workers)[codes] == worker if len(codes) else np.zeros(0, bool)

    return keep


def merged_vocabulary(ids, counts) -> tuple[np.ndarray, np.ndarray]:
    """Every worker's (train item id, count) pairs, concatenated ([M] each) → the job's vocabulary:
    (raw ids [N] most frequent first, ties by raw id; their summed counts int64 [N]) — what
    `build_vocabulary` gives for the whole train split."""
    ids = np.asarray(ids)
    if len(ids) == 0:
        return ids, np.zeros(0, np.int64)
    uniq, inverse = np.unique(ids, return_inverse=True)  # ascending raw id
    summed = np.zeros(len(uniq), np.int64)
    np.add.at(summed, inverse.reshape(-1), np.asarray(counts, np.int64))
    order = np.argsort(-summed, kind="stable")
    return uniq[order], summed[order].astype(np.int64)


def sharded_split(df: pd.DataFrame, collective, min_interactions: int = 3) -> Split:
    """This worker's users of `df` (already only theirs) cut leave-last-out, in the job's vocabulary
    and time span. Collective: every worker calls it. Raises RecallError — on every worker alike —
    when no user is left, or when a worker holds none."""
    rows = cut_users(df, min_interactions)
    n = collective.num_workers
    users = collective.per_worker([0 if rows is None else len(rows.user_ids)])[:, 0]
    if users.sum() == 0:
        raise RecallError(
            f"data: no user has at least {min_interactions} interactions, so nothing can be split into "
            "train/validation/test; check data.min_rating and the user/item columns")
    if (users == 0).any():
        empty = int(np.flatnonzero(users == 0)[0])
        raise RecallError(f"data.shard_by_user: worker {empty} of {n} holds none of the {int(users.sum())} users "
                          f"(they are assigned by a hash of the user id); use fewer workers, or set "
                          "data.shard_by_user=false")
    ids, counts = np.unique(rows.train_items, return_counts=True)
    all_ids = collective.gather_ids(ids)
    if all_ids.dtype.kind in "US":
        # Text ids come back as numpy str; the local ones follow (and when another worker's ids are
        # text and ours numbers, one process reading the whole column would have read them as text).
        rows = _as_text(rows)
    item_ids, item_counts = merged_vocabulary(all_ids, collective.gather(counts))
    spans = collective.per_worker([rows.train_times.min(), rows.train_times.max()])
    return index_split(rows, item_ids, item_counts, time_span=(int(spans[:, 0].min()), int(spans[:, 1].max())))


def shared_feature_vocabularies(features, collective):
    """`features` (data/features.py UserFeatures of this worker's users) re-coded in the job's
    vocabularies: each the sorted union of every worker's values, as one process builds it."""
    if not features.names:
        return features
    from recall.data.features import UserFeatures

    vocabs = [np.unique(collective.gather_ids(np.asarray(v, dtype=str))).astype(str) for v in features.vocabs]
    shared = UserFeatures(names=features.names, vocabs=vocabs, codes=features.codes, prefixes=features.prefixes,
                          raw=features.raw)
    codes = shared.encode({name: features.raw[:, i] for i, name in enumerate(features.names)})
    return UserFeatures(names=features.names, vocabs=vocabs, codes=codes, prefixes=features.prefixes,
                        raw=features.raw)


def _as_text(rows):
    from dataclasses import replace

    return replace(rows, train_items=rows.train_items.astype(str), valid_items=rows.valid_items.astype(str),
                   test_items=rows.test_items.astype(str))
