"""ML-1M quality benchmark: train the shipped config (and its full-softmax twin), print the row beside
the peers' published table.

    python benchmarks/quality.py                       # configs/ml-1m.yaml, sampled + full softmax
    python benchmarks/quality.py --skip-full --set "model.history=[{kind: attention}]" --name attention
    python benchmarks/quality.py --skip-full --modes positions,sequences   # both batching modes, side by side

Needs ../shared/data/ml-1m (or --set data.path=... / data.user_features.path=...). Writes
benchmarks/quality.json (atomically) with every row it ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Peers on the same split and protocol (filtered test metrics), from the quality issue.
PEERS = [
    ("most popular", 0.039, 0.129, 0.346, 0.019),
    ("DeepMatch 0.3.2 YoutubeDNN", 0.059, 0.203, 0.469, 0.028),
    ("TFRS 0.7.7 two-tower (in-batch + log Q)", 0.113, 0.299, 0.588, 0.057),
    ("EASE (λ tuned on validation)", 0.098, 0.290, 0.584, 0.048),
    ("full-softmax reference, DeepMatch tower", 0.109, 0.293, 0.583, 0.056),
    ("own reference: + recency, dim 64, full softmax", 0.237, 0.476, 0.712, 0.134),
]
TARGET = {"hr@50": 0.52, "hr@10": 0.26}


def run(config: Path, overrides: list[str], run_dir: Path) -> dict:
    import recall

    cfg = recall.load_config(config, overrides)
    t0 = time.perf_counter()
    metrics = recall.train(cfg, run_dir)
    wall = time.perf_counter() - t0
    f = metrics["test"]["filtered"]
    v = metrics["valid"]["filtered"]
    t = metrics["train"]
    return {"overrides": overrides, "hr@10": f["hr@10"], "hr@50": f["hr@50"], "hr@200": f["hr@200"],
            "ndcg@10": f["ndcg@10"], "valid_hr@10": v["hr@10"], "valid_hr@50": v["hr@50"],
            "epochs": t["epochs"], "train_seconds": t["seconds"], "wall_seconds": round(wall, 1),
            "examples_per_sec": t["examples_per_sec"], "run_dir": str(run_dir)}


def main() -> int:
    from recall.hugepages import restart_with_huge_pages

    restart_with_huge_pages()  # train as `recall train` does (recall/hugepages.py)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "ml-1m.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--name", default="recall (configs/ml-1m.yaml)")
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "bench-quality"))
    ap.add_argument("--skip-full", action="store_true", help="don't train the full-softmax twin")
    ap.add_argument("--modes", help="train.batching values to run the config in, side by side, e.g. "
                    "positions,sequences (default: the config's own)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "quality.json"))
    args = ap.parse_args()

    data = ROOT.parent / "shared" / "data" / "ml-1m"
    if not data.exists() and not any(o.startswith("data.path=") for o in args.overrides):
        print(f"skipped: {data} not found; pass --set data.path=... and data.user_features.path=...")
        return 0
    work = Path(args.work_dir)
    import shutil

    rows = {}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else [None]
    variants = [(args.name if m is None else f"{args.name}, {m}",
                 args.overrides if m is None else [*args.overrides, f"train.batching={m}"]) for m in modes]
    main_name = variants[0][0]
    if not args.skip_full:
        variants.append((f"{main_name}, full softmax", [*variants[0][1], "loss.kind=full_softmax"]))
    import recall

    for _, overrides in variants:  # every variant's config is checked before the first one trains
        recall.load_config(Path(args.config), overrides)
    for name, overrides in variants:
        run_dir = work / "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:80]
        shutil.rmtree(run_dir, ignore_errors=True)  # equal effort: every row trains from scratch
        rows[name] = run(Path(args.config), overrides, run_dir)

    print()
    print(f"{'system':<52} {'HR@10':>7} {'HR@50':>7} {'HR@200':>7} {'NDCG@10':>8}  epochs  train s   wall s  ex/s")
    for name, h10, h50, h200, n10 in PEERS:
        print(f"{name:<52} {h10:>7.3f} {h50:>7.3f} {h200:>7.3f} {n10:>8.3f}")
    for name, r in rows.items():
        print(f"{name:<52} {r['hr@10']:>7.3f} {r['hr@50']:>7.3f} {r['hr@200']:>7.3f} {r['ndcg@10']:>8.3f}"
              f"  {r['epochs']:>6}  {r['train_seconds']:>7}  {r['wall_seconds']:>7}  {r['examples_per_sec']:,.0f}")
    main_row = rows[main_name]
    met = all(main_row[k] >= v for k, v in TARGET.items())
    print(f"\ntarget HR@50 ≥ {TARGET['hr@50']} and HR@10 ≥ {TARGET['hr@10']}: {'met' if met else 'NOT met'}")
    if not args.skip_full:
        full = rows[f"{main_name}, full softmax"]
        gap = (full["hr@50"] - main_row["hr@50"]) / full["hr@50"]
        print(f"sampled vs full softmax HR@50: {main_row['hr@50']:.4f} vs {full['hr@50']:.4f} "
              f"({gap:+.1%} relative gap; target within 2%)")

    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous.update(rows)
    from recall.io import write_json

    write_json(out, previous)
    return 0


if __name__ == "__main__":
    from recall.errors import RecallError

    try:
        raise SystemExit(main())
    except RecallError as e:  # a config typo or bad data: one line, as `recall train` says it
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
