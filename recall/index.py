"""The faiss index over item vectors: build, save/load, and top-K search with seen-item exclusion.

Scores are inner products. When the model has an item bias, the bias is folded into the vectors
so that the index reproduces the training logit exactly: index rows are `[v_i, b_i]` and queries
`[u, 1]`, hence `[u, 1] · [v_i, b_i] = u·v_i + b_i`.

Threading is left to the caller (`faiss.omp_set_num_threads` is never called here).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import faiss
import numpy as np

from recall.errors import RecallError
from recall.io import atomic_path

FACTORY_EXAMPLES = "e.g. 'Flat', 'IVF64,Flat', 'HNSW32'"
_IVF_LISTS = re.compile(r"IVF\d+")


def fold_bias(item_vectors: np.ndarray, item_bias: np.ndarray | None) -> np.ndarray:
    """Item vectors `[N, D]` (+ bias `[N]`) → float32 C-contiguous `[N, D+1]` (or `[N, D]`)."""
    vectors = np.asarray(item_vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"item_vectors must be [N, D], got shape {vectors.shape}")
    if item_bias is None:
        return np.array(vectors, dtype=np.float32, order="C", copy=True)
    bias = np.asarray(item_bias, dtype=np.float32).reshape(-1)
    if bias.shape[0] != vectors.shape[0]:
        raise ValueError(f"item_bias must be [{vectors.shape[0]}], got shape {bias.shape}")
    return np.ascontiguousarray(np.concatenate([vectors, bias[:, None]], axis=1))


def fold_query(user_vectors: np.ndarray, with_bias: bool) -> np.ndarray:
    """User vectors `[Q, D]` → float32 C-contiguous `[Q, D+1]` (a column of ones) or `[Q, D]`."""
    queries = np.asarray(user_vectors, dtype=np.float32)
    if queries.ndim != 2:
        raise ValueError(f"user_vectors must be [Q, D], got shape {queries.shape}")
    if not with_bias:
        return np.ascontiguousarray(queries)
    ones = np.ones((queries.shape[0], 1), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate([queries, ones], axis=1))


def _faiss_reason(exc: Exception) -> str:
    """The human part of a faiss RuntimeError ("Error in <signature> at <file>:<line>: <why>")."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = re.search(r" at \S+:\d+: (?:Error: '.*?' failed: )?(.*)$", text)
    return match.group(1) if match else text


def build_index(
    vectors: np.ndarray,
    factory: str = "Flat",
    nprobe: int | None = None,
    ef_search: int | None = None,
    seed: int = 0,
) -> faiss.Index:
    """Build an inner-product index over `vectors` `[N, d]` (already bias-folded) and add them.

    Row i of `vectors` gets faiss id i. Indexes that need training (IVF, PQ) are trained on the
    vectors themselves, with k-means seeded by `seed` so a rebuild gives the same index.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be [N, d], got shape {vectors.shape}")
    n, d = vectors.shape
    index = _new_index(d, factory)

    if not index.is_trained:
        _seed_clustering(index, seed)
        ivf = faiss.try_extract_index_ivf(index)
        # faiss k-means refuses fewer points than centroids; say so in terms of the config.
        if ivf is not None and n < ivf.nlist:
            raise RecallError(_too_few_message(factory, ivf.nlist, n, lists=True))
        try:
            index.train(vectors)
        except RuntimeError as exc:
            need = re.search(r"number of clusters \((\d+)\)", str(exc))
            if need is None:
                raise RecallError(
                    f"index.factory {factory!r} could not be trained on {n} vectors: "
                    f"{_faiss_reason(exc)}; use a simpler factory, {FACTORY_EXAMPLES}"
                ) from None
            # The coarse quantizer was checked above, so this is a PQ codebook's k-means.
            raise RecallError(
                _too_few_message(factory, int(need.group(1)), n, lists=False)
            ) from None

    _set_search_params(index, factory, nprobe, ef_search)
    index.add(vectors)
    return index


def check_index_config(num_items: int, dim: int, factory: str, nprobe: int | None = None,
                       ef_search: int | None = None) -> None:
    """Raise the RecallError `build_index` would raise for N=`num_items` vectors of `dim`, without
    training anything: lets a run refuse a bad `index.*` section before it writes or trains."""
    index = _new_index(dim, factory)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and num_items < ivf.nlist:
        raise RecallError(_too_few_message(factory, ivf.nlist, num_items, lists=True))
    inner = faiss.downcast_index(ivf if ivf is not None else index)
    storage = getattr(inner, "storage", None)  # HNSW over PQ codes keeps its PQ there
    for holder in (inner, faiss.downcast_index(storage) if storage is not None else None):
        pq = getattr(holder, "pq", None)
        if pq is not None and num_items < pq.ksub:
            raise RecallError(_too_few_message(factory, int(pq.ksub), num_items, lists=False))
    _set_search_params(index, factory, nprobe, ef_search)


def _new_index(d: int, factory: str) -> faiss.Index:
    try:
        return faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise RecallError(
            f"index.factory {factory!r} is not a valid faiss index_factory string for "
            f"dimension {d}: {_faiss_reason(exc)}; {FACTORY_EXAMPLES}"
        ) from None


def _set_search_params(index: faiss.Index, factory: str, nprobe: int | None, ef_search: int | None) -> None:
    params = faiss.ParameterSpace()
    for name, value, field, kind in (
        ("nprobe", nprobe, "index.nprobe", "an IVF factory such as 'IVF64,Flat'"),
        ("efSearch", ef_search, "index.ef_search", "an HNSW factory such as 'HNSW32'"),
    ):
        if value is None:
            continue
        try:
            params.set_index_parameter(index, name, int(value))
        except RuntimeError:
            raise RecallError(
                f"{field} does not apply to index.factory {factory!r}; remove {field} or use {kind}"
            ) from None


def _seed_clustering(index: faiss.Index, seed: int) -> None:
    """Seed every k-means the index will run (IVF coarse quantizer, PQ codebooks)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
    inner = faiss.downcast_index(ivf if ivf is not None else index)
    pq = getattr(inner, "pq", None)
    if pq is not None and hasattr(pq, "cp"):
        pq.cp.seed = seed


def _too_few_message(factory: str, need: int, got: int, lists: bool) -> str:
    """`lists`: the shortfall is IVF lists (k-means centroids), else PQ codebook entries."""
    if lists:
        # ~sqrt(N) lists is the usual rule of thumb; never suggest more lists than points.
        nlist = max(1, min(got, int(np.sqrt(max(got, 1)))))
        suggestion = _IVF_LISTS.sub(f"IVF{nlist}", factory, count=1)
        hint = f"use fewer lists, e.g. {suggestion!r}"
    else:
        hint = "use fewer bits per PQ code (e.g. 'PQ8x4' needs 16) or a factory without PQ"
    return f"index.factory {factory!r} needs at least {need} training vectors (got {got}); {hint}"


def save_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write the index atomically: a crash leaves the old file (or none), never half of one."""
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(path: str | os.PathLike) -> faiss.Index:
    """Read an index written by `save_index`; a missing or corrupt file is a RecallError."""
    path = Path(path)
    if not path.is_file():
        raise RecallError(f"{path}: index file not found; check the path or re-run `recall export`")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise RecallError(
            f"{path}: not a readable faiss index ({_faiss_reason(exc)}); re-run `recall export`"
        ) from None


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` item rows per query, best first, optionally skipping each query's excluded rows.

    Args:
      queries: `[Q, d]`, already folded to the index dimension.
      exclude: CSR pair `(indptr [Q+1], indices [nnz])`; row q's excluded item rows are
        `indices[indptr[q]:indptr[q+1]]` (duplicates and out-of-range ids are harmless).
    Returns:
      ids `[Q, k]` int64 and scores `[Q, k]` float32. Slots left empty when the catalogue runs out
      hold id -1 and score -inf.

    Exclusion over-fetches `k + max(#excluded in the batch)` and filters; queries are processed in
    order of exclusion count so each batch's over-fetch stays close to what its rows need.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise ValueError(f"queries must be [Q, {index.d}], got shape {queries.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num_queries, ntotal = queries.shape[0], int(index.ntotal)
    ids = np.full((num_queries, k), -1, dtype=np.int64)
    scores = np.full((num_queries, k), -np.inf, dtype=np.float32)
    if num_queries == 0 or ntotal == 0:
        return ids, scores

    if exclude is None:
        indptr = np.zeros(num_queries + 1, dtype=np.int64)
        indices = np.zeros(0, dtype=np.int64)
    else:
        indptr = np.asarray(exclude[0], dtype=np.int64)
        indices = np.asarray(exclude[1], dtype=np.int64)
        if indptr.shape != (num_queries + 1,):
            raise ValueError(f"exclude indptr must be [{num_queries + 1}], got {indptr.shape}")
    counts = np.diff(indptr)
    order = np.argsort(counts, kind="stable")

    for start in range(0, num_queries, batch_size):
        rows = order[start : start + batch_size]
        fetch = min(k + int(counts[rows].max()), ntotal)
        batch_scores, batch_ids = index.search(queries[rows], fetch)
        batch_ids = batch_ids.astype(np.int64, copy=False)
        keep = batch_ids >= 0  # faiss pads with -1 when it finds fewer than `fetch`
        if counts[rows].any():
            excluded = _batch_keys(indptr, indices, rows, ntotal)
            local = np.arange(len(rows), dtype=np.int64)[:, None]
            keep &= ~_contains(excluded, local * ntotal + batch_ids)
        # Survivor j of a row (in faiss's score order) goes to output column j, if j < k.
        column = np.cumsum(keep, axis=1) - 1
        take = keep & (column < k)
        row_of, col_of = np.nonzero(take)
        ids[rows[row_of], column[take]] = batch_ids[row_of, col_of]
        scores[rows[row_of], column[take]] = batch_scores[row_of, col_of]
    return ids, scores


def _batch_keys(
    indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, ntotal: int
) -> np.ndarray:
    """Excluded `(batch row, item)` pairs as sorted int64 keys `local_row * ntotal + item`."""
    starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
    local = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    # Position of every excluded entry in `indices`: its row's start plus its offset in the row.
    first = np.cumsum(lengths) - lengths
    offsets = np.arange(lengths.sum(), dtype=np.int64) - np.repeat(first, lengths)
    items = indices[np.repeat(starts, lengths) + offsets]
    # Out-of-range ids would alias a neighbouring row's key; they cannot match a result anyway.
    valid = (items >= 0) & (items < ntotal)
    return np.unique(local[valid] * ntotal + items[valid])


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean mask, shaped like `keys`: which of them occur in the sorted 1-D `sorted_keys`."""
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[pos] == keys
