"""Evaluate trained towers: item vectors → faiss index, user tower → query vectors, then the protocol
(or the index's own recall against exact search and its speed)."""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from recall.data.examples import Queries
from recall.evaluation.index_quality import index_quality, is_exact, search_params
from recall.evaluation.protocol import EvalCounts, counts_metrics, query_counts
from recall.index import build_index, fold_bias, fold_query


def item_vectors(item_tower) -> tuple[np.ndarray, bool]:
    """The index matrix `[N, D(+1)]` (bias folded as a last column when the model has one)."""
    weights, biases = item_tower.weights_and_biases()
    with_bias = bool(item_tower.use_bias)
    return fold_bias(weights.numpy(), biases.numpy() if with_bias else None), with_bias


def query_vectors(user_tower, history: np.ndarray, user_codes: np.ndarray, with_bias: bool,
                  batch_size: int = 4096, age: np.ndarray | None = None) -> np.ndarray:
    """User-tower vectors `[Q, D(+1)]` without dropout; example age `age` [Q] (default 0, as served).

    history int32 [Q, M], user_codes int32 [Q, F].
    """
    predict = _predictor(user_tower)
    out = []
    for start in range(0, len(history), batch_size):
        h = history[start : start + batch_size]
        feats = {
            "history": tf.constant(h, tf.int32),
            "age": tf.zeros([len(h)], tf.float32) if age is None else tf.constant(age[start : start + batch_size]),
            "user_features": tf.constant(user_codes[start : start + batch_size], tf.int32),
        }
        out.append(predict(feats).numpy())
    q = np.concatenate(out) if out else np.zeros((0, user_tower.dim), np.float32)
    return fold_query(q, with_bias)


_PREDICTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _predictor(user_tower):
    """One traced inference function per tower (cached: evaluation runs every epoch)."""
    if user_tower not in _PREDICTORS:
        _PREDICTORS[user_tower] = tf.function(lambda feats: user_tower(feats, training=False),
                                              reduce_retracing=True)
    return _PREDICTORS[user_tower]


def build_item_index(item_tower, factory: str = "Flat", nprobe: int | None = None,
                     ef_search: int | None = None):
    """(faiss index over the item vectors, the vectors [N, d], whether the bias is folded in)."""
    items, with_bias = item_vectors(item_tower)
    return build_index(items, factory, nprobe=nprobe, ef_search=ef_search), items, with_bias


def queries_for(user_tower, queries: Queries, user_codes: np.ndarray, with_bias: bool, batch_size: int = 4096,
                query_age: str = "zero") -> np.ndarray:
    """Query vectors [Q, d] for `queries`; query_age "zero" feeds example age 0 as live serving does,
    "last_event" replays each query at the time of its last history event (known at query time)."""
    age = queries.age if query_age == "last_event" else None
    return query_vectors(user_tower, queries.history, user_codes, with_bias, batch_size, age)


def evaluate_towers(user_tower, item_tower, queries: Queries, user_codes: np.ndarray, ks: list[int],
                    factory: str = "Flat", nprobe: int | None = None, ef_search: int | None = None,
                    batch_size: int = 4096, query_age: str = "zero", item_counts: np.ndarray | None = None,
                    collective=None) -> dict:
    """{"filtered": {...}, "unfiltered": {...}} for the given queries under the DESIGN.md protocol.

    item_counts: training frequency per item [N]; adds "by_popularity" (see evaluate_queries).
    collective (a worker of a job sharded by user, distributed/collect.py): `queries` are this worker's
    users'; their counts are combined with every other worker's, so every worker returns the metrics
    of all users (collective: every worker calls it).
    """
    index, _, with_bias = build_item_index(item_tower, factory, nprobe, ef_search)
    q = queries_for(user_tower, queries, user_codes, with_bias, batch_size, query_age)
    counts = query_counts(index, q, queries.targets, queries.seen, ks, batch_size=batch_size,
                          item_counts=item_counts)
    return counts_metrics(combine_counts(counts, collective), ks, item_counts)


def combine_counts(counts: EvalCounts, collective=None) -> EvalCounts:
    """The job's counts from this worker's (unchanged without a collective): the summable parts summed
    over the workers, the items reached gathered (evaluation/protocol.py EvalCounts)."""
    if collective is None:
        return counts
    return counts.combined(collective.sum(counts.sums()), collective.gather(counts.reached()))


def evaluate_index(index, items: np.ndarray, q: np.ndarray, seen, ks: list[int], batch_size: int = 4096,
                   max_queries: int | None = None) -> dict:
    """The index's search parameters, queries/s and — unless it is exact — its recall@K against Flat.

    index over `items` [N, d]; q [Q, d] query vectors; seen the queries' history CSR. For an
    approximate index at most `max_queries` of them (a fixed random sample) are searched: exact
    search over every query can take far longer than the evaluation itself. Returns
    {"exact": bool, "nprobe"/"nlist"/"ef_search" when they apply, "qps", "queries", and for an
    approximate index "recall@K" for every K and "exact_qps"} (see index_quality).
    """
    exact = is_exact(index)
    if not exact and max_queries is not None and len(q) > max_queries:
        rows = np.sort(np.random.default_rng(0).choice(len(q), max_queries, replace=False))
        indptr, indices = seen
        starts, ends = indptr[rows], indptr[rows + 1]
        sub_indptr = np.concatenate([[0], np.cumsum(ends - starts)])
        sub_indices = np.concatenate([indices[a:b] for a, b in zip(starts, ends)]) if len(rows) else indices[:0]
        q, seen = q[rows], (sub_indptr, sub_indices)
    reference = index if exact else build_index(items, "Flat")
    quality = index_quality(index, reference, q, seen, ks, batch_size=batch_size)
    if exact:  # recall against itself is 1.0 by construction: keep only the speed
        quality = {"qps": quality["qps"], "queries": quality["queries"]}
    return {"exact": exact, **search_params(index), **quality}
