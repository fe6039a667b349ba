"""How far HR@K / NDCG@K move under query noise and under real train/serve skews: the figures behind
the export parity tolerance (recall/evaluation/parity.py).

    recall train configs/ml-1m.yaml --set train.epochs=1 --run-dir runs/parity-ml1m
    python benchmarks/parity.py runs/parity-ml1m

Prints, for the run's test queries: the export parity the run recorded (served through its bundle
against offline), then the largest |metric difference| and the number of queries whose target rank
changes when every query vector gets relative Gaussian noise (1e-7 … 1e-3), when the zip code is
served as unknown (a tower that forgets the prefix), when every feature is unknown, and when the
history is cut to its last 10 items. Writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    args = p.parse_args()

    from recall.evaluation.metrics import ranking_metrics, target_ranks
    from recall.evaluation.model_eval import build_item_index, queries_for
    from recall.evaluation.parity import VARIANTS, default_tolerance
    from recall.index import search
    from recall.pipeline import load_run

    cfg, data, user, items = load_run(args.run_dir)
    ks, test, feats = cfg.eval.ks, data.test, data.features
    index, _, with_bias = build_item_index(items, cfg.index.factory, cfg.index.nprobe, cfg.index.ef_search)

    def ranks(q):
        return {v: target_ranks(search(index, q, max(ks), exclude=test.seen if v == "filtered" else None)[0],
                                test.targets) for v in VARIANTS}

    def row(name, q):
        r = ranks(q)
        worst = max(abs(ranking_metrics(r[v], ks)[f"{m}@{k}"] - ranking_metrics(base[v], ks)[f"{m}@{k}"])
                    for v in VARIANTS for k in ks for m in ("hr", "ndcg"))
        changed = " / ".join(str(int((r[v] != base[v]).sum())) for v in VARIANTS)
        print(f"| {name} | {worst:.5f} | {changed} |")

    q0 = queries_for(user, test, feats.codes, with_bias, cfg.eval.batch_size)
    base = ranks(q0)
    metrics = json.loads((Path(args.run_dir) / "metrics.json").read_text())
    parity = metrics.get("export_parity", {})
    print(f"{len(q0)} test queries, compute_dtype {cfg.model.compute_dtype}; tolerance {default_tolerance(len(q0))}")
    print(f"recorded export parity: max_abs_diff {parity.get('max_abs_diff')}, query_max_abs_diff "
          f"{parity.get('query_max_abs_diff')}, rank changes {parity.get('rank_changes')}\n")
    print("| served queries | max abs diff HR/NDCG@K | queries ranked differently (filtered / unfiltered) |")
    print("|---|---|---|")
    rng = np.random.default_rng(0)
    for eps in (1e-7, 1e-6, 1e-5, 1e-4, 1e-3):
        q = q0 * (1 + eps * rng.standard_normal(q0.shape)).astype(np.float32)
        if with_bias:
            q[:, -1] = 1.0
        row(f"relative noise {eps:g}", q)
    if "zip_code" in feats.names:
        codes = feats.codes.copy()
        codes[:, feats.names.index("zip_code")] = 0
        row("zip_code unknown (prefix not applied)", queries_for(user, test, codes, with_bias, cfg.eval.batch_size))
    if feats.names:
        row("every feature unknown", queries_for(user, test, np.zeros_like(feats.codes), with_bias,
                                                 cfg.eval.batch_size))
    cut = test.history.copy()
    cut[:, :-10] = -1
    row("history cut to its last 10 items", queries_for(user, dataclasses.replace(test, history=cut), feats.codes,
                                                        with_bias, cfg.eval.batch_size))


if __name__ == "__main__":
    main()
