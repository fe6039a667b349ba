"""Export parity: replay the test queries through a bundle as a client would, compare with offline.

A bundle is what a service runs, so before it is published (recall/bundle.py `export_bundle`) the
test queries of the evaluation protocol are replayed through it exactly as a client sends them:

    raw item ids of the user's whole history (oldest first) + the user's raw feature values
      ──► the bundle's SavedModel (loaded back from disk, as recall/serving.py loads it)
      ──► the bundle's faiss index, with the history's items excluded (filtered) or not (unfiltered)
      ──► the returned raw item ids, compared with the raw id of the held-out test item

and HR@K / NDCG@K of the served ranking are compared with the offline ones (the in-process user
tower over the same index, example age 0 as served — for `eval.query_age: zero` and an exact index
the test numbers of metrics.json). The served feature codes must also equal the trained ones for
every user. Either failing refuses the bundle (ParityError, a RecallError: exit code 2).

Tolerance. Both sides run the same float32 (or bfloat16-matmul) graph on the same weights, but not
the same program: the SavedModel is a separate trace (its own batch shapes, graph rewrites), so a
query vector may differ from the in-process one in its last bits, which can swap two items whose
scores tie and move a target across a cut-off K; one such query moves HR@K by 1/Q. Measured on
ML-1M after one epoch (6,035 test queries, `configs/ml-1m.yaml`, README "Export bundle and serving"):
the served queries were bit-identical (bfloat16 and float32); relative noise of 1e-5 on every query
moved no metric, 1e-3 (some 8,000 times float32 rounding) moved the worst HR/NDCG by 0.00017 (one
query); the smallest real skew, the zip code served without its prefix, moved it by 0.0018–0.0023
(2,265–2,595 queries ranked differently), all features unknown by 0.0066–0.0073. The tolerance sits
between, about 3× from each: every HR@K and NDCG@K, filtered and unfiltered, may differ by at most
max(ABS_TOLERANCE, TIE_QUERIES / Q) — 0.0005 at ML-1M, two queries' worth on small test sets.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from recall.errors import RecallError
from recall.evaluation.metrics import ranking_metrics, target_ranks
from recall.evaluation.model_eval import queries_for
from recall.index import search

ABS_TOLERANCE = 0.0005  # 0.05 percentage point of HR@K / NDCG@K (3 of the 6,035 ML-1M test queries)
TIE_QUERIES = 2  # ...or two queries' worth, whichever is larger (small test sets: 1/Q is coarse)
VARIANTS = ("filtered", "unfiltered")


class ParityError(RecallError):
    """The bundle does not serve what was evaluated; `parity` holds the figures (for metrics.json)."""

    def __init__(self, message: str, parity: dict):
        super().__init__(message)
        self.parity = parity


def default_tolerance(num_queries: int) -> float:
    """The largest |served − offline| allowed in any HR@K / NDCG@K over `num_queries` test queries."""
    return max(ABS_TOLERANCE, TIE_QUERIES / max(int(num_queries), 1))


def client_histories(item_ids: np.ndarray, seen: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """Each query's whole history as raw ids, oldest first: item_ids [N] raw, seen (indptr [Q+1], ids [nnz])."""
    indptr, seq = seen
    raw = np.asarray(item_ids)[np.asarray(seq, np.int64)]
    return [raw[a:b] for a, b in zip(indptr[:-1], indptr[1:], strict=True)]


def served_ranks(rec, histories: list, features, targets_raw: np.ndarray, has_target: np.ndarray, depth: int,
                 batch_size: int = 1024) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Replay queries through a loaded `Recommender` as a client would.

    histories  R raw-id sequences, oldest first; features raw values (see Recommender.feature_matrix)
    targets_raw [R] the held-out raw item id per query; has_target bool [R] (False: not servable, a miss)
    Returns ({"filtered": ranks [R], "unfiltered": ranks [R]} (0-based position of the target among the
    returned raw ids, `depth` when absent), query vectors [R, d], bool unknown_features [R, F]).
    """
    queries, unknown = rec.serve(histories, features, batch_size=batch_size)
    rows = [rec.rows_of(h) for h in histories]
    targets_raw = np.asarray(targets_raw).astype(rec.item_ids.dtype)
    ranks = {}
    for variant in VARIANTS:
        top, _ = rec.top_rows(queries, rows, depth, exclude_seen=variant == "filtered")
        served_ids = rec.item_ids[top.clip(0)]  # raw ids, as a client receives them
        hits = (top >= 0) & (served_ids == targets_raw[:, None]) & has_target[:, None]
        ranks[variant] = np.where(hits.any(axis=1), hits.argmax(axis=1), depth).astype(np.int64)
    return ranks, queries, unknown


def compare(offline: dict[str, dict], served: dict[str, dict], ks: list[int], tol: float) -> dict:
    """Per-metric figures {"filtered": {"hr@10": {"offline", "served", "diff"}, ...}, ...}, the largest
    |diff| and where it is, against `tol`."""
    out: dict = {"tolerance": tol, "max_abs_diff": 0.0, "worst": None}
    for variant in VARIANTS:
        out[variant] = {}
        for k in ks:
            for name in (f"hr@{k}", f"ndcg@{k}"):
                a, b = offline[variant][name], served[variant][name]
                out[variant][name] = {"offline": round(a, 6), "served": round(b, 6), "diff": round(b - a, 6)}
                if abs(b - a) > out["max_abs_diff"] or out["worst"] is None:
                    out["max_abs_diff"], out["worst"] = abs(b - a), f"{variant} {name}"
    out["max_abs_diff"] = round(out["max_abs_diff"], 6)
    return out


def check_bundle(bundle_dir: str | Path, user_tower, index, data, ks: list[int], with_bias: bool,
                 batch_size: int = 2048, tolerance: float | None = None, where: str | Path | None = None) -> dict:
    """Replay `data.test` through the bundle in `bundle_dir`; return the parity figures or raise ParityError.

    user_tower, index: the in-process tower and the faiss index the bundle was written from (offline side).
    data: the run's Data (split, test queries, user features with their raw values).
    `where` names the bundle in messages (the folder it is being published to).
    """
    from recall.serving import Recommender

    t0 = time.perf_counter()
    where = where or bundle_dir
    test, split, feats = data.test, data.split, data.features
    depth = int(max(ks))
    tol = default_tolerance(len(test.targets)) if tolerance is None else float(tolerance)

    # Offline: the in-process tower on internal ids and codes, example age 0 (as served).
    q_offline = queries_for(user_tower, test, feats.codes, with_bias, batch_size, "zero")
    offline_ranks = {v: target_ranks(search(index, q_offline, depth, exclude=test.seen if v == "filtered" else None,
                                            batch_size=batch_size)[0], test.targets) for v in VARIANTS}

    # Served: raw ids and raw values through the bundle read back from disk.
    rec = Recommender.load(bundle_dir)
    has_target = test.targets >= 0
    targets_raw = np.asarray(split.item_ids)[np.where(has_target, test.targets, 0)]
    raw_features = feats.raw if feats.names else None
    if feats.names and raw_features is None:
        raise ValueError("UserFeatures.raw is None: build the features with encode_user_features(..., prefix=...)")
    served, q_served, unknown = served_ranks(rec, client_histories(split.item_ids, test.seen), raw_features,
                                             targets_raw, has_target, depth, batch_size=min(batch_size, 1024))

    parity = compare({v: ranking_metrics(offline_ranks[v], ks) for v in VARIANTS},
                     {v: ranking_metrics(served[v], ks) for v in VARIANTS}, ks, tol)
    parity["queries"] = int(len(test.targets))
    parity["query_max_abs_diff"] = float(np.abs(q_served - q_offline).max()) if len(q_served) else 0.0
    parity["rank_changes"] = {v: int((served[v] != offline_ranks[v]).sum()) for v in VARIANTS}
    mismatch_msg = None
    if feats.names:
        codes, _ = rec.feature_codes(raw_features, n=len(raw_features))
        bad = np.flatnonzero((codes != feats.codes).any(axis=1))
        parity["feature_code_mismatches"] = int(len(bad))
        parity["unknown_feature_values"] = {n: int(c) for n, c in zip(feats.names, unknown.sum(axis=0), strict=True)}
        if len(bad):
            u = bad[0]
            f = int(np.flatnonzero(codes[u] != feats.codes[u])[0])
            mismatch_msg = (f"the bundle's tower codes user features differently from training for {len(bad)} of "
                            f"{len(codes)} users (e.g. {feats.names[f]}={raw_features[u, f]!r}: code {codes[u, f]}, "
                            f"trained {feats.codes[u, f]})")
    parity["passed"] = mismatch_msg is None and parity["max_abs_diff"] <= tol
    parity["seconds"] = round(time.perf_counter() - t0, 3)
    if not parity["passed"]:
        variant, name = parity["worst"].split()
        w = parity[variant][name]
        reason = mismatch_msg or (
            f"served test {parity['worst']} {w['served']:.4f} vs offline {w['offline']:.4f}, |diff| "
            f"{parity['max_abs_diff']:.4f} > tolerance {tol:.4f}; {parity['rank_changes'][variant]} of "
            f"{parity['queries']} queries rank their target differently")
        raise ParityError(f"{where}: export refused, the bundle does not serve what was evaluated ({reason}); "
                          "nothing was published (an earlier bundle stays as it was) — this is a recall bug, "
                          "please report it with the export_parity figures of metrics.json", parity)
    return parity
