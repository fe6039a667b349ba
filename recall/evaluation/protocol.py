"""The evaluation protocol: full-catalogue ranking by item id, `filtered` and `unfiltered`.

`filtered` removes each query's history (its seen items) before ranking and is the primary
number; `unfiltered` ranks the whole catalogue. Every query counts in the denominator, including
those whose target is outside the vocabulary (target < 0), which are misses.

Each variant also reports catalogue coverage@K; with the training item counts, the filtered
metrics are broken down by the target's popularity bucket (see `metrics.popularity_boundaries`).

Every number is a function of `EvalCounts` — how many queries ranked their target at each position,
and the best position each item was returned at — which add up over disjoint sets of queries: the
workers of a job sharded by user each count their own users and sum the counts
(distributed/collect.py), and the metrics are exactly those of one process over all users.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from recall.evaluation.metrics import (
    bucket_rank_counts,
    coverage_from_first,
    first_positions,
    metrics_by_popularity_counts,
    metrics_from_counts,
    popularity_ranks,
    rank_counts,
    target_ranks,
)
from recall.index import search

VARIANTS = ("filtered", "unfiltered")


@dataclass(frozen=True)
class EvalCounts:
    """What a set of queries contributes to the metrics, in integers that add up over disjoint sets.

    ranks    {variant: int64 [depth + 1]}  `metrics.rank_counts` of the queries' target ranks
    buckets  int64 [4, depth + 1] or None  the filtered ones per popularity bucket (with item counts)
    first    {variant: int64 [N]} or None  `metrics.first_positions`: best position each item was
             returned at (depth = never), for coverage; None for the popularity baseline
    """

    ranks: dict[str, np.ndarray]
    buckets: np.ndarray | None = None
    first: dict[str, np.ndarray] | None = None

    def sums(self) -> np.ndarray:
        """The parts that add up (rank counts, bucket counts) as one int64 vector."""
        parts = [self.ranks[v] for v in VARIANTS] + ([self.buckets.reshape(-1)] if self.buckets is not None else [])
        return np.concatenate(parts).astype(np.int64)

    def reached(self) -> np.ndarray:
        """The items returned (variant, item, best position), each coded as one int64: the part that
        combines by minimum, sent as the list of items reached (most of a large catalogue is not)."""
        if self.first is None:
            return np.zeros(0, np.int64)
        depth = len(self.ranks[VARIANTS[0]]) - 1
        n = len(self.first[VARIANTS[0]])
        out = []
        for v, variant in enumerate(VARIANTS):
            items = np.flatnonzero(self.first[variant] < depth)
            out.append((v * n + items) * (depth + 1) + self.first[variant][items])
        return np.concatenate(out).astype(np.int64)

    def combined(self, sums: np.ndarray, reached: np.ndarray) -> EvalCounts:
        """The counts of the union of query sets, given their `sums()` summed and their `reached()`
        concatenated (in any order: minimum and sum do not care)."""
        depth = len(self.ranks[VARIANTS[0]]) - 1
        ranks = {v: sums[i * (depth + 1):(i + 1) * (depth + 1)] for i, v in enumerate(VARIANTS)}
        buckets = None if self.buckets is None else sums[2 * (depth + 1):].reshape(self.buckets.shape)
        first = None
        if self.first is not None:
            n = len(self.first[VARIANTS[0]])
            code, position = np.divmod(np.asarray(reached, np.int64), depth + 1)
            variant, item = np.divmod(code, n)
            first = {}
            for v, name in enumerate(VARIANTS):
                first[name] = np.full(n, depth, np.int64)
                np.minimum.at(first[name], item[variant == v], position[variant == v])
        return EvalCounts(ranks, buckets, first)


def merge_counts(parts: Sequence[EvalCounts]) -> EvalCounts:
    """The counts of several disjoint query sets together (what the workers' collectives compute)."""
    return parts[0].combined(np.sum([p.sums() for p in parts], axis=0), np.concatenate([p.reached() for p in parts]))


def query_counts(
    index: faiss.Index,
    queries: np.ndarray,
    targets: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    ks: Sequence[int],
    batch_size: int = 4096,
    item_counts: np.ndarray | None = None,
) -> EvalCounts:
    """The `EvalCounts` of a model's queries against its item index (arguments as `evaluate_queries`)."""
    depth = _depth(ks)
    ranks, first, buckets = {}, {}, None
    for variant, exclude in (("filtered", seen), ("unfiltered", None)):
        ids, _ = search(index, queries, depth, exclude=exclude, batch_size=batch_size)
        # A miss gets rank == depth, which fails `rank < K` for every K <= depth.
        r = target_ranks(ids, targets)
        ranks[variant], first[variant] = rank_counts(r, depth), first_positions(ids, int(index.ntotal))
        if variant == "filtered" and item_counts is not None:
            buckets = bucket_rank_counts(r, targets, item_counts, depth)
    return EvalCounts(ranks, buckets, first)


def popularity_counts(
    targets: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    ks: Sequence[int],
    item_counts: np.ndarray | None = None,
) -> EvalCounts:
    """The `EvalCounts` of the most-popular baseline (arguments as `evaluate_popularity`)."""
    depth = _depth(ks)
    filtered = popularity_ranks(targets, seen)
    ranks = {"filtered": rank_counts(filtered, depth), "unfiltered": rank_counts(popularity_ranks(targets, None), depth)}
    buckets = None if item_counts is None else bucket_rank_counts(filtered, targets, item_counts, depth)
    return EvalCounts(ranks, buckets)


def counts_metrics(counts: EvalCounts, ks: Sequence[int], item_counts: np.ndarray | None = None) -> dict[str, dict]:
    """`{"filtered": {...}, "unfiltered": {...}}` (+ "by_popularity" when counted) from `EvalCounts`:
    each variant's `metrics_from_counts` plus, when the counts have item positions, coverage@K."""
    results: dict[str, dict] = {}
    for variant in VARIANTS:
        cover = coverage_from_first(counts.first[variant], ks) if counts.first is not None else {}
        results[variant] = {**metrics_from_counts(counts.ranks[variant], ks), **cover}
    if counts.buckets is not None and item_counts is not None:
        results["by_popularity"] = metrics_by_popularity_counts(counts.buckets, item_counts, ks)
    return results


def evaluate_queries(
    index: faiss.Index,
    queries: np.ndarray,
    targets: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    ks: Sequence[int],
    batch_size: int = 4096,
    item_counts: np.ndarray | None = None,
) -> dict[str, dict]:
    """Metrics of a model's queries against its item index.

    Args:
      index: faiss index whose row ids are internal item ids.
      queries: `[Q, d]` query vectors, already folded to the index dimension.
      targets: `[Q]` held-out internal item id per query; < 0 = out of vocabulary.
      seen: CSR pair `(indptr [Q+1], indices [nnz])` of each query's history items.
      ks: cut-offs, e.g. [10, 20, 50, 100, 200]; the search goes max(ks) deep.
      item_counts: `[N]` training frequency per internal id (non-increasing); when given, the
        filtered metrics are also broken down by the target's popularity bucket.
    Returns:
      `{"filtered": {...}, "unfiltered": {...}}`, each `ranking_metrics(...)` plus
      `coverage@K` over the `index.ntotal` catalogue items; with `item_counts` also
      `"by_popularity": metrics_by_popularity(filtered ranks, ...)` (head / torso / tail / oov).
    """
    counts = query_counts(index, queries, targets, seen, ks, batch_size, item_counts)
    return counts_metrics(counts, ks, item_counts)


def evaluate_popularity(
    targets: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    ks: Sequence[int],
    item_counts: np.ndarray | None = None,
) -> dict[str, dict]:
    """Most-popular baseline (item id order = popularity order), shaped like evaluate_queries.

    No coverage (its top-K is the same few popular items for everyone); `by_popularity` when
    `item_counts` is given.
    """
    return counts_metrics(popularity_counts(targets, seen, ks, item_counts), ks, item_counts)


def format_table(
    results: Mapping[str, Mapping[str, Mapping[str, float]]], ks: Sequence[int]
) -> str:
    """Plain-text table: one row per (name, variant), HR@K and NDCG@K columns, 4 decimals.

    `results` is e.g. `{"model": evaluate_queries(...), "most-popular": evaluate_popularity(...)}`.
    """
    headers = [""] + [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")]
    rows = []
    for name, variants in results.items():
        # Known variants first, in protocol order; other metric dicts after, as given (entries
        # such as "by_popularity" or "seconds" are not variants and are skipped).
        names = [v for v in VARIANTS if v in variants] + [
            v for v in variants
            if v not in VARIANTS and isinstance(variants[v], Mapping)
            and any(str(key).startswith("hr@") for key in variants[v])
        ]
        for variant in names:
            metrics = variants[variant]
            cells = [f"{name} {variant}"]
            for k in ks:
                for key in (f"hr@{k}", f"ndcg@{k}"):
                    cells.append(f"{metrics[key]:.4f}" if key in metrics else "-")
            rows.append(cells)
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]).rstrip())
    return "\n".join(lines)


def _depth(ks: Sequence[int]) -> int:
    if len(ks) == 0 or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive cut-offs, got {list(ks)}")
    return int(max(ks))
