"""How good and how fast an approximate faiss index is, measured against exact search.

index recall@K = |approx top-K ∩ exact top-K| / K, averaged over the evaluation queries, both
searches filtered exactly as the protocol ranks (each query's seen items removed). It says how
much of the model's own top-K the index loses — not whether the model is right (that is HR@K).

Throughput (queries/s) is the wall time, by `time.perf_counter`, of that same filtered top-max(K)
search over the whole query set: the batched faiss calls plus the over-fetch of each query's seen
items, with faiss's current thread count. It is a measurement on a possibly busy machine, for
comparing indexes side by side in one run, not a benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import faiss
import numpy as np

from recall.index import search


def is_exact(index: faiss.Index) -> bool:
    """True for a brute-force flat index (`Flat`): its search is the exact reference."""
    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)


def search_params(index: faiss.Index) -> dict[str, int]:
    """The search-time knobs in effect: `{"nprobe": ..., "nlist": ...}` (IVF), `{"ef_search": ...}` (HNSW)."""
    out = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        out.update(nprobe=int(ivf.nprobe), nlist=int(ivf.nlist))
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        out["ef_search"] = int(hnsw.efSearch)
    return out


def timed_search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    exclude: tuple[np.ndarray, np.ndarray] | None,
    batch_size: int = 4096,
) -> tuple[np.ndarray, float]:
    """(ids `[Q, k]` from `recall.index.search`, queries per second over the whole set)."""
    t0 = time.perf_counter()
    ids, _ = search(index, queries, k, exclude=exclude, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    return ids, len(queries) / seconds if seconds > 0 else float("inf")


def overlap_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over rows of |approx[:, :k] ∩ exact[:, :k]| / |exact[:, :k]|, ignoring -1 slots.

    The denominator is k unless the (filtered) catalogue ran out; a row with no exact result
    counts as 1.0 (nothing to find). Ids within a row are distinct, as faiss returns them.
    Args: approx_ids, exact_ids `[Q, >= k]` int item ids, best first.
    """
    approx = np.asarray(approx_ids, dtype=np.int64)[:, :k]
    exact = np.asarray(exact_ids, dtype=np.int64)[:, :k]
    if approx.shape != exact.shape:
        raise ValueError(f"approx {approx.shape} and exact {exact.shape} top-{k} ids must match")
    num_rows = exact.shape[0]
    if num_rows == 0:
        return 1.0
    # Key every (row, id) so one sorted search answers "is this approx id in the row's exact top-k".
    span = int(max(exact.max(initial=0), approx.max(initial=0))) + 1
    rows = np.arange(num_rows, dtype=np.int64)[:, None]
    valid = exact >= 0
    exact_keys = np.sort((rows * span + exact)[valid])
    approx_keys = rows * span + approx
    if exact_keys.size == 0:
        found = np.zeros(approx.shape, dtype=bool)
    else:
        pos = np.minimum(np.searchsorted(exact_keys, approx_keys), exact_keys.size - 1)
        found = (approx >= 0) & (exact_keys[pos] == approx_keys)
    wanted = valid.sum(axis=1)
    per_row = np.where(wanted > 0, found.sum(axis=1) / np.maximum(wanted, 1), 1.0)
    return float(per_row.mean())


def index_quality(
    index: faiss.Index,
    exact: faiss.Index,
    queries: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray] | None,
    ks: Sequence[int],
    batch_size: int = 4096,
) -> dict[str, float]:
    """Index recall@K of `index` against `exact` (a Flat index over the same vectors), and speed.

    Args:
      index: the index under test; `exact`: the exact Flat index over the same item vectors
        (may be `index` itself, then every recall is 1.0 and it is searched once).
      queries: `[Q, d]` query vectors, folded to the index dimension.
      seen: CSR pair `(indptr [Q+1], indices [nnz])` removed before ranking, or None.
      ks: cut-offs; both searches go max(ks) deep.
    Returns:
      `{"recall@K": ... for K in ks, "qps": index queries/s, "exact_qps": exact queries/s,
      "queries": Q}`.
    """
    if index.ntotal != exact.ntotal or index.d != exact.d:
        raise ValueError(f"index ({index.ntotal} x {index.d}) and exact ({exact.ntotal} x {exact.d}) "
                         "must hold the same vectors")
    depth = int(max(ks))
    ids, qps = timed_search(index, queries, depth, seen, batch_size)
    if exact is index:
        exact_ids, exact_qps = ids, qps
    else:
        exact_ids, exact_qps = timed_search(exact, queries, depth, seen, batch_size)
    out: dict[str, float] = {f"recall@{k}": overlap_at_k(ids, exact_ids, k) for k in ks}
    out.update(qps=round(qps, 1), exact_qps=round(exact_qps, 1), queries=len(queries))
    return out
