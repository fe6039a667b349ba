"""Throughput benchmark: training speed, catalogue scaling, input pipeline and evaluation time, one table.

    python benchmarks/throughput.py                        # everything except 10M items and the ANN part
    python benchmarks/throughput.py --big --ann            # + 10M items, + IVF/HNSW over 1M items × 100k queries
    python benchmarks/throughput.py --only scaling --sizes 10000,1000000 --optimizers adam,lazy_adam
    python benchmarks/throughput.py --quick                # small sizes, few steps (a smoke test, ~1 min)

Sections (`--only ml1m,scaling,input,eval`):

- **ml1m** — examples/s of the real training loop: `recall.train` for `--epochs` epochs (early
  stopping off), each case in a fresh process, the rate of each epoch taken from history.json
  (training time only: validation and checkpoints excluded), steady state = median of epochs 2..;
  plus the test HR@10/50 the run reached (a bigger batch must keep the quality) and the per-step
  cost of the loop's input work (in-graph gathering, timed alone) as a share of the step. Cases:
  (a) the DeepMatch shape: configs/ml-1m.yaml with dim 32, MLP [64], 255 shared log-uniform
  negatives, history 50, no GRU, no recency or user features, one thread per op
  (`train.intra_op_threads=1`: its ops are small) and each batch as two halves run side by side
  (`train.batch_splits=2`), at each `--ml1m-batches` size;
  (b) the shipped configs/ml-1m.yaml and (c) configs/ml-1m-fast.yaml (minGRU, batch 1024 in two
  parallel halves), each with its own batch size and `model.compute_dtype: auto` (bfloat16 matmuls
  on CPUs with AVX512-BF16 or AMX); with `--float32` also (b) and (c) in float32. Once per optimiser
  in `--optimizers`.
- **scaling** — the median step time and the process's peak RSS at 10k, 100k, 1M items (and 10M
  with `--big`), each size in `--repeats` fresh processes run in interleaved rounds (step times vary
  between processes more than between sizes: the median over processes is reported, and the ratio
  to the smallest size within each round shows the spread; the ratio of each process's fastest tenth
  of steps, median over processes, is printed beside it); steps run `train.steps_per_execution` per compiled call (`make_train_block`, as in
  the training loop), `--steps` calls timed after
  `--warmup`, each size × optimiser in a fresh process (so peaks
  don't accumulate): the DeepMatch towers (dim 32, MLP [64], history 50, item bias, example age),
  the log-uniform sampler with 255 shared negatives and the compiled train step (one thread per op
  as in the DeepMatch-shape training run, `--intra-op-threads`), on synthetic batches
  whose history and label ids are log-uniform over the catalogue (the popularity shape the sampler
  assumes). Same batch, negatives and dimension at every size: the step should not grow with N.
  `rss_model` is the RSS after the model and optimiser slots are built, `peak_rss` the maximum.
- **input** — generation time of `--interactions` synthetic interactions (`recall.data.synthetic`:
  synthesize → leave-last-out split → make_examples), then the rate of the loop's input work alone
  (`ExampleBatcher` gathering K-batch blocks in-graph, as the training step does; batches/s and
  examples/s, history 50, batch `--batch`), in a fresh process (peak RSS too).
- **eval** — the full filtered ML-1M evaluation (test queries, exact Flat index, every K): the towers
  of `--run-dir` when given, else untrained towers of configs/ml-1m.yaml (timing only). With `--ann`:
  IVF and HNSW indexes over `--ann-items` clustered random vectors (dim 32, a Gaussian mixture — random
  embeddings with some structure, as trained ones have, 1 centre per 1,000 items) searched with
  `--ann-queries` queries: build time, queries/s, speed-up over exact search, and index recall@100
  against exact search on the first `--ann-exact-queries` queries (exact search over all 100k
  queries alone would take ~10 minutes on 2 cores).

Without the ML-1M files the ml1m and eval parts say so and are skipped. Results go to --out (JSON,
written atomically after every section) with the machine, the versions and the settings. Speed
numbers are measurements on a possibly shared machine (the load average is recorded).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTIONS = ("ml1m", "scaling", "input", "eval")
ML1M = ROOT.parent / "shared" / "data" / "ml-1m"
# The DeepMatch YoutubeDNN shape from the speed issue, as overrides of configs/ml-1m.yaml.
DEEPMATCH = ["model.dim=32", "model.hidden=[64]", "loss.num_sampled=255", "loss.sampler=log_uniform",
             "model.max_history=50", "model.history=[{kind: mean}]", "model.tie_embeddings=false",
             "model.dropout=0", "train.lr_schedule=constant", "data.user_features=null",
             "train.intra_op_threads=1", "train.batch_splits=2"]  # two halves side by side: 183–200k → 215–238k ex/s by hand (RESULTS.md)


# --- helpers -------------------------------------------------------------------------------------

def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _proc_kib_field(path: str, field: str) -> int:
    """Bytes of a "Field:  N kB" line of a /proc file of this process (0 if unknown)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def current_rss_bytes() -> int:
    return _proc_kib_field("/proc/self/status", "VmRSS")


def huge_page_bytes() -> int:
    """How much of this process's memory sits on transparent huge pages now (0 if unknown)."""
    return _proc_kib_field("/proc/self/smaps_rollup", "AnonHugePages")


def gib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**30:.2f} GiB"


def size_label(n: int) -> str:
    for unit, div in (("M", 10**6), ("k", 10**3)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def machine() -> dict:
    try:
        from benchmarks.samplers import machine as _machine

        return _machine()
    except Exception:  # noqa: BLE001 — a description of the machine is nice to have, not required
        import platform

        return {"platform": platform.platform(), "cores": os.cpu_count(),
                "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def _huge_pages_setting() -> str:
    from recall import hugepages

    if hugepages.TUNABLE in hugepages.environ().get("GLIBC_TUNABLES", "").split(":"):
        return f"on ({hugepages.TUNABLE}, THP {hugepages.thp_mode()})"
    return f"off (THP mode {hugepages.thp_mode()}, {hugepages.ENV_SWITCH}={os.environ.get(hugepages.ENV_SWITCH, 'unset')})"


def run_worker(task: dict, timeout: float | None = None) -> dict:
    """Run `task` in a fresh Python process (this file, --worker); its JSON result."""
    from recall.hugepages import environ

    # As `recall train` runs (huge pages for the big tables: recall/hugepages.py), unless RECALL_HUGE_PAGES=0.
    env = {**environ(), "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(task)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
        return {"error": f"{reason}: " + " | ".join(tail)}
    return json.loads(lines[-1][len("RESULT "):])


# --- ml1m: examples/s of the real step + input pipeline ---------------------------------------------

def ml1m_rate(config: Path, overrides: list[str], optimizer: str, batch: int | None, epochs: int,
              run_dir: str) -> dict:
    """Examples/s of the real training loop (`recall.train`: in-graph batch gathering, K-step blocks,
    progress bar, checkpoints) on the config's data; steady state = the median of epochs 2.. (epoch 1
    includes tracing). Validation and checkpoint time are not training time. Also: test quality of
    the run, and what the in-graph input (gathering a batch's histories and labels) costs per step."""
    import statistics

    import recall

    extra = [f"train.optimizer={optimizer}", f"train.epochs={epochs}", "train.early_stopping=null"]
    extra += [f"train.batch_size={batch}"] if batch else []
    cfg = recall.load_config(Path(config), overrides + extra)
    t0 = time.perf_counter()
    metrics = recall.train(cfg, run_dir)
    wall = time.perf_counter() - t0
    epochs_done = json.loads((Path(run_dir) / "history.json").read_text())["epochs"]
    rates = [e["examples_per_sec"] for e in epochs_done]
    steady = statistics.median(rates[1:] if len(rates) > 1 else rates)
    tc = cfg.train
    from recall.pipeline import prepare_data
    from recall.training.inputs import ExampleBatcher, SequenceBatcher, epoch_order

    data = prepare_data(cfg)
    if tc.batching == "sequences":  # a batch is batch_size / sequence_length chunks (some partly empty)
        from recall.data.sequences import make_chunks

        chunks = make_chunks(data.examples, tc.sequence_length)
        units, per_batch = len(chunks), tc.batch_size // tc.sequence_length
        batcher = SequenceBatcher(data.split.train_items, data.split.train_indptr, data.examples, chunks,
                                  data.features.codes, cfg.model.max_history, tc.sequence_length)
    else:
        units, per_batch = len(data.examples), tc.batch_size
        batcher = ExampleBatcher(data.split.train_items, data.examples, data.features.codes, cfg.model.max_history)
    examples_per_step = len(data.examples) / -(-units // per_batch)
    step_ms = 1000 * examples_per_step / steady
    input_ms = gather_ms_per_batch(batcher, epoch_order(units, cfg.seed, 0), per_batch, tc.steps_per_execution)
    test = metrics["test"]["filtered"]
    return {"optimizer": optimizer, "batch_size": tc.batch_size, "steps_per_execution": tc.steps_per_execution,
            "batching": tc.batching, "examples_per_step": round(examples_per_step, 1),
            "dim": cfg.model.dim, "hidden": cfg.model.hidden, "num_sampled": cfg.loss.num_sampled,
            "items": metrics["data"]["items"], "epochs": len(rates), "epoch_examples_per_sec": rates,
            "examples_per_sec": round(steady, 1), "ms_per_step": round(step_ms, 2),
            "input_ms_per_step": round(input_ms, 3), "input_share": round(input_ms / step_ms, 4),
            "train_seconds": metrics["train"]["seconds"], "wall_seconds": round(wall, 1),
            "test_hr@10": test["hr@10"], "test_hr@50": test["hr@50"], "test_hr@200": test["hr@200"],
            "peak_rss": peak_rss_bytes()}


def gather_ms_per_batch(batcher, order, batch: int, k: int) -> float:
    """ms per batch of the loop's input work alone: `ExampleBatcher` gathering histories, features and
    labels of K-batch blocks in-graph, exactly as `make_train_block` does before each update."""
    import tensorflow as tf

    @tf.function
    def gather_block(idx):
        total = tf.constant(0.0)
        for j in tf.range(tf.shape(idx)[0]):
            features, labels, _ = batcher(idx[j])
            items = features["history"] if "history" in features else features["items"]
            total += tf.reduce_sum(tf.cast(items[:, -1], tf.float32)) + tf.cast(tf.reshape(labels, [-1])[0], tf.float32)
        return total

    blocks = [tf.constant(order[i * k * batch:(i + 1) * k * batch].reshape(k, batch))
              for i in range(min(8, len(order) // (k * batch)))]
    gather_block(blocks[0]).numpy()  # trace
    t0 = time.perf_counter()
    for _ in range(5):
        for b in blocks:
            gather_block(b).numpy()
    return 1000 * (time.perf_counter() - t0) / (5 * len(blocks) * k)


# --- scaling: step time and memory vs catalogue size (worker) --------------------------------------

def scaling_worker(num_items: int, optimizer: str, batch: int, num_sampled: int, dim: int, hidden: list[int],
                   max_history: int, steps: int, warmup: int, intra_op_threads: int = 0, seed: int = 0) -> dict:
    import numpy as np
    import tensorflow as tf

    # Before TF runs anything (it fixes its thread pools then); 0 = TF's default (one per core).
    tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)

    from recall.config import Config
    from recall.pipeline import build_model
    from recall.training.samplers import make_sampler
    from recall.training.schedule import make_optimizer
    from recall.training.step import make_loss_fn, make_train_block, trainable_variables
    from recall.training.task import RetrievalTask

    tf.random.set_seed(seed)
    cfg = Config.model_validate({"model": {"dim": dim, "hidden": hidden, "max_history": max_history},
                                 "loss": {"kind": "sampled_softmax", "sampler": "log_uniform",
                                          "num_sampled": num_sampled},
                                 "train": {"optimizer": optimizer, "batch_size": batch}})
    rss0 = current_rss_bytes()
    t0 = time.perf_counter()
    user, items = build_model(cfg, num_items, [])
    sampler = make_sampler("log_uniform", num_sampled, num_items, True, seed=seed, stateless=True)
    variables = trainable_variables(user, items)
    opt = make_optimizer(optimizer, cfg.train.learning_rate)
    opt.build(variables)
    build_seconds = time.perf_counter() - t0
    rss_model = current_rss_bytes()

    # Log-uniform ids over the catalogue (Q(id) = log((id+2)/(id+1)) / log(N+1)), random history lengths.
    rng = np.random.default_rng(seed)

    def log_uniform(shape):
        return np.minimum(np.floor(np.exp(rng.random(shape) * np.log(num_items + 1))) - 1, num_items - 1).astype(
            np.int64)

    hist = log_uniform((4, batch, max_history)).astype(np.int32)
    length = rng.integers(1, max_history + 1, (4, batch))
    hist[np.arange(max_history)[None, None, :] < (max_history - length)[..., None]] = -1  # right-aligned
    hist, age = tf.constant(hist), tf.constant(rng.random((4, batch)).astype(np.float32))
    labels = tf.constant(log_uniform((4, batch)))

    def batch_number(idx):  # stands in for ExampleBatcher: idx [1] picks one of the 4 synthetic batches
        b = idx[0]
        return ({"history": hist[b], "age": age[b], "user_features": tf.zeros([batch, 0], tf.int32)}, labels[b],
                tf.ones([batch]))

    k = cfg.train.steps_per_execution  # steps per call, as the training loop runs them
    block = make_train_block(batch_number, make_loss_fn(user, RetrievalTask(items, "sampled_softmax", sampler, True)),
                             variables, opt, seed)
    idx = tf.constant(np.arange(k, dtype=np.int64)[:, None] % 4)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = float(block(idx, tf.constant(i * k, tf.int64))[-1])
        if i >= warmup:
            times.append((time.perf_counter() - t) / k)
    times.sort()
    return {"items": num_items, "optimizer": optimizer, "batch_size": batch, "num_sampled": num_sampled, "dim": dim,
            "intra_op_threads": intra_op_threads, "steps": steps, "warmup": warmup,
            "ms_per_step": round(1000 * times[len(times) // 2], 2),
            "ms_p10": round(1000 * times[len(times) // 10], 2), "ms_p90": round(1000 * times[(9 * len(times)) // 10], 2),
            "build_seconds": round(build_seconds, 2), "rss_model": rss_model - rss0, "rss_baseline": rss0,
            "peak_rss": peak_rss_bytes(), "huge_pages": huge_page_bytes(), "final_loss": round(loss, 4)}


# --- input: example generation + ExampleBatcher rate (worker) --------------------------------------

def input_worker(interactions: int, batch: int, max_history: int, seed: int = 0) -> dict:
    import numpy as np

    from recall.data.examples import make_examples
    from recall.data.split import leave_last_out
    from recall.data.synthetic import synthesize

    per_user = 50.0
    num_users = max(10, int(interactions / per_user))
    num_items = max(100, interactions // 100)
    t0 = time.perf_counter()
    df = synthesize(num_users=num_users, num_items=num_items, interactions_per_user=per_user, seed=seed)
    t1 = time.perf_counter()
    split = leave_last_out(df)
    t2 = time.perf_counter()
    examples = make_examples(split, max_history)
    t3 = time.perf_counter()
    rows = len(df)
    del df

    import tensorflow as tf  # noqa: F401  (imported after generation: its time is not counted above)

    from recall.training.inputs import ExampleBatcher, epoch_order

    batcher = ExampleBatcher(split.train_items, examples, np.zeros((split.num_users, 0), np.int32), max_history)
    ms = gather_ms_per_batch(batcher, epoch_order(len(examples), seed, 0), batch, 16)
    return {"interactions": rows, "users": num_users, "items": num_items, "examples": len(examples),
            "synthesize_seconds": round(t1 - t0, 2), "split_seconds": round(t2 - t1, 2),
            "examples_seconds": round(t3 - t2, 2), "generation_seconds": round(t3 - t0, 2),
            "batch_size": batch, "max_history": max_history,
            "batches_per_sec": round(1000 / ms, 1), "examples_per_sec": round(1000 * batch / ms, 1),
            "peak_rss": peak_rss_bytes()}


# --- eval: full ML-1M evaluation, ANN index quality/speed -------------------------------------------

def eval_ml1m(config: Path, overrides: list[str], run_dir: str | None) -> dict:
    from recall.evaluation.model_eval import evaluate_towers

    if run_dir:
        from recall.pipeline import load_run

        t0 = time.perf_counter()
        cfg, data, user, items = load_run(run_dir)
        source = f"trained towers of {run_dir}"
    else:
        import recall
        from recall.pipeline import build_model, prepare_data

        t0 = time.perf_counter()
        cfg = recall.load_config(config, overrides)
        data = prepare_data(cfg)
        user, items = build_model(cfg, data.split.num_items, data.features.sizes)
        source = "untrained towers of configs/ml-1m.yaml (timing only)"
    prep = time.perf_counter() - t0
    times, result = [], None
    for _ in range(2):  # the first call also traces the query function
        t = time.perf_counter()
        result = evaluate_towers(user, items, data.test, data.features.codes, cfg.eval.ks, "Flat", None, None,
                                 cfg.eval.batch_size, cfg.eval.query_age, item_counts=data.split.item_counts)
        times.append(time.perf_counter() - t)
    return {"source": source, "queries": len(data.test.targets), "items": data.split.num_items, "ks": cfg.eval.ks,
            "load_seconds": round(prep, 2), "first_seconds": round(times[0], 3), "seconds": round(times[1], 3),
            "queries_per_sec": round(len(data.test.targets) / times[1], 1),
            "filtered_hr@50": round(result["filtered"]["hr@50"], 4)}


def ann_bench(num_items: int, num_queries: int, dim: int, k: int, factories: list[tuple[str, dict]],
              exact_queries: int = 10_000, seed: int = 0) -> list[dict]:
    """Exact (Flat) vs approximate indexes over clustered random vectors: recall@k against exact
    search (on the first `exact_queries` queries), build time, queries/s and speed-up over Flat."""
    import faiss
    import numpy as np

    from recall.evaluation.index_quality import overlap_at_k
    from recall.index import build_index, search

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, num_items // 1000), dim)).astype(np.float32)

    def mixture(n):
        return (centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)

    items, queries = mixture(num_items), mixture(num_queries)
    # Exact search over every query would dominate the run (1M × 100k: ~10 min on 2 cores); the
    # reference top-k and the exact rate come from the first `exact_queries` queries.
    n_exact = min(exact_queries, num_queries)
    t = time.perf_counter()
    exact = build_index(items, "Flat")
    exact_ids, _ = search(exact, queries[:n_exact], k)
    exact_seconds = time.perf_counter() - t
    exact_qps = n_exact / exact_seconds
    rows = [{"factory": "Flat", "items": num_items, "queries": n_exact, "dim": dim, "k": k,
             "build_seconds": 0.0, "search_seconds": round(exact_seconds, 2),
             "queries_per_sec": round(exact_qps, 1), f"recall@{k}": 1.0, "speedup": 1.0,
             "threads": faiss.omp_get_max_threads()}]
    for factory, params in factories:
        t = time.perf_counter()
        index = build_index(items, factory, nprobe=params.get("nprobe"), ef_search=params.get("ef_search"))
        built = time.perf_counter() - t
        t = time.perf_counter()
        ids, _ = search(index, queries, k)
        seconds = time.perf_counter() - t
        rows.append({"factory": factory, **params, "items": num_items, "queries": num_queries, "dim": dim, "k": k,
                     "build_seconds": round(built, 2), "search_seconds": round(seconds, 2),
                     "queries_per_sec": round(num_queries / seconds, 1),
                     f"recall@{k}": round(overlap_at_k(ids[:n_exact], exact_ids, k), 4), "recall_queries": n_exact,
                     "speedup": round(num_queries / seconds / exact_qps, 2), "threads": faiss.omp_get_max_threads()})
        del index
    return rows


# --- the table ---------------------------------------------------------------------------------------

def table_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(section, case, result, memory) rows of everything measured so far."""
    out = []
    for r in results.get("ml1m", []):
        if "error" in r:
            out.append(("ml1m", r["name"], "failed: " + r["error"][:60], ""))
            continue
        out.append(("ml1m", f"{r['name']}, {r['optimizer']}, batch {r['batch_size']}",
                    f"{r['examples_per_sec']:,.0f} ex/s ({r['ms_per_step']:.1f} ms/step; input "
                    f"{100 * r['input_share']:.1f}% of it); test HR@10/50 {r['test_hr@10']:.3f}/{r['test_hr@50']:.3f} "
                    f"after {r['epochs']} epochs", f"peak {gib(r['peak_rss'])}"))
    r = results.get("tfrs")
    if r:
        out.append(("ml1m", r.get("system", "TFRS"), "failed: " + r["error"][:60] if "error" in r else
                    f"{r['examples_per_sec']:,.0f} ex/s (batch {r.get('batch', 1024)}, same run)", ""))
    for r in results.get("scaling", []):
        case = f"{size_label(r['items'])} items, {r['optimizer']}"
        if "error" in r:
            out.append(("scaling", case, "failed: " + r["error"][:60], ""))
            continue
        each = ", ".join(f"{m:.1f}" for m in r.get("ms_per_process", [r["ms_per_step"]]))
        out.append(("scaling", case, f"{r['ms_per_step']:.1f} ms/step (median of processes: {each})",
                    f"peak {gib(r['peak_rss'])} (model+slots {gib(r['rss_model'])})"))
    for opt, ratios in results.get("scaling_ratio", {}).items():
        for size, ratio in ratios.items():
            rounds = ", ".join(f"{x:.2f}" for x in ratio["per_round"])
            out.append(("scaling", f"{opt}: step time {size} / {ratio['vs']}",
                        f"{ratio['ratio']:.2f}× (per round of processes: {rounds}; fastest tenth of steps: "
                        f"{ratio['ratio_p10']:.2f}×)", ""))
    r = results.get("input")
    if r:
        if "error" in r:
            out.append(("input", "generation + ExampleBatcher", "failed: " + r["error"][:60], ""))
        else:
            out.append(("input", f"generate {r['interactions']:,} interactions → {r['examples']:,} examples",
                        f"{r['generation_seconds']:.1f} s (synth {r['synthesize_seconds']:.1f}, split "
                        f"{r['split_seconds']:.1f}, examples {r['examples_seconds']:.1f})", f"peak {gib(r['peak_rss'])}"))
            out.append(("input", f"in-graph batch gathering alone, batch {r['batch_size']}, history {r['max_history']}",
                        f"{r['batches_per_sec']:,.1f} batches/s = {r['examples_per_sec']:,.0f} ex/s", ""))
    r = results.get("eval")
    if r:
        if "error" in r:
            out.append(("eval", "ML-1M", "failed: " + r["error"][:60], ""))
        else:
            out.append(("eval", f"ML-1M full filtered eval, {r['queries']:,} queries × {r['items']:,} items",
                        f"{r['seconds']:.2f} s ({r['queries_per_sec']:,.0f} queries/s; first call "
                        f"{r['first_seconds']:.2f} s)", ""))
    for r in results.get("ann", []):
        if "error" in r:
            out.append(("eval", "ANN", "failed: " + r["error"][:60], ""))
            continue
        knobs = ", ".join(f"{k} {r[k]}" for k in ("nprobe", "ef_search") if k in r)
        case = f"{r['factory']}{' (' + knobs + ')' if knobs else ''}, {size_label(r['items'])} × {size_label(r['queries'])} q"
        k = r["k"]
        out.append(("eval", case, f"recall@{k} {r[f'recall@{k}']:.3f}, {r['queries_per_sec']:,.0f} q/s, "
                    f"×{r['speedup']:.1f} vs exact, build {r['build_seconds']:.1f} s", ""))
    return out


def print_table(results: dict) -> None:
    rows = table_rows(results)
    if not rows:
        return
    w = [max(len(r[i]) for r in rows + [("section", "case", "result", "memory")]) for i in range(4)]
    print()
    print(f"{'section':<{w[0]}}  {'case':<{w[1]}}  {'result':<{w[2]}}  memory")
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}".rstrip())


def aggregate_scaling(runs: list[dict]) -> list[dict]:
    """One row per (size, optimiser): the median step time over its processes (and each process's),
    the largest peak RSS; a size whose every process failed keeps the error."""
    import statistics

    out = []
    for key in dict.fromkeys((r["items"], r["optimizer"]) for r in runs):
        rows = [r for r in runs if (r["items"], r["optimizer"]) == key]
        ok = [r for r in rows if "error" not in r]
        if not ok:
            out.append({**rows[-1]})
            continue
        ms = [r["ms_per_step"] for r in ok]
        out.append({**ok[-1], "ms_per_step": round(statistics.median(ms), 2), "ms_per_process": ms,
                    "peak_rss": max(r["peak_rss"] for r in ok), "rss_model": max(r["rss_model"] for r in ok)})
    return out


def scaling_ratios(runs: list[dict]) -> dict:
    """Per optimiser and size: median step time at that size / at the smallest size, and the same
    ratio within each round of processes (their spread says how far to trust it); `ratio_p10` is the
    ratio of the fastest tenth of each process's steps (median over processes), which a process
    slowed down by its neighbours on the host moves less."""
    import statistics

    out = {}
    for opt in dict.fromkeys(r["optimizer"] for r in runs):
        ok = [r for r in runs if r["optimizer"] == opt and "error" not in r]
        sizes = sorted({r["items"] for r in ok})
        if len(sizes) < 2:
            continue
        median = {n: statistics.median(r["ms_per_step"] for r in ok if r["items"] == n) for n in sizes}
        fast = {n: statistics.median(r["ms_p10"] for r in ok if r["items"] == n) for n in sizes}
        by_round = {(r["repeat"], r["items"]): r["ms_per_step"] for r in ok}
        rounds = sorted({r["repeat"] for r in ok})
        out[opt] = {size_label(n): {
            "vs": size_label(sizes[0]), "ratio": round(median[n] / median[sizes[0]], 3),
            "ratio_p10": round(fast[n] / fast[sizes[0]], 3),
            "per_round": [round(by_round[k, n] / by_round[k, sizes[0]], 3) for k in rounds
                          if (k, n) in by_round and (k, sizes[0]) in by_round]} for n in sizes[1:]}
    return out


# --- main --------------------------------------------------------------------------------------------

def parse_factories(text: str) -> list[tuple[str, dict]]:
    """'IVF1024,Flat@nprobe=16;HNSW32@ef_search=128' → [(factory, {knob: value})]."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        factory, _, knobs = part.partition("@")
        params = {}
        for kv in filter(None, knobs.split("+")):
            key, _, value = kv.partition("=")
            params[key.strip()] = int(value)
        out.append((factory.strip(), params))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)} (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and few steps (a smoke test of the script, not a measurement)")
    ap.add_argument("--batch", type=int, default=1024, help="batch size of the DeepMatch shape (default 1024)")
    ap.add_argument("--optimizers", default="adam,lazy_adam", help="train.optimizer values to compare")
    ap.add_argument("--config", default=str(ROOT / "configs" / "ml-1m.yaml"))
    ap.add_argument("--transformer-config", default=str(ROOT / "configs" / "ml-1m-transformer.yaml"))
    ap.add_argument("--modes", default="positions,sequences", help="ml1m: train.batching modes per config")
    ap.add_argument("--no-tfrs", action="store_true", help="ml1m: skip TFRS (benchmarks/peers/) in the same run")
    ap.add_argument("--fast-config", default=str(ROOT / "configs" / "ml-1m-fast.yaml"),
                    help="ml1m: the fast variant (minGRU, split batches), run after the shipped config")
    ap.add_argument("--data", default=str(ML1M / "ratings_pos4.parquet"), help="ML-1M positives (Parquet)")
    ap.add_argument("--users", default=str(ML1M / "users.parquet"), help="ML-1M user table (shipped config)")
    ap.add_argument("--steps", type=int, help="scaling: timed calls of 8 steps (default 20; --quick 3)")
    ap.add_argument("--epochs", type=int, help="ml1m: epochs of each training run (default 3; --quick 1)")
    ap.add_argument("--ml1m-batches", default="1024,4096",
                    help="ml1m: DeepMatch-shape batch sizes to run (default 1024,4096)")
    ap.add_argument("--warmup", type=int, default=2, help="scaling: untimed calls first (default 2)")
    ap.add_argument("--intra-op-threads", type=int, default=1,
                    help="scaling: threads per op, as train.intra_op_threads (default 1, as the DeepMatch-shape "
                         "training run; 0 = TF's default, one per core)")
    ap.add_argument("--repeats", type=int, help="scaling: fresh processes per size, interleaved; the median is "
                    "reported (default 3; --quick 1)")
    ap.add_argument("--sizes", help="scaling: catalogue sizes (default 10000,100000,1000000; --quick 10000,100000)")
    ap.add_argument("--big", action="store_true", help="scaling: add 10,000,000 items")
    ap.add_argument("--float32", action="store_true",
                    help="ml1m: also the shipped and fast configs with model.compute_dtype=float32 (their auto "
                         "setting is bfloat16 where the CPU has AVX512-BF16 or AMX)")
    ap.add_argument("--interactions", type=int, help="input: synthetic interactions (default 10M; --quick 1M)")
    ap.add_argument("--run-dir", help="eval: a trained run directory (default: untrained towers, timing only)")
    ap.add_argument("--ann", action="store_true", help="eval: also IVF/HNSW over --ann-items × --ann-queries")
    ap.add_argument("--ann-items", type=int, help="default 1,000,000 (--quick 100,000)")
    ap.add_argument("--ann-queries", type=int, help="default 100,000 (--quick 10,000)")
    ap.add_argument("--ann-exact-queries", type=int, default=10_000,
                    help="queries searched exactly: the recall reference and the exact rate (default 10,000)")
    ap.add_argument("--ann-factories",
                    help="';'-separated factory[@knob=value+...] (default 'IVF4096,Flat@nprobe=32;"
                         "HNSW32@ef_search=256'; --quick 'IVF256,Flat@nprobe=16;HNSW32@ef_search=128')")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per worker process (default 1800)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "throughput.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:  # a measurement in a fresh process: print its result as one JSON line
        task = json.loads(args.worker)
        kind = task.pop("kind")
        result = {"scaling": scaling_worker, "input": input_worker, "ml1m": ml1m_rate}[kind](**task)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    only = [s.strip() for s in (args.only or ",".join(SECTIONS)).split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    from recall.config import TrainConfig

    allowed = TrainConfig.model_fields["optimizer"].annotation.__args__
    bad = [o for o in optimizers if o not in allowed]
    if bad:
        ap.error(f"--optimizers: unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    q = args.quick
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
        [10_000, 100_000] if q else [10_000, 100_000, 1_000_000])
    if args.big and 10_000_000 not in sizes:
        sizes.append(10_000_000)
    settings = {
        "quick": q, "batch": args.batch, "optimizers": optimizers, "deepmatch_overrides": DEEPMATCH,
        "ml1m_epochs": args.epochs or (1 if q else 3),
        "ml1m_batches": [int(b) for b in args.ml1m_batches.split(",") if b.strip()],
        "scaling_sizes": sizes, "scaling_steps": args.steps or (3 if q else 20), "scaling_warmup": args.warmup,
        "scaling_intra_op_threads": args.intra_op_threads,
        "scaling_repeats": args.repeats or (1 if q else 3),
        "interactions": args.interactions or (1_000_000 if q else 10_000_000),
        "ann": args.ann, "ann_items": args.ann_items or (100_000 if q else 1_000_000),
        "ann_queries": args.ann_queries or (10_000 if q else 100_000), "ann_exact_queries": args.ann_exact_queries,
        "ann_factories": args.ann_factories or ("IVF256,Flat@nprobe=16;HNSW32@ef_search=128" if q
                                                else "IVF4096,Flat@nprobe=32;HNSW32@ef_search=256"),
        "run_dir": args.run_dir,
        # what the workers run with (recall/hugepages.py): the tunable, or why not
        "huge_pages": _huge_pages_setting(),
    }
    from recall.io import write_json

    out = Path(args.out).resolve()
    report = {"benchmark": "throughput", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "settings": settings, "results": {}}
    results = report["results"]
    data, users = Path(args.data).expanduser().resolve(), Path(args.users).expanduser().resolve()
    have_ml1m = data.is_file()
    common = [f"data.path={json.dumps(str(data))}"]
    if users.is_file():
        common.append(f"data.user_features.path={json.dumps(str(users))}")
    else:
        common.append("data.user_features=null")

    def save():
        write_json(out, report)

    if "ml1m" in only:
        if not have_ml1m:
            print(f"ml1m skipped: {data} not found (pass --data)")
        else:
            results["ml1m"] = []
            import tempfile

            cases = [("DeepMatch shape", args.config, DEEPMATCH, b) for b in settings["ml1m_batches"]]
            # Each config in both batching modes (train.batching), side by side.
            for label, config in (("shipped ml-1m.yaml", args.config), ("ml-1m-fast.yaml", args.fast_config),
                                  ("ml-1m-transformer.yaml", args.transformer_config)):
                for mode in args.modes.split(","):
                    cases.append((f"{label}, {mode}", config, [f"train.batching={mode}"], None))
            if args.float32:  # the configs' `compute_dtype: auto` is bfloat16 on CPUs with AVX512-BF16/AMX
                f32 = ["model.compute_dtype=float32"]
                cases.append(("shipped, float32", args.config, f32, None))
                cases.append(("ml-1m-fast.yaml, float32", args.fast_config, f32, None))
            with tempfile.TemporaryDirectory(prefix="recall-throughput-") as tmp:
                for i, (name, config, overrides, batch) in enumerate(cases):
                    for opt in optimizers:
                        print(f"ml1m: {name}, batch {batch or 'of the config'}, {opt} ...", flush=True)
                        row = run_worker({"kind": "ml1m", "config": config, "overrides": common + overrides,
                                          "optimizer": opt, "batch": batch, "epochs": settings["ml1m_epochs"],
                                          "run_dir": str(Path(tmp) / f"run{i}-{opt}")}, args.timeout)
                        results["ml1m"].append({"name": name, "optimizer": opt, **row})
                        save()
            if not args.no_tfrs:  # TensorFlow Recommenders in its own venv, in this same run
                sys.path.insert(0, str(ROOT / "benchmarks"))
                from peers.run_peer import tfrs_rate

                print("ml1m: TFRS two-tower, batch 1024 ...", flush=True)
                results["tfrs"] = tfrs_rate(data, epochs=settings["ml1m_epochs"], timeout=args.timeout) or {
                    "error": "not run (see the warning above: bash benchmarks/peers/setup_tfrs.sh)"}
                save()

    if "scaling" in only:
        # Step times differ from process to process by more than the effect measured (memory placement
        # of the big tables): every size runs in `--repeats` fresh processes, interleaved (10k, 1M, 10k,
        # 1M, ...), and the table reports the median over them.
        results["scaling_runs"] = []
        for rep in range(settings["scaling_repeats"]):
            for n in sizes:
                for opt in optimizers:
                    print(f"scaling: {size_label(n)} items, {opt} (process {rep + 1}/{settings['scaling_repeats']}) ...",
                          flush=True)
                    row = run_worker({"kind": "scaling", "num_items": n, "optimizer": opt, "batch": args.batch,
                                      "num_sampled": 255, "dim": 32, "hidden": [64], "max_history": 50,
                                      "steps": settings["scaling_steps"], "warmup": args.warmup,
                                      "intra_op_threads": args.intra_op_threads}, args.timeout)
                    results["scaling_runs"].append({"items": n, "optimizer": opt, "repeat": rep, **row})
                    results["scaling"] = aggregate_scaling(results["scaling_runs"])
                    save()
        results["scaling_ratio"] = scaling_ratios(results["scaling_runs"])
        save()

    if "input" in only:
        print(f"input: {settings['interactions']:,} interactions ...", flush=True)
        results["input"] = run_worker({"kind": "input", "interactions": settings["interactions"],
                                       "batch": args.batch, "max_history": 50},
                                      args.timeout)
        save()

    if "eval" in only:
        if args.run_dir or have_ml1m:
            print("eval: ML-1M ...", flush=True)
            try:
                results["eval"] = eval_ml1m(Path(args.config), common, args.run_dir)
            except Exception as e:  # noqa: BLE001
                results["eval"] = {"error": f"{type(e).__name__}: {e}"}
            save()
        else:
            print(f"eval (ML-1M) skipped: {data} not found and no --run-dir")
        if args.ann:
            print(f"eval: ANN over {settings['ann_items']:,} items × {settings['ann_queries']:,} queries ...",
                  flush=True)
            try:
                results["ann"] = ann_bench(settings["ann_items"], settings["ann_queries"], 32, 100,
                                           parse_factories(settings["ann_factories"]), args.ann_exact_queries)
            except Exception as e:  # noqa: BLE001
                results["ann"] = [{"error": f"{type(e).__name__}: {e}"}]
            save()

    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    save()
    print_table(results)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
