"""Data-parallel training: 1 process vs N local workers, the bytes one step exchanges, and an estimate
for 8 and 32 workers on a real network.

    python benchmarks/distributed.py                                   # ML-1M, configs/ml-1m.yaml, 1 vs 2 workers
    python benchmarks/distributed.py --config configs/ml-1m-fast.yaml
    python benchmarks/distributed.py --synthetic --epochs 1 --out /tmp/dist.json   # a tiny smoke run

Three parts, one table each:

1. **examples/s**: `recall train CONFIG --set train.epochs=E` as one process and with `--workers 2`
   (each worker one thread per op: `train.intra_op_threads=1`; on this 2-core machine one core
   each), the same global batch; the steady rate is the median over epochs 2.. of history.json's
   examples/s (epoch 1 also traces the compiled step), from the chief's history.
2. **bytes per step, per replica**: one process trains `--probe-steps` steps at a local batch of
   `train.batch_size` examples, and every step records what a replica hands the strategy: each dense
   gradient (all-reduced), each `tf.IndexedSlices` gradient's ids (int64) and rows (all-gathered
   as they are, repeated rows included: that is what Keras' optimizers exchange under
   MultiWorkerMirroredStrategy), and for `in_batch`/`mixed` the batch's labels and their count.
3. **estimate at 8 and 32 workers** (weak scaling: every worker keeps the measured local batch and
   the measured one-core compute time per step; nothing overlaps communication with compute, as in
   recall's step): ring all-reduce sends and receives 2(N−1)/N × the dense bytes per worker; a ring
   all-gather receives (N−1) × one replica's slice bytes; each collective costs 2(N−1) hops of
   `--hop-latency` (default 50 µs, TCP/gRPC on a data-centre network) and the bytes go at
   `--gbit` (default 25 Gbit/s). The 10M-item row assumes the worst case for the table: every id of
   a step distinct (rows = labels + history reads + candidates), with the measured dense part.

Writes benchmarks/distributed.json (atomically) with every number and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYNTHETIC = ["data.source=synthetic", "data.synthetic={num_users: 400, num_items: 300, interactions_per_user: 15, "
             "seed: 0}", "data.user_features=null", "model.dim=16", "model.hidden=[32]", "model.max_history=10",
             "model.history=[{kind: mean}, {kind: recent, window: 3}]", "loss.num_sampled=50",
             "train.batch_size=256", "train.batching=positions", "train.batch_splits=1", "eval.ks=[10,50]",
             "train.steps_per_execution=2"]


def run_training(config: str, sets: list[str], run_dir: Path, workers: int, timeout: float,
                 one_core: bool = False) -> dict:
    """`recall train` in its own process group (killed by pid on overrun) → the chief's history + metrics.
    `one_core`: pinned to CPU 0 (what one worker of the N-worker run has), for its compute time."""
    cmd = [sys.executable, "-m", "recall", "train", config, "--run-dir", str(run_dir)]
    cmd += [a for s in sets for a in ("--set", s)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    log = run_dir.parent / f"{run_dir.name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        pin = (lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if one_core else None
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=pin)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = -1
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if code != 0:  # the logs live in a temporary directory: show their ends before it goes
        tails = [f"--- {p}\n" + p.read_text(errors="replace")[-2000:]
                 for p in [log, *sorted((run_dir / "logs").glob("*.log"))] if p.is_file()]
        raise SystemExit(f"{' '.join(cmd)} failed (exit {code})\n" + "\n".join(tails))
    history = json.loads((run_dir / "history.json").read_text())["epochs"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rates = [e["examples_per_sec"] for e in history if e.get("examples_per_sec")]
    steady = statistics.median(rates[1:]) if len(rates) > 1 else rates[0]
    return {"workers": workers, "cores": 1 if one_core else len(os.sched_getaffinity(0)),
            "wall_s": round(time.perf_counter() - t0, 1), "epoch_rates": rates,
            "examples_per_sec": steady, "steps": metrics["train"]["steps"],
            "test_hr@50": metrics["test"]["filtered"].get("hr@50")}


def probe_bytes(config: str, sets: list[str], steps: int, run_dir: Path) -> dict:
    """Train `steps` steps in this process, recording each step's gradients (see the module docstring)."""
    import tensorflow as tf

    import recall.training.loop as loop
    import recall.training.step as step_module
    from recall.config import load_config

    cfg = load_config(config, sets + ["train.epochs=1", "train.early_stopping=null", "train.steps_per_execution=1"])
    records: dict = {}
    original_update = step_module._update

    def recording_update(loss_fn, variables, optimizer, features, labels, weights, seed, normalizer=None):
        def record(grads):  # `_update`'s reduce hook: sees the step's gradients before the optimizer
            for var, grad in zip(variables, grads):
                if grad is None:
                    continue
                key = var.path if hasattr(var, "path") else var.name
                if key not in records:  # counters made once, on the first trace
                    records[key] = {"shape": [int(d) for d in var.shape], "sparse": isinstance(grad, tf.IndexedSlices),
                                    "rows": tf.Variable(0, dtype=tf.int64, trainable=False),
                                    "distinct": tf.Variable(0, dtype=tf.int64, trainable=False)}
                slot = records[key]
                if slot["sparse"]:
                    slot["rows"].assign_add(tf.size(grad.indices, out_type=tf.int64))
                    slot["distinct"].assign_add(tf.size(tf.unique(grad.indices)[0], out_type=tf.int64))
            return grads

        if "__labels__" not in records:
            records["__labels__"] = {"rows": tf.Variable(0, dtype=tf.int64, trainable=False)}
        rows = tf.size(labels, out_type=tf.int64) if "labelled" not in features else \
            tf.reduce_sum(tf.cast(features["labelled"], tf.int64))  # sequences: the labelled positions
        records["__labels__"]["rows"].assign_add(rows)
        return original_update(loss_fn, variables, optimizer, features, labels, weights, seed, normalizer,
                               reduce=record)

    original_blocks = loop.epoch_blocks

    def first_blocks(*args, **kwargs):
        for i, block in enumerate(original_blocks(*args, **kwargs)):
            if i >= steps:
                return
            yield block

    step_module._update, loop.epoch_blocks = recording_update, first_blocks
    try:
        from recall.pipeline import train

        train(cfg, run_dir)
    finally:
        step_module._update, loop.epoch_blocks = original_update, original_blocks
    labels = int(records.pop("__labels__")["rows"].numpy()) / steps
    out = {"local_batch_rows": labels, "steps": steps, "dense": {}, "sparse": {}}
    for name, r in records.items():
        size = 1
        for d in r["shape"]:
            size *= d
        if r["sparse"]:
            width = size // r["shape"][0]
            rows = int(r["rows"].numpy()) / steps
            out["sparse"][name] = {"shape": r["shape"], "rows": rows, "distinct_rows": int(r["distinct"].numpy()) / steps,
                                   "bytes": rows * (8 + 4 * width)}
        else:
            out["dense"][name] = {"shape": r["shape"], "bytes": 4 * size}
    out["dense_bytes"] = sum(v["bytes"] for v in out["dense"].values())
    out["sparse_bytes"] = sum(v["bytes"] for v in out["sparse"].values())
    out["label_bytes"] = 8 * labels if cfg.loss.sampler in ("in_batch", "mixed") else 0.0
    out["sampler"], out["num_sampled"], out["dim"] = cfg.loss.sampler, cfg.loss.num_sampled, cfg.model.dim
    out["max_history"] = cfg.model.max_history
    return out


def estimate(n: int, step_compute_s: float, local_batch: float, dense: float, sparse: float, labels: float,
             sparse_tensors: int, gbit: float, hop_s: float) -> dict:
    """Weak-scaling estimate for n workers (see the module docstring) → examples/s and communication share."""
    bandwidth = gbit * 1e9 / 8  # bytes/s
    moved = 2 * (n - 1) / n * dense + (n - 1) * (sparse + labels)  # bytes each worker receives per step
    collectives = 1 + 2 * sparse_tensors + (2 if labels else 0)  # dense grads packed into one all-reduce
    comm = moved / bandwidth + collectives * 2 * (n - 1) * hop_s
    step = step_compute_s + comm
    return {"workers": n, "bytes_per_step": moved, "comm_ms": 1e3 * comm, "step_ms": 1e3 * step,
            "examples_per_sec": n * local_batch / step, "comm_share": comm / step}


def measure(args) -> dict:
    """The three training runs and the gradient probe (see the module docstring)."""
    sets = list(SYNTHETIC if args.synthetic else []) + (["data.path=" + args.data] if args.data else []) + args.set
    timing_sets = sets + [f"train.epochs={args.epochs}", "train.early_stopping=null", "train.intra_op_threads=1"]
    with tempfile.TemporaryDirectory(prefix="recall-dist-bench-") as tmp:
        tmp = Path(tmp)
        print(f"probing gradients: {args.probe_steps} steps of {args.config} ...", flush=True)
        probe = probe_bytes(args.config, sets + ["train.intra_op_threads=1"], args.probe_steps, tmp / "probe")
        runs = []
        for workers, one_core in ((1, True), (1, False), (args.workers, False)):
            print(f"training {args.config} on {workers} worker(s){' pinned to one core' if one_core else ''}, "
                  f"{args.epochs} epochs ...", flush=True)
            runs.append(run_training(args.config, timing_sets, tmp / f"w{workers}{'c1' if one_core else ''}", workers,
                                     args.timeout, one_core))
    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d"),
            "config": args.config, "runs": runs, "probe": probe}


def report(measured: dict, gbit: float, hop_s: float, big_items: int) -> dict:
    """Print the three tables from measured runs and probe; → the estimates."""
    core, one, many = measured["runs"]
    probe, workers = measured["probe"], many["workers"]
    print(f"\n{measured['config']}: examples/s (steady: median of epochs 2..), same global batch")
    print("| workers | cores | examples/s | vs 1 process | steps | wall s | test HR@50 |\n|---|---|---|---|---|---|---|")
    for r in measured["runs"]:
        print(f"| {r['workers']} | {r['cores']} | {r['examples_per_sec']:,.0f} | "
              f"{r['examples_per_sec'] / one['examples_per_sec']:.2f}× | {r['steps']} | {r['wall_s']} | "
              f"{r['test_hr@50']:.4f} |")

    b = probe["local_batch_rows"]
    print(f"\nper replica and step at a local batch of {b:.0f} rows ({probe['sampler']}, "
          f"{probe['num_sampled']} sampled): what it hands the strategy")
    print("| gradient | kind | shape | rows per step (distinct) | bytes |\n|---|---|---|---|---|")
    for name, v in probe["sparse"].items():
        print(f"| {name} | IndexedSlices (all-gather) | {v['shape']} | {v['rows']:,.0f} ({v['distinct_rows']:,.0f}) "
              f"| {v['bytes'] / 1e6:.3f} MB |")
    print(f"| {len(probe['dense'])} dense tensors | all-reduce | — | — | {probe['dense_bytes'] / 1e6:.3f} MB |")
    if probe["label_bytes"]:
        print(f"| in-batch labels | all-gather | — | {b:,.0f} | {probe['label_bytes'] / 1e6:.4f} MB |")

    # One worker's compute per step at its local batch: the one-process run pinned to one core (what
    # each worker of the N-worker run has here). The N-worker run's extra time per step is what its
    # collectives cost on loopback.
    step_s = b / core["examples_per_sec"]
    many_step_s = workers * b / many["examples_per_sec"]
    overhead_s = max(many_step_s - step_s, 0.0)
    print(f"\nmeasured: {1e3 * step_s:.1f} ms of compute per step of {b:.0f} examples on one core; the "
          f"{workers}-worker step takes {1e3 * many_step_s:.1f} ms ({1e3 * overhead_s:+.1f} ms: "
          f"the collectives over loopback gRPC)")
    # Worst case for a huge catalogue: every table read of a step a distinct row (labels, history reads,
    # candidates: rows_big ids + rows of D floats), and a bias row per label and candidate.
    rows_big = b * (1 + probe["max_history"]) + probe["num_sampled"]
    big_sparse = rows_big * (8 + 4 * probe["dim"]) + (b + probe["num_sampled"]) * 12
    cases = {"ML-1M shape (measured rows)": probe["sparse_bytes"], f"{big_items:,} items (all ids distinct)": big_sparse}
    estimates = {}
    print(f"\nestimate: {gbit:g} Gbit/s, compute {1e3 * step_s:.1f} ms per step of {b:.0f} examples per worker "
          f"(measured), no overlap; latency either {hop_s * 1e6:.0f} µs per ring hop (a data-centre network) or "
          f"this machine's loopback overhead ({1e3 * overhead_s:.1f} ms per step at {workers} workers) × (N−1)")
    print("| case | latency | workers | MB in per worker-step | comm ms | step ms | examples/s | comm share |\n"
          "|---|---|---|---|---|---|---|---|")
    for case, sparse in cases.items():
        for latency, per_hop in (("per hop", hop_s), ("loopback", None)):
            for n in (workers, 8, 32):
                e = estimate(n, step_s, b, probe["dense_bytes"], sparse, probe["label_bytes"], len(probe["sparse"]),
                             gbit, per_hop if per_hop is not None else 0.0)
                if per_hop is None:  # the measured per-step overhead, growing with the ring's N−1 hops
                    extra = overhead_s * (n - 1) / max(workers - 1, 1)
                    e = {**e, "comm_ms": e["comm_ms"] + 1e3 * extra, "step_ms": e["step_ms"] + 1e3 * extra}
                    e["examples_per_sec"] = n * b / (e["step_ms"] / 1e3)
                    e["comm_share"] = e["comm_ms"] / e["step_ms"]
                estimates.setdefault(f"{case}, {latency}", []).append(e)
                print(f"| {case} | {latency} | {n} | {e['bytes_per_step'] / 1e6:.2f} | {e['comm_ms']:.2f} | "
                      f"{e['step_ms']:.2f} | {e['examples_per_sec']:,.0f} | {100 * e['comm_share']:.0f} % |")
    return {"estimates": estimates, "assumptions": {"gbit": gbit, "hop_latency_s": hop_s, "step_compute_s": step_s,
                                                    "n_worker_step_s": many_step_s}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/ml-1m.yaml")
    ap.add_argument("--data", default=None, help="data.path override (default: the config's)")
    ap.add_argument("--set", action="append", default=[], help="extra config override (repeatable)")
    ap.add_argument("--synthetic", action="store_true", help="a tiny generated log instead (smoke test)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--probe-steps", type=int, default=200)
    ap.add_argument("--gbit", type=float, default=25.0)
    ap.add_argument("--hop-latency", type=float, default=50e-6, help="seconds per ring hop of a collective")
    ap.add_argument("--big-items", type=int, default=10_000_000)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--from-json", default=None, help="reprint the tables and estimates of an earlier --out file")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "distributed.json"))
    args = ap.parse_args()

    measured = json.loads(Path(args.from_json).read_text()) if args.from_json else measure(args)
    derived = report(measured, args.gbit, args.hop_latency, args.big_items)
    from recall.io import write_json

    write_json(Path(args.out), {**{k: measured[k] for k in ("command", "date", "config", "runs", "probe")}, **derived})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
