"""The evaluation protocol: full-catalogue ranking by item id, `filtered` and `unfiltered`.

`filtered` removes each query's history (its seen items) before ranking and is the primary
number; `unfiltered` ranks the whole catalogue. Every query counts in the denominator, including
those whose target is outside the vocabulary (target < 0), which are misses.

Each variant also reports catalogue coverage@K; with the training item counts, the filtered
metrics are broken down by the target's popularity bucket (see `metrics.popularity_boundaries`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import faiss
import numpy as np

from recall.evaluation.metrics import (
    coverage,
    metrics_by_popularity,
    popularity_ranks,
    ranking_metrics,
    target_ranks,
)
from recall.index import search

VARIANTS = ("filtered", "unfiltered")


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
    depth = _depth(ks)
    results: dict[str, dict] = {}
    for variant, exclude in (("filtered", seen), ("unfiltered", None)):
        ids, _ = search(index, queries, depth, exclude=exclude, batch_size=batch_size)
        # A miss gets rank == depth, which fails `rank < K` for every K <= depth.
        ranks = target_ranks(ids, targets)
        results[variant] = {**ranking_metrics(ranks, ks), **coverage(ids, int(index.ntotal), ks)}
        if variant == "filtered" and item_counts is not None:
            results["by_popularity"] = metrics_by_popularity(ranks, targets, item_counts, ks)
    return results


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
    _depth(ks)
    filtered = popularity_ranks(targets, seen)
    results: dict[str, dict] = {
        "filtered": ranking_metrics(filtered, ks),
        "unfiltered": ranking_metrics(popularity_ranks(targets, None), ks),
    }
    if item_counts is not None:
        results["by_popularity"] = metrics_by_popularity(filtered, targets, item_counts, ks)
    return results


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
