"""Sampler benchmark: every sampler and loss on ML-1M with equal effort, one table.

    python benchmarks/samplers.py --data ../shared/data/ml-1m/ratings_pos4.parquet --epochs 5 \\
        --out benchmarks/samplers.json
    python benchmarks/samplers.py --quick --only log_uniform_100     # 1 epoch, one run (a smoke test)
    python benchmarks/samplers.py --list                             # the runs and their overrides

Each run trains configs/ml-1m.yaml with `early_stopping: null` and a fixed number of epochs (so every
row costs the same number of passes over the data) plus its own loss settings, in a fresh process
(`python -m recall train`), into WORK_DIR/<name>:

- sampled softmax with log_uniform, uniform, unigram (distortion 0.75), learned_unigram and mixed, at
  num_sampled 100 and 1000 (mixed: the batch labels plus that many unigram draws); in_batch once (its
  negatives are the batch);
- nce and neg with log-uniform noise at 100 and 1000;
- full_softmax, the yardstick.

It prints name, test HR@10 and HR@50 (filtered), examples/s, epochs, training seconds and the sampler's
KL(p_train || Q), and writes them with the machine, versions and settings to --out (atomically, after
every run; rows of an earlier file measured with the same settings are kept, so `--only` can redo a
few). Without the data file it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLED = ["loss.kind=sampled_softmax"]


def grid() -> dict[str, list[str]]:
    """name → the loss overrides of that run, in table order."""
    runs: dict[str, list[str]] = {}
    for sampler, extra in [("log_uniform", []), ("uniform", []), ("unigram", ["loss.distortion=0.75"]),
                           ("learned_unigram", [])]:
        label = "unigram0.75" if sampler == "unigram" else sampler
        for n in (100, 1000):
            runs[f"{label}_{n}"] = [*SAMPLED, f"loss.sampler={sampler}", f"loss.num_sampled={n}", *extra]
    runs["in_batch"] = [*SAMPLED, "loss.sampler=in_batch"]
    for n in (100, 1000):
        runs[f"mixed_{n}"] = [*SAMPLED, "loss.sampler=mixed", f"loss.num_sampled={n}"]
    for kind in ("nce", "neg"):
        for n in (100, 1000):
            runs[f"{kind}_{n}"] = [f"loss.kind={kind}", "loss.sampler=log_uniform", f"loss.num_sampled={n}"]
    runs["full_softmax"] = ["loss.kind=full_softmax"]
    return runs


def machine() -> dict:
    """Where the numbers were measured (the cores may be shared: the load average is recorded too)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        memory = f"{mem_kb / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        memory = None
    versions = {}
    for package in ("recall", "tensorflow", "keras", "faiss-cpu", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "recall"], cwd=ROOT,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory, "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions, "git_commit": commit,
            "recall_modified": dirty, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def run_recall_train(args: list[str], log_path: Path) -> tuple[int, float]:
    """`python -m recall train *args` in a fresh process, the command and its output in `log_path`
    → (exit code, wall seconds). Also used by benchmarks/recipes.py."""
    cmd = [sys.executable, "-m", "recall", "train", *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t0


def train(name: str, overrides: list[str], config: Path, run_dir: Path, log_path: Path) -> dict:
    """One `recall train` in a fresh process; its metrics.json, reduced to the table's columns."""
    rc, wall = run_recall_train([str(config), "--run-dir", str(run_dir), *[a for o in overrides for a in ("--set", o)]],
                                log_path)
    metrics_path = run_dir / "metrics.json"
    if rc != 0 or not metrics_path.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{name}: `recall train` exited with {rc}; see {log_path}:\n  " + "\n  ".join(tail))
    m = json.loads(metrics_path.read_text())
    test, tr = m["test"]["filtered"], m["train"]
    sampler = tr.get("sampler") or {}
    return {
        "name": name,
        "overrides": overrides,
        "hr@10": test["hr@10"],
        "hr@50": test["hr@50"],
        "ndcg@10": test.get("ndcg@10"),
        "valid_hr@50": m["valid"]["filtered"].get("hr@50"),
        "examples_per_sec": tr.get("examples_per_sec"),
        "epochs": tr.get("epochs"),
        "train_seconds": tr.get("seconds"),
        "wall_seconds": round(wall, 1),
        "sampler_kl": sampler.get("kl_train_vs_q"),
        "loss": tr.get("loss"),
        "run_dir": str(run_dir),
    }


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'name':<22} {'HR@10':>7} {'HR@50':>7} {'ex/s':>9} {'epochs':>6} {'seconds':>8} {'KL(p||Q)':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<22} failed: {r['error'].splitlines()[0]}")
            continue
        print(f"{r['name']:<22} {r['hr@10']:>7.4f} {r['hr@50']:>7.4f} {fmt(r['examples_per_sec'], ',.0f'):>9} "
              f"{r['epochs']:>6} {fmt(r['train_seconds'], '.1f'):>8} {fmt(r['sampler_kl'], '.3f'):>9}")
    print("(test, filtered; seconds = training time without data preparation, evaluation and export)")


def main(argv: list[str] | None = None) -> int:
    runs = grid()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-1m" / "ratings_pos4.parquet"),
                    help="ML-1M positives (Parquet); default %(default)s")
    ap.add_argument("--users", help="user side table (default: users.parquet beside --data, if present)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "ml-1m.yaml"))
    ap.add_argument("--epochs", type=int, default=5, help="epochs per run, no early stopping (default 5)")
    ap.add_argument("--quick", action="store_true", help="1 epoch per run (a smoke test, not a benchmark)")
    ap.add_argument("--only", help="comma-separated run names (see --list)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra config override for every run")
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "bench-samplers"),
                    help="run directories go in WORK_DIR/<name> (default %(default)s)")
    ap.add_argument("--resume", action="store_true",
                    help="continue existing run directories instead of training them afresh")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "samplers.json"))
    ap.add_argument("--list", action="store_true", help="print the runs and their overrides, then exit")
    args = ap.parse_args(argv)

    if args.list:
        for name, overrides in runs.items():
            print(f"{name:<22} {' '.join(overrides)}")
        return 0
    if args.epochs < 1:
        ap.error("--epochs must be at least 1")
    names = list(runs)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in runs]
        if unknown:
            ap.error(f"--only: unknown run(s) {', '.join(unknown)}; choose from {', '.join(runs)}")

    data = Path(args.data).expanduser().resolve()
    if not data.is_file():
        print(f"samplers benchmark skipped: {data} not found (pass --data PATH to the ML-1M positives, "
              "e.g. ../shared/data/ml-1m/ratings_pos4.parquet)")
        return 0
    users = Path(args.users).expanduser().resolve() if args.users else data.parent / "users.parquet"
    if args.users and not users.is_file():
        ap.error(f"--users: {users} not found")
    config = Path(args.config).resolve()
    if not config.is_file():
        ap.error(f"--config: {config} not found")
    epochs = 1 if args.quick else args.epochs
    common = [f"data.path={json.dumps(str(data))}", f"train.epochs={epochs}", "train.early_stopping=null"]
    if users.is_file():
        common.append(f"data.user_features.path={json.dumps(str(users))}")
    else:
        print(f"note: {users} not found; training without user features")
        common.append("data.user_features=null")
    common += args.overrides

    from recall.io import write_json

    out = Path(args.out).resolve()
    settings = {"data": str(data), "user_features": str(users) if users.is_file() else None,
                "config": str(config), "epochs": epochs, "extra_overrides": args.overrides}
    kept = []
    if out.is_file():
        try:
            previous = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
        if previous.get("settings") == settings:
            kept = [r for r in previous.get("results", []) if r.get("name") not in names]
        elif previous.get("results"):
            print(f"note: {out} holds results measured with other settings; they will be replaced")
    report = {"benchmark": "samplers", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "settings": settings, "results": list(kept)}

    work = Path(args.work_dir).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{len(names)} run(s), {epochs} epoch(s) each, data {data}; run directories under {work}", flush=True)
    for i, name in enumerate(names, 1):
        run_dir = work / name
        if run_dir.exists() and not args.resume:
            if not (run_dir / "config.yaml").is_file() and any(run_dir.iterdir()):
                print(f"{run_dir}: exists and is not a recall run directory; move it or choose --work-dir")
                return 2
            shutil.rmtree(run_dir)  # equal effort: every row trains from scratch
        print(f"[{i}/{len(names)}] {name}: {' '.join(runs[name])}", flush=True)
        try:
            row = train(name, common + runs[name], config, run_dir, work / f"{name}.log")
            print(f"    HR@50 {row['hr@50']:.4f}, {row['epochs']} epochs, {row['train_seconds']} s", flush=True)
        except RuntimeError as e:
            print(f"    {e}", flush=True)
            row = {"name": name, "overrides": common + runs[name], "error": str(e)}
        rows.append(row)
        report["results"] = kept + rows
        write_json(out, report)

    print_table(rows)
    print(f"written: {out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
