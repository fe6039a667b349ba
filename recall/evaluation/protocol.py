"""The evaluation protocol: full-catalogue ranking by item id, `filtered` and `unfiltered`.

`filtered` removes each query's history (its seen items) before ranking and is the primary
number; `unfiltered` ranks the whole catalogue. Every query counts in the denominator, including
those whose target is outside the vocabulary (target < 0), which are misses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import faiss
import numpy as np

from recall.evaluation.metrics import popularity_ranks, ranking_metrics, target_ranks
from recall.index import search

VARIANTS = ("filtered", "unfiltered")


def evaluate_queries(
    index: faiss.Index,
    queries: np.ndarray,
    targets: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    ks: Sequence[int],
    batch_size: int = 4096,
) -> dict[str, dict[str, float]]:
    """Metrics of a model's queries against its item index.

    Args:
      index: faiss index whose row ids are internal item ids.
      queries: `[Q, d]` query vectors, already folded to the index dimension.
      targets: `[Q]` held-out internal item id per query; < 0 = out of vocabulary.
      seen: CSR pair `(indptr [Q+1], indices [nnz])` of each query's history items.
      ks: cut-offs, e.g. [10, 20, 50, 100, 200]; the search goes max(ks) deep.
    Returns:
      `{"filtered": ranking_metrics(...), "unfiltered": ranking_metrics(...)}`.
    """
    depth = _depth(ks)
    results = {}
    for variant, exclude in (("filtered", seen), ("unfiltered", None)):
        ids, _ = search(index, queries, depth, exclude=exclude, batch_size=batch_size)
        # A miss gets rank == depth, which fails `rank < K` for every K <= depth.
        results[variant] = ranking_metrics(target_ranks(ids, targets), ks)
    return results


def evaluate_popularity(
    targets: np.ndarray, seen: tuple[np.ndarray, np.ndarray], ks: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Most-popular baseline (item id order = popularity order), same shape as evaluate_queries."""
    _depth(ks)
    return {
        "filtered": ranking_metrics(popularity_ranks(targets, seen), ks),
        "unfiltered": ranking_metrics(popularity_ranks(targets, None), ks),
    }


def format_table(
    results: Mapping[str, Mapping[str, Mapping[str, float]]], ks: Sequence[int]
) -> str:
    """Plain-text table: one row per (name, variant), HR@K and NDCG@K columns, 4 decimals.

    `results` is e.g. `{"model": evaluate_queries(...), "most-popular": evaluate_popularity(...)}`.
    """
    headers = [""] + [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")]
    rows = []
    for name, variants in results.items():
        # Known variants first, in protocol order; anything else after, as given.
        names = [v for v in VARIANTS if v in variants] + [v for v in variants if v not in VARIANTS]
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
