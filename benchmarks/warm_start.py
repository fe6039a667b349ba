"""Time-window warm-start benchmark: retraining on fresh data from yesterday's model vs from scratch.

    parent: the config on the interactions before a cut-off time (default: the 90 % time quantile)
    warm:   the same config on the full log, warm-started from the parent (--warm-epochs epochs)
    cold:   the same config on the full log from scratch (its own train.epochs)

Prints the warm run's test HR@50 after every epoch (epoch 0 = the parent's weights moved to the full
log's vocabulary, before any step) with its training seconds so far, the cold run's final test
HR@50 and training seconds, and when the warm run first reached the cold run's final HR@50 (and came
within --tolerance of it). The issue's target: within 0.005 in at most a third of the cold run's time.

    python benchmarks/warm_start.py                                  # ML-1M, configs/ml-1m.yaml
    python benchmarks/warm_start.py --cold runs/ml-1m                # reuse a finished cold run
    python benchmarks/warm_start.py --synthetic --out /tmp/ws.json   # a tiny generated log (smoke test)

Times: "train s" is the loop's own training time (no validation, no test evaluation); "wall s" is
the time since the run started, validation included, the benchmark's per-epoch test evaluation not.
Writes benchmarks/warm_start.json (atomically) with every number and the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# A run small enough for a test: 300 users, 120 items, ~3k interactions.
SYNTHETIC = ["data.source=synthetic", "data.synthetic={num_users: 300, num_items: 120, interactions_per_user: 10, "
             "seed: 1}", "model.dim=8", "model.hidden=[16]", "model.max_history=10",
             "model.history=[{kind: mean}, {kind: recent, window: 3}]", "loss.num_sampled=20", "train.epochs=3",
             "train.batch_size=64", "train.learning_rate=0.01", "train.early_stopping=null", "eval.ks=[10,50]",
             "train.steps_per_execution=2"]


def split_log(cfg, cutoff_quantile: float, cutoff_time: int | None, work: Path) -> tuple[Path, Path, dict]:
    """Write the interactions before the cut-off and the full log as parquet; (before, full, facts)."""
    from recall.data.readers import write_interactions
    from recall.pipeline import load_interactions

    df = load_interactions(cfg)
    cutoff = int(cutoff_time if cutoff_time is not None else df["timestamp"].quantile(cutoff_quantile))
    before = df[df["timestamp"] < cutoff]
    work.mkdir(parents=True, exist_ok=True)
    paths = work / "before.parquet", work / "full.parquet"
    write_interactions(before, paths[0])
    write_interactions(df, paths[1])
    facts = {"cutoff": cutoff, "interactions_before": len(before), "interactions_full": len(df),
             "items_before": int(before["item_id"].nunique()), "items_full": int(df["item_id"].nunique()),
             "users_before": int(before["user_id"].nunique()), "users_full": int(df["user_id"].nunique())}
    return paths[0], paths[1], facts


def file_overrides(path: Path, weighted: bool) -> list[str]:
    """Point a config at a log written by split_log (standard column names, rows already filtered)."""
    return ["data.source=file", f"data.path={path}", "data.format=parquet", "data.columns={}",
            "data.min_rating=null", *(["data.columns.weight=weight"] if weighted else [])]


def train_with_test_curve(cfg, run_dir: Path, metric: str) -> tuple[dict, list[dict]]:
    """recall.train(cfg) with the test `metric` (filtered) measured after every epoch; (metrics, curve)."""
    import recall
    from recall.evaluation.model_eval import evaluate_towers
    from recall.pipeline import prepare_data

    data = prepare_data(cfg)  # the same split train() builds (deterministic), for the test queries
    curve, t0, spent = [], time.perf_counter(), [0.0]

    def on_epoch(epoch, user, items, train_seconds):
        wall = time.perf_counter() - t0 - spent[0]
        e0 = time.perf_counter()
        test = evaluate_towers(user, items, data.test, data.features.codes, cfg.eval.ks, cfg.index.factory,
                               cfg.index.nprobe, cfg.index.ef_search, cfg.eval.batch_size,
                               cfg.eval.query_age)["filtered"]
        spent[0] += time.perf_counter() - e0
        curve.append({"epoch": epoch, "train_seconds": round(train_seconds, 2), "wall_seconds": round(wall, 2),
                      f"test_{metric}": test[metric]})
        print(f"  epoch {epoch}: test {metric} {test[metric]:.4f}  ({train_seconds:.1f} s training)", flush=True)

    metrics = recall.train(cfg, run_dir, on_epoch=on_epoch)
    return metrics, curve


def first_reaching(curve: list[dict], key: str, level: float) -> dict | None:
    """The first epoch of `curve` whose `key` is at least `level`, or None."""
    return next((e for e in curve if e[key] >= level), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "ml-1m.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override for all three runs")
    ap.add_argument("--warm-set", action="append", default=[], metavar="KEY=VALUE", help="override for the warm run")
    ap.add_argument("--synthetic", action="store_true", help="a tiny generated log instead of --config's data")
    ap.add_argument("--cutoff-quantile", type=float, default=0.9, help="cut-off = this quantile of the timestamps")
    ap.add_argument("--cutoff-time", type=int, help="cut-off as a timestamp (overrides --cutoff-quantile)")
    ap.add_argument("--warm-epochs", type=int, default=4, help="train.epochs of the warm run (its cosine plan)")
    ap.add_argument("--cold", help="a finished cold run directory on the full log to reuse (no test curve)")
    ap.add_argument("--metric", default="hr@50")
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "bench-warm-start"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "warm_start.json"))
    args = ap.parse_args(argv)

    import recall
    from recall.config import WarmStartConfig
    from recall.io import write_json

    work = Path(args.work_dir)
    base = recall.load_config(None if args.synthetic else args.config,
                              [*(SYNTHETIC if args.synthetic else []), *args.overrides])
    before, full, facts = split_log(base, args.cutoff_quantile, args.cutoff_time, work)
    weighted = base.data.columns.weight is not None
    print(f"cut-off {facts['cutoff']}: {facts['interactions_before']:,} of {facts['interactions_full']:,} "
          f"interactions before it ({facts['items_before']:,} of {facts['items_full']:,} items)", flush=True)
    common = [*(SYNTHETIC if args.synthetic else []), *args.overrides]
    config = None if args.synthetic else args.config

    print("parent (before the cut-off):", flush=True)
    parent_cfg = recall.load_config(config, [*common, *file_overrides(before, weighted)])
    parent = recall.train(parent_cfg, work / "parent")

    if args.cold:
        cold = json.loads((Path(args.cold) / "metrics.json").read_text())
        cold_curve = None
    else:
        print("cold (full log, from scratch):", flush=True)
        cold_cfg = recall.load_config(config, [*common, *file_overrides(full, weighted)])
        cold, cold_curve = train_with_test_curve(cold_cfg, work / "cold", args.metric)
    cold_final, cold_seconds = cold["test"]["filtered"][args.metric], cold["train"]["seconds"]

    print(f"warm (full log, from the parent, {args.warm_epochs} epochs):", flush=True)
    warm_cfg = recall.load_config(config, [*common, *file_overrides(full, weighted), f"train.epochs={args.warm_epochs}",
                                           *args.warm_set])
    warm_cfg.warm_start = WarmStartConfig(run_dir=str(work / "parent"))
    warm, warm_curve = train_with_test_curve(warm_cfg, work / "warm", args.metric)

    key = f"test_{args.metric}"
    reached = first_reaching(warm_curve, key, cold_final)
    within = first_reaching(warm_curve, key, cold_final - args.tolerance)
    result = {
        "command": "python benchmarks/warm_start.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": "synthetic" if args.synthetic else args.config, "metric": args.metric, **facts,
        "parent": {"train_seconds": parent["train"]["seconds"], f"test_{args.metric}": parent["test"]["filtered"][
            args.metric]},
        "cold": {"train_seconds": cold_seconds, "epochs": cold["train"]["epochs"], f"test_{args.metric}": cold_final,
                 "curve": cold_curve},
        "warm": {"epochs": warm["train"]["epochs"], "train_seconds": warm["train"]["seconds"],
                 f"test_{args.metric}": warm["test"]["filtered"][args.metric], "curve": warm_curve,
                 "lineage": warm["lineage"]},
        "warm_reaches_cold": reached, f"warm_within_{args.tolerance}": within,
        "target_met": within is not None and within["train_seconds"] <= cold_seconds / 3,
    }
    write_json(args.out, result)

    print(f"\n| warm epoch | train s | wall s | test {args.metric} | vs cold final |")
    print("|---|---|---|---|---|")
    for e in warm_curve:
        print(f"| {e['epoch']} | {e['train_seconds']:.1f} | {e['wall_seconds']:.1f} | {e[key]:.4f} | "
              f"{e[key] - cold_final:+.4f} |")
    print(f"\ncold: test {args.metric} {cold_final:.4f} after {cold_seconds:.1f} s training "
          f"({cold['train']['epochs']} epochs); parent: {parent['train']['seconds']:.1f} s on the earlier window")
    for label, hit in (("reached the cold run's final", reached), (f"came within {args.tolerance}", within)):
        print(f"warm {label}: " + (f"epoch {hit['epoch']}, {hit['train_seconds']:.1f} s training "
                                    f"({hit['train_seconds'] / max(cold_seconds, 1e-9):.0%} of cold)"
                                    if hit else "not within its epochs"))
    print(f"target (within {args.tolerance} in ≤ 1/3 of the cold time): {'met' if result['target_met'] else 'not met'}"
          f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    from recall.hugepages import restart_with_huge_pages

    restart_with_huge_pages()  # train as `recall train` does (recall/hugepages.py)
    raise SystemExit(main())
