"""Ranking metrics for one held-out item per query: ranks by item id, then HR@K, NDCG@K, MRR@K.

A rank is 0-based (0 = top). A miss is any rank at or beyond the search depth; with a single
relevant item the ideal DCG is 1, so NDCG@K = 1/log2(rank + 2) for a hit and HR@K = Recall@K.

Beside them: catalogue coverage@K (which items any query's top-K reaches) and the head / torso /
tail popularity buckets that HR@K is broken down by.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

# Rank given to targets that can never be found (out of vocabulary, or removed by the filter).
# Large enough to miss every K, small enough that rank + 2 does not overflow int64.
MISS_RANK = np.iinfo(np.int64).max // 2


def target_ranks(topk_ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each target in its row of `topk_ids`.

    Args:
      topk_ids: `[Q, K]` item ids, best first (-1 for empty slots).
      targets: `[Q]` held-out item id per query; < 0 means out of vocabulary.
    Returns:
      int64 `[Q]`: the rank, or K when the target is not in the row (always for targets < 0).
    """
    topk_ids = np.asarray(topk_ids, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if topk_ids.ndim != 2 or topk_ids.shape[0] != targets.shape[0]:
        raise ValueError(
            f"topk_ids must be [Q, K] with Q = len(targets) = {targets.shape[0]}, "
            f"got shape {topk_ids.shape}"
        )
    depth = topk_ids.shape[1]
    # The targets >= 0 guard stops an OOV target (-1) from "matching" a -1 padding slot.
    hits = (topk_ids == targets[:, None]) & (targets[:, None] >= 0)
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1), depth).astype(np.int64)


def rank_counts(ranks: np.ndarray, depth: int) -> np.ndarray:
    """How many queries ranked their target at each position: int64 `[depth + 1]`, entry r < depth
    counts rank r, the last entry the misses (any rank ≥ depth: out of the list, MISS_RANK).

    Counts of disjoint query sets add up, so every metric below is a function of the summed
    counts: several workers' users give exactly the metrics of one process over all of them.
    """
    ranks = np.asarray(ranks, dtype=np.int64).reshape(-1)
    return np.bincount(np.minimum(ranks, depth), minlength=depth + 1).astype(np.int64)


def metrics_from_counts(counts: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """HR@K, Recall@K, NDCG@K and MRR@K for every K in `ks` (each ≤ depth), plus "count", from
    `rank_counts(ranks, depth)` int64 [depth + 1]. With no queries every metric is 0.0."""
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    depth = counts.shape[0] - 1
    if ks and max(ks) > depth:
        raise ValueError(f"K={max(ks)} is deeper than the rank counts ({depth} positions)")
    total = int(counts.sum())
    positions = np.arange(depth, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hits = counts[:k]
        if total == 0:
            hr = ndcg = mrr = 0.0
        else:
            hr = float(hits.sum() / total)
            ndcg = float((hits * (1.0 / np.log2(positions[:k] + 2.0))).sum() / total)
            mrr = float((hits * (1.0 / (positions[:k] + 1.0))).sum() / total)
        out[f"hr@{k}"] = hr
        out[f"recall@{k}"] = hr  # one relevant item per query: recall = hit rate
        out[f"ndcg@{k}"] = ndcg
        out[f"mrr@{k}"] = mrr
    out["count"] = total
    return out


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """HR@K, Recall@K, NDCG@K and MRR@K for every K in `ks`, averaged over queries, plus "count".

    Every query has exactly one held-out item, so Recall@K (relevant items found / relevant items)
    equals HR@K (was it found); both keys are written because both names are quoted.
    `ranks` `[Q]` come from `target_ranks` (miss = search depth) or `popularity_ranks`
    (miss = MISS_RANK); either way a miss fails `rank < K` for every K up to the search depth,
    so callers must search at least max(ks) deep. With no queries every metric is 0.0.
    Computed from `rank_counts`, as the sharded evaluation is (exactly the same numbers).
    """
    depth = int(max(ks)) if len(ks) else 0
    return metrics_from_counts(rank_counts(ranks, depth), ks)


def coverage(topk_ids: np.ndarray, num_items: int, ks: Sequence[int]) -> dict[str, float]:
    """Catalogue coverage@K: the fraction of the `num_items` items in at least one query's top-K.

    Args:
      topk_ids: `[Q, depth]` item ids, best first (-1 for empty slots, ignored); depth >= max(ks).
    Returns:
      `{"coverage@K": float}` for every K; 0.0 for an empty catalogue or no queries.
    """
    topk_ids = np.asarray(topk_ids, dtype=np.int64)
    if topk_ids.ndim != 2 or topk_ids.shape[1] < max(ks):
        raise ValueError(f"topk_ids must be [Q, >= {max(ks)}], got shape {topk_ids.shape}")
    return coverage_from_first(first_positions(topk_ids, num_items), ks)


def first_positions(topk_ids: np.ndarray, num_items: int) -> np.ndarray:
    """The best position at which each item appears in any row of `topk_ids` `[Q, depth]`:
    int64 `[num_items]`, `depth` for an item no row returns. Over several query sets the element-wise
    minimum combines them (coverage of the union)."""
    topk_ids = np.asarray(topk_ids, dtype=np.int64)
    depth = topk_ids.shape[1] if topk_ids.ndim == 2 else 0
    first = np.full(num_items, depth, np.int64)
    for col in range(depth - 1, -1, -1):  # deepest first: the best position is written last
        ids = topk_ids[:, col]
        first[ids[(ids >= 0) & (ids < num_items)]] = col
    return first


def coverage_from_first(first: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """`{"coverage@K"}` from `first_positions` [N]: the share of items first returned above K."""
    first = np.asarray(first, dtype=np.int64)
    n = first.shape[0]
    return {f"coverage@{k}": float(np.count_nonzero(first < k) / n) if n > 0 else 0.0 for k in ks}


# Query buckets by the training popularity of the target; "oov" = target outside the vocabulary.
BUCKETS = ("head", "torso", "tail", "oov")


def popularity_boundaries(
    item_counts: np.ndarray, head: float = 0.5, torso: float = 0.8
) -> tuple[int, int]:
    """Split frequency-sorted item ids into head `[0, h)`, torso `[h, t)` and tail `[t, N)`.

    Item i is head when items 0..i together hold at most `head` (50%) of the training
    interactions, torso when at most `torso` (80%), tail otherwise. So head is the few most
    popular items covering the first half of the training interactions, tail the many items
    sharing the last 20%. Items of equal count keep their id order (ties by raw id), so a tie
    can straddle a boundary.

    Args:
      item_counts: `[N]` training frequency per internal id, non-increasing (id 0 = most popular).
    Returns:
      `(h, t)` with 0 <= h <= t <= N.
    """
    counts = np.asarray(item_counts, dtype=np.int64).reshape(-1)
    if np.any(np.diff(counts) > 0):
        raise ValueError("item_counts must be non-increasing (internal ids sorted by training frequency)")
    if not 0.0 <= head <= torso <= 1.0:
        raise ValueError(f"need 0 <= head <= torso <= 1, got head={head}, torso={torso}")
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1]) if counts.size else 0
    if total == 0:
        return 0, 0
    return _items_within(cumulative, total, head), _items_within(cumulative, total, torso)


def _items_within(cumulative: np.ndarray, total: int, share: float) -> int:
    """How many leading items have cumulative count <= share * total, in integers.

    0.29 * 100 is 28.999999999999996 in floating point; as the fraction 29/100 it is exact.
    """
    frac = Fraction(str(share)).limit_denominator(10**6)
    return int(np.count_nonzero(cumulative * frac.denominator <= frac.numerator * total))


def popularity_buckets(targets: np.ndarray, boundaries: tuple[int, int]) -> np.ndarray:
    """Bucket index into BUCKETS (0 head, 1 torso, 2 tail, 3 oov) of each target `[Q]` → int64 `[Q]`."""
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    h, t = boundaries
    bucket = np.where(targets < h, 0, np.where(targets < t, 1, 2)).astype(np.int64)
    bucket[targets < 0] = 3
    return bucket


def metrics_by_popularity(
    ranks: np.ndarray, targets: np.ndarray, item_counts: np.ndarray, ks: Sequence[int]
) -> dict[str, dict[str, float]]:
    """`ranking_metrics` per popularity bucket of the target, plus each bucket's catalogue size.

    Returns `{"head": {"hr@K": ..., "count": queries, "items": catalogue items}, "torso": ...,
    "tail": ..., "oov": ...}` ("oov" queries always miss; its "items" is 0). Buckets are
    defined by `popularity_boundaries(item_counts)`; counts sum to Q.
    """
    depth = int(max(ks)) if len(ks) else 0
    return metrics_by_popularity_counts(bucket_rank_counts(ranks, targets, item_counts, depth), item_counts, ks)


def bucket_rank_counts(ranks: np.ndarray, targets: np.ndarray, item_counts: np.ndarray, depth: int) -> np.ndarray:
    """`rank_counts` of the queries of each popularity bucket (BUCKETS order): int64 `[4, depth + 1]`."""
    ranks = np.asarray(ranks, dtype=np.int64).reshape(-1)
    bucket = popularity_buckets(targets, popularity_boundaries(item_counts))
    if bucket.shape != ranks.shape:
        raise ValueError(f"ranks {ranks.shape} and targets {bucket.shape} must have the same length")
    return np.stack([rank_counts(ranks[bucket == b], depth) for b in range(len(BUCKETS))])


def metrics_by_popularity_counts(counts: np.ndarray, item_counts: np.ndarray,
                                 ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """`metrics_by_popularity` from `bucket_rank_counts` int64 [4, depth + 1]."""
    h, t = popularity_boundaries(item_counts)
    sizes = {"head": h, "torso": t - h, "tail": len(item_counts) - t, "oov": 0}
    return {name: {**metrics_from_counts(counts[b], ks), "items": sizes[name]} for b, name in enumerate(BUCKETS)}


def popularity_ranks(
    targets: np.ndarray, exclude: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Ranks under the most-popular baseline, whose ranking is simply item id order.

    Internal ids are sorted by training frequency (id 0 = most popular), so the unfiltered rank
    of target t is t, and with row q's excluded ids removed it is t minus the number of distinct
    excluded ids below t.

    Args:
      targets: `[Q]` item ids; < 0 means out of vocabulary (a miss).
      exclude: CSR pair `(indptr [Q+1], indices [nnz])` of each query's removed items, or None.
    Returns:
      int64 `[Q]`; MISS_RANK for targets < 0 and for targets that are themselves excluded.
    """
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    num_queries = targets.shape[0]
    ranks = targets.copy()
    missed = targets < 0
    if exclude is not None:
        indptr = np.asarray(exclude[0], dtype=np.int64)
        indices = np.asarray(exclude[1], dtype=np.int64)
        if indptr.shape != (num_queries + 1,):
            raise ValueError(f"exclude indptr must be [{num_queries + 1}], got {indptr.shape}")
        rows = np.repeat(np.arange(num_queries, dtype=np.int64), np.diff(indptr))
        items = indices[indptr[0] : indptr[-1]]
        rows, items = _unique_pairs(rows, items)
        # bincount with minlength handles queries with nothing excluded (empty CSR rows).
        below = items < targets[rows]
        ranks -= np.bincount(rows[below], minlength=num_queries)
        missed |= np.bincount(rows[items == targets[rows]], minlength=num_queries) > 0
    ranks[missed] = MISS_RANK
    return ranks


def _unique_pairs(rows: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated (row, item) pairs and negative items; an item seen twice is removed once."""
    keep = items >= 0
    rows, items = rows[keep], items[keep]
    order = np.lexsort((items, rows))
    rows, items = rows[order], items[order]
    first = np.ones(rows.shape[0], dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (items[1:] != items[:-1])
    return rows[first], items[first]
