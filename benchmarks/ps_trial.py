"""Trial: item tables larger than one worker on TensorFlow's ParameterServerStrategy (issue 15).

Starts a local cluster on 127.0.0.1 (free ports): this process is the chief (the coordinator), 2
workers and 2 parameter servers are `tf.distribute.Server`s in subprocesses, killed by pid at the
end (also on failure, and by a watchdog after --timeout seconds). Under
`tf.distribute.ParameterServerStrategy` with a variable partitioner it tries, stage by stage, and
records what works and the exact error of what does not:

    keras   recall's ItemTower/UserTower (Keras 3 layers) built in the strategy's scope, a step
            scheduled with `ClusterCoordinator.schedule` through recall's loss (make_loss_fn +
            RetrievalTask) and recall's LazyAdam;
    plain   the same shape of step on plain `tf.Variable`s in a `tf.Module`: an item table
            [N, D] and bias [N] (ShardedVariables over the 2 PS), a 2-layer dense head; the user
            query is the mean of the history rows (`tf.nn.embedding_lookup` on the ShardedVariable);
            the loss is recall's RetrievalTask (tf.nn.sampled_softmax_loss, one stateless
            log-uniform candidate set per step, shared by the batch); the gradients are taken with
            respect to the shards (IndexedSlices with shard-local ids) and recall's LazyAdam
            updates each shard row-wise — once as recall builds its slots, once with the slots
            colocated with their shard (`strategy.extended.colocate_vars_with`, a subclass here);
    check   K steps scheduled one at a time (join after each) against the same K steps in this
            process on unsharded tf.Variables: every variable and Adam slot within --tolerance;
    speed   steps/s: the single-process step, PSS with one step in flight, PSS asynchronous
            (2 workers, every step scheduled, one join);
    ckpt    tf.train.Checkpoint of the sharded model restored into the unsharded one; the time to
            gather the whole table to the coordinator (what an export for faiss would read).

Every input is a pure function of (seed, step): histories, labels (log-uniform ids) and candidates.

    nice -n 19 python benchmarks/ps_trial.py                       # N = 1M, D = 32 (defaults)
    nice -n 19 python benchmarks/ps_trial.py --items 20000 --steps 5 --out /tmp/ps.json   # smoke

Writes a JSON of every stage (--out, default benchmarks/ps_trial.json) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CHILDREN: list[subprocess.Popen] = []


# ----------------------------------------------------------------------------- cluster processes

def free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def serve(job: str, index: int, cluster: dict, threads: int) -> None:
    """Subprocess entry: one `tf.distribute.Server` of the cluster, until killed."""
    import tensorflow as tf

    # inter-op threads stay TF's default: with 1, a function whose Recv waits on another device's Send
    # can block the only thread (the first version of this trial hung that way)
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads)
    server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job, task_index=index,
                                  protocol="grpc", config=config, start=True)
    server.join()


def start_servers(cluster: dict, threads: int, log_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    for job in ("ps", "worker"):
        for i in range(len(cluster[job])):
            log = open(log_dir / f"{job}-{i}.log", "w")  # noqa: SIM115 (the child keeps it)
            _CHILDREN.append(subprocess.Popen(
                ["nice", "-n", "19", sys.executable, __file__, "--serve", job, str(i),
                 "--cluster", json.dumps(cluster), "--threads", str(threads)],
                env=env, stdout=log, stderr=subprocess.STDOUT))


def wait_listening(addresses: list[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for address in addresses:
        host, port = address.rsplit(":", 1)
        while True:
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1.0):
                break
            if any(p.poll() is not None for p in _CHILDREN):
                raise RuntimeError("a server process exited before the cluster came up (see its log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not listening after {seconds:.0f} s")
            time.sleep(0.2)


def kill_children() -> None:
    for p in _CHILDREN:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
    for p in _CHILDREN:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(10)


# ----------------------------------------------------------------------------- the trial

def first_line(err: BaseException) -> str:
    """The error's own message: TF's "in user code:" errors end with it, after the traceback lines."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines and lines[0] == "in user code:":
        lines = [line for line in lines[1:] if not line.startswith(("File ", "return ", "retval_"))][-1:]
    text = " ".join(lines[:2])
    return (text if text.startswith(f"{type(err).__name__}:") else f"{type(err).__name__}: {text}")[:400]


class Stages:
    """Records each stage's outcome (ok / failed with the first line of its error) and prints it."""

    def __init__(self):
        self.rows: list[dict] = []
        self.current = "start"

    def run(self, name: str, fn, *args, **kwargs):
        self.current = name
        t0 = time.perf_counter()
        try:
            out = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 (every failure is the trial's result)
            row = {"stage": name, "ok": False, "error": first_line(err), "seconds": time.perf_counter() - t0}
            print(f"[FAIL] {name}: {row['error']}", flush=True)
            if os.environ.get("PS_TRIAL_TRACEBACK"):
                traceback.print_exc()
            self.rows.append(row)
            return None
        detail = out if isinstance(out, dict) else {"result": out}
        row = {"stage": name, "ok": True, **detail, "seconds": time.perf_counter() - t0}
        print(f"[ ok ] {name}: {json.dumps(detail, default=str)[:600]}", flush=True)
        self.rows.append(row)
        return out if out is not None else True


def inputs(seed, step, n: int, batch: int, history: int):
    """(history ids int64 [B, M], labels int64 [B]) of step `step`: log-uniform ids, a function of (seed, step)."""
    import math

    import tensorflow as tf

    s = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
    u = tf.random.stateless_uniform([batch, history + 1], s, dtype=tf.float64)
    ids = tf.clip_by_value(tf.cast(tf.floor(tf.exp(u * math.log(n + 1.0))), tf.int64) - 1, 0, n - 1)
    return ids[:, :history], ids[:, history]


def shards_of(v) -> list:
    """The component tf.Variables of a ShardedVariable, or [v]."""
    from tensorflow.python.distribute.sharded_variable import ShardedVariable  # no public name

    return list(v.variables) if isinstance(v, ShardedVariable) else [v]


def describe(v) -> str:
    parts = shards_of(v)
    kind = type(v).__name__
    where = [f"{tuple(p.shape)}@{p.device.split('/device')[0]}" for p in parts]
    return f"{kind}[{', '.join(where)}]"


def build_plain(args, init):
    """The plain model: a tf.Module of tf.Variables (ShardedVariables under the strategy's scope)."""
    import tensorflow as tf

    class Items(tf.Module):
        def __init__(self):
            super().__init__(name="items")
            self.table = tf.Variable(init["table"], name="table")  # [N, D]
            self.bias = tf.Variable(init["bias"], name="bias")  # [N]

        def weights_and_biases(self):  # what RetrievalTask reads
            return self.table, self.bias

    class Head(tf.Module):
        def __init__(self):
            super().__init__(name="head")
            self.w1 = tf.Variable(init["w1"], name="w1")  # [D, H]
            self.b1 = tf.Variable(init["b1"], name="b1")  # [H]
            self.w2 = tf.Variable(init["w2"], name="w2")  # [H, D]

        def __call__(self, pooled):
            return tf.nn.relu(pooled @ self.w1 + self.b1) @ self.w2

    items, head = Items(), Head()
    return items, head


def plain_init(args):
    import numpy as np

    rng = np.random.default_rng(args.seed)
    n, d, h = args.items, args.dim, args.hidden
    return {"table": (rng.standard_normal((n, d)) / d**0.5).astype(np.float32),
            "bias": np.zeros(n, np.float32),
            "w1": (rng.standard_normal((d, h)) / d**0.5).astype(np.float32),
            "b1": np.zeros(h, np.float32),
            "w2": (rng.standard_normal((h, d)) / h**0.5).astype(np.float32)}


def make_plain_step(args, items, head, optimizer, variables):
    """step(k int64) → loss: lookup, RetrievalTask loss, grads w.r.t. `variables` (the shards), LazyAdam."""
    import tensorflow as tf

    from recall.training.samplers import make_sampler
    from recall.training.task import RetrievalTask

    sampler = make_sampler("log_uniform", args.sampled, args.items, stateless=True)
    task = RetrievalTask(items, "sampled_softmax", sampler)

    @tf.function
    def step(k):
        history, labels = inputs(args.seed, k, args.items, args.batch, args.history)
        with tf.GradientTape() as tape:
            rows = tf.nn.embedding_lookup(items.table, history)  # [B, M, D]
            queries = head(tf.reduce_mean(rows, axis=1))  # [B, D]
            loss = task(queries, labels, seed=tf.stack([tf.constant(args.seed + 1, tf.int64), k]))
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    return step, task


def colocated_lazy_adam(strategy):
    """recall's LazyAdam whose slots are created next to their variable (one PS, unpartitioned)."""
    from recall.training.optim import LazyAdam

    class ColocatedLazyAdam(LazyAdam):
        def _slot_placement(self, var):
            return strategy.extended.colocate_vars_with(var)

    return ColocatedLazyAdam


def on_ps_lazy_adam(strategy):
    """ColocatedLazyAdam whose row-wise update of a shard runs on the shard's PS: the worker sends the
    aggregated gradient rows; gathering the slots, Adam's arithmetic and the scatters stay on the PS."""
    import tensorflow as tf

    class OnPsLazyAdam(colocated_lazy_adam(strategy)):
        def _sparse_update(self, var, slots, rows, grad_rows, hyper) -> None:
            with tf.device(var.device):
                super()._sparse_update(var, slots, rows, grad_rows, hyper)

    return OnPsLazyAdam


# ----------------------------------------------------------------------------- stages

def keras_stages(st: Stages, args, strategy, coordinator) -> None:
    """recall's Keras 3 towers, loss and LazyAdam under the strategy's scope."""
    import tensorflow as tf

    from recall.model import ItemTower, UserTower
    from recall.training.optim import LazyAdam
    from recall.training.samplers import make_sampler
    from recall.training.step import _update, make_loss_fn, trainable_variables
    from recall.training.task import RetrievalTask

    n = args.keras_items
    state = {}

    def build_towers():
        with strategy.scope():
            items = ItemTower(n, args.dim, use_bias=True, name="item_tower")
            users = UserTower(n, args.dim, hidden=[args.hidden], max_history=args.history,
                              history=[{"kind": "mean"}], example_age=False, shared_items=items, name="user_tower")
        state.update(items=items, users=users)
        return {"embeddings._value": describe(items.embeddings._value), "bias._value": describe(items.bias._value),
                "output.kernel._value": describe(users.out.kernel._value) if users.out.built else "unbuilt"}

    if st.run("keras: ItemTower/UserTower built in the PSS scope", build_towers) is None:
        return
    items, users = state["items"], state["users"]
    sampler = make_sampler("log_uniform", args.sampled, n, stateless=True)
    task = RetrievalTask(items, "sampled_softmax", sampler)
    loss_fn = make_loss_fn(users, task)

    def features_of(k):
        history, labels = inputs(args.seed, k, n, args.batch, args.history)
        return ({"history": tf.cast(history, tf.int32), "age": tf.zeros([args.batch]),
                 "user_features": tf.zeros([args.batch, 0], tf.int32)}, labels)

    def forward():
        @tf.function
        def fwd(k):
            features, labels = features_of(k)
            return loss_fn(features, labels, seed=tf.stack([tf.constant(1, tf.int64), k]))

        with strategy.scope():  # the Dense layers build (create their kernels) on the first call
            loss = coordinator.schedule(fwd, args=(tf.constant(0, tf.int64),))
            coordinator.join()
        return {"loss": float(loss.fetch()),
                "output.kernel._value": describe(users.out.kernel._value)}

    def lookup_graph():
        @tf.function
        def lookup(ids):
            return items(ids)

        graph = lookup.get_concrete_function(tf.TensorSpec([None], tf.int64)).graph
        ops = [op.type for op in graph.get_operations()]
        return {"ops": sorted(set(ops)), "whole_table_concat": "ConcatV2" in ops}

    st.run("keras: ItemTower(ids) traced in the PSS scope (which ops read the table)", lookup_graph)
    st.run("keras: forward pass + recall loss scheduled on a worker", forward)  # the stages below run anyway
    variables = trainable_variables(users, items)

    def gradient_types():
        @tf.function
        def grads(k):
            features, labels = features_of(k)
            with tf.GradientTape() as tape:
                loss = loss_fn(features, labels, seed=tf.stack([tf.constant(1, tf.int64), k]))
            g = tape.gradient(loss, variables)
            return [tf.constant(type(x).__name__ if x is not None else "None") for x in g]

        out = coordinator.schedule(grads, args=(tf.constant(0, tf.int64),))
        coordinator.join()
        return {v.path: t.decode() for v, t in zip(variables, out.fetch())}

    st.run("keras: gradient types w.r.t. the Keras variables", gradient_types)

    def lazy_adam_build():
        with strategy.scope():
            opt = LazyAdam(1e-3)
            opt.build(variables)
        state["opt"] = opt
        return {"slots": {k: [describe(s) for s in v] for k, v in opt.slots.items()}}

    if st.run("keras: recall LazyAdam.build(tower variables) in the PSS scope", lazy_adam_build) is None:
        return

    def keras_step():
        opt = state["opt"]

        @tf.function
        def train(k):
            features, labels = features_of(k)
            return _update(loss_fn, variables, opt, features, labels, None, tf.stack([tf.constant(1, tf.int64), k]))

        loss = coordinator.schedule(train, args=(tf.constant(0, tf.int64),))
        coordinator.join()
        return {"loss": float(loss.fetch())}

    st.run("keras: recall _update step (LazyAdam) scheduled on a worker", keras_step)


def plain_stages(st: Stages, args, strategy, coordinator, results: dict) -> None:
    import numpy as np
    import tensorflow as tf

    from recall.training.optim import LazyAdam

    def sparse_read_order():
        # tf.gather(v, ids) calls v.sparse_read(ids); ShardedVariable's concatenates each shard's rows
        from tensorflow.python.distribute.sharded_variable import ShardedVariable

        sv = ShardedVariable([tf.Variable([[0.0], [1.0]]), tf.Variable([[2.0], [3.0]])])
        ids = tf.constant([3, 0, 2, 1])
        got = {"tf.gather": tf.gather(sv, ids).numpy().ravel().tolist(),
               "tf.nn.embedding_lookup": tf.nn.embedding_lookup(sv, ids).numpy().ravel().tolist(),
               "expected": [3.0, 0.0, 2.0, 1.0]}
        if got["tf.gather"] != got["expected"]:
            raise AssertionError(f"tf.gather(ShardedVariable, [3, 0, 2, 1]) returned rows {got['tf.gather']} "
                                 f"(embedding_lookup: {got['tf.nn.embedding_lookup']})")
        return got

    st.run("ShardedVariable: tf.gather / sparse_read keep the order of the ids", sparse_read_order)

    def ids_per_step():
        from recall.training.samplers import make_sampler

        out = {}
        for n in (args.items, 100_000_000):
            sampler = make_sampler("log_uniform", args.sampled, n, stateless=True)
            counts = []
            for k in range(5):
                history, labels = inputs(args.seed, k, n, args.batch, args.history)
                sampled, _, _ = sampler(tf.reshape(labels, [-1, 1]), tf.constant([args.seed + 1, k], tf.int64))
                counts.append([int(tf.size(tf.unique(tf.reshape(history, [-1]))[0])),
                               int(tf.size(tf.unique(tf.concat([labels, sampled], 0))[0])),
                               int(tf.size(tf.unique(tf.concat([tf.reshape(history, [-1]), labels, sampled], 0))[0]))])
            mean = np.mean(counts, axis=0)
            out[f"N={n}"] = {"history_distinct": float(mean[0]), "labels+candidates_distinct": float(mean[1]),
                             "all_touched_rows": float(mean[2])}
        results["ids_per_step"] = out
        return out

    st.run(f"ids per step (B={args.batch}, M={args.history}, S={args.sampled}, log-uniform)", ids_per_step)

    init = plain_init(args)

    # -- the single-process reference: unsharded tf.Variables, the same step, in this process
    ref = {}

    def reference():
        items, head = build_plain(args, init)
        variables = [items.table, items.bias, head.w1, head.b1, head.w2]
        opt = LazyAdam(args.learning_rate)
        opt.build(variables)
        step, _ = make_plain_step(args, items, head, opt, variables)
        losses = [float(step(tf.constant(k, tf.int64))) for k in range(args.steps)]
        # the state after the K steps of the check (the timing below runs more steps on these variables)
        after = {"table": items.table.numpy(), "bias": items.bias.numpy(), "w1": head.w1.numpy(),
                 "b1": head.b1.numpy(), "w2": head.w2.numpy(),
                 "m(table)": opt.slots["m"][0].numpy(), "v(table)": opt.slots["v"][0].numpy()}
        ref.update(after=after, losses=losses)
        t0 = time.perf_counter()
        for k in range(args.steps, args.steps + args.speed_steps):
            step(tf.constant(k, tf.int64))
        rate = args.speed_steps / (time.perf_counter() - t0)
        results["single_process_steps_per_s"] = rate
        return {"losses": [round(x, 5) for x in losses[:3]], "steps_per_s": round(rate, 2)}

    if st.run("plain: single-process reference (unsharded tf.Variables, LazyAdam)", reference) is None:
        return

    for colocate in ("default", "colocated", "on_ps"):
        tag = {"default": "slots as recall builds them", "colocated": "colocated slots",
               "on_ps": "colocated slots, update on the PS"}[colocate]
        state = {}

        def build(colocate=colocate, state=state):
            with strategy.scope():
                items, head = build_plain(args, init)
                opt = {"default": LazyAdam, "colocated": colocated_lazy_adam(strategy),
                       "on_ps": on_ps_lazy_adam(strategy)}[colocate](args.learning_rate)
                variables = [*shards_of(items.table), *shards_of(items.bias), *shards_of(head.w1),
                             *shards_of(head.b1), *shards_of(head.w2)]
                opt.build(variables)
            state.update(items=items, head=head, opt=opt, variables=variables)
            return {"table": describe(items.table), "bias": describe(items.bias), "w1": describe(head.w1),
                    "slot m of table/part_0": describe(opt.slots["m"][0]),
                    "slot v of table/part_1": describe(opt.slots["v"][1])}

        if st.run(f"plain [{tag}]: ShardedVariable model + LazyAdam built in the PSS scope", build) is None:
            continue
        items, head, opt, variables = state["items"], state["head"], state["opt"], state["variables"]
        holder = {}

        def trace(items=items, head=head, opt=opt, variables=variables, holder=holder):
            step, _ = make_plain_step(args, items, head, opt, variables)
            holder["step"] = step
            with tf.GradientTape() as tape:  # gradient structure, eagerly on the coordinator (no update)
                history, labels = inputs(args.seed, 0, args.items, args.batch, args.history)
                rows = tf.nn.embedding_lookup(items.table, history)
                loss = tf.reduce_sum(head(tf.reduce_mean(rows, axis=1)))
            grads = tape.gradient(loss, variables)
            return {v.name: type(g).__name__ for v, g in zip(variables, grads)}

        if st.run(f"plain [{tag}]: gradient types w.r.t. the shards", trace) is None:
            continue

        def check(opt=opt, items=items, head=head, holder=holder, colocate=colocate):
            step = holder["step"]
            losses = []
            for k in range(args.steps):  # one step in flight: the updates in the reference's order
                losses.append(coordinator.schedule(step, args=(tf.constant(k, tf.int64),)))
                coordinator.join()
            losses = [float(x.fetch()) for x in losses]
            mine = {"table": items.table, "bias": items.bias, "w1": head.w1, "b1": head.b1, "w2": head.w2}
            worst = {}
            for name, var in mine.items():
                value = np.concatenate([p.numpy() for p in shards_of(var)])
                worst[name] = float(np.max(np.abs(value - ref["after"][name])))
            for slot in ("m", "v"):  # one slot per shard here (table/part_0, table/part_1), one table there
                value = np.concatenate([opt.slots[slot][0].numpy(), opt.slots[slot][1].numpy()])
                worst[f"{slot}(table)"] = float(np.max(np.abs(value - ref["after"][f"{slot}(table)"])))
            worst["losses"] = float(np.max(np.abs(np.array(losses) - np.array(ref["losses"]))))
            results[f"check_{colocate}"] = worst
            ok = max(worst.values()) <= args.tolerance
            out = {"steps": args.steps, "max_abs_diff": worst, "within_tolerance": ok}
            if not ok:
                raise AssertionError(f"sharded run differs from the single process by {max(worst.values()):.3g} "
                                     f"> {args.tolerance} ({json.dumps(worst)})")
            return out

        st.run(f"plain [{tag}]: {args.steps} steps (one in flight) == single process", check)

        def speed(holder=holder, colocate=colocate):
            step = holder["step"]
            first = {"default": 10_000, "colocated": 20_000, "on_ps": 30_000}[colocate]
            t0 = time.perf_counter()
            for k in range(args.speed_steps):
                coordinator.schedule(step, args=(tf.constant(first + k, tf.int64),))
                coordinator.join()
            serial = args.speed_steps / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for k in range(args.speed_steps):
                coordinator.schedule(step, args=(tf.constant(first + args.speed_steps + k, tf.int64),))
            coordinator.join()
            parallel = args.speed_steps / (time.perf_counter() - t0)
            results[f"pss_{colocate}_serial_steps_per_s"] = serial
            results[f"pss_{colocate}_async_steps_per_s"] = parallel
            return {"one_in_flight_steps_per_s": round(serial, 2), "async_2_workers_steps_per_s": round(parallel, 2)}

        st.run(f"plain [{tag}]: steps/s", speed)
        if colocate == "on_ps":
            results["_colocated"] = state

    state = results.pop("_colocated", None)
    if state is None:
        return
    import tempfile

    def checkpoint():
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = tf.train.Checkpoint(table=state["items"].table, bias=state["items"].bias)
            t0 = time.perf_counter()
            path = ckpt.write(os.path.join(tmp, "sharded"))
            write_s = time.perf_counter() - t0
            reader = tf.train.load_checkpoint(path)
            shapes = {k: v for k, v in reader.get_variable_to_shape_map().items() if "table" in k or "bias" in k}
            target = tf.Variable(tf.zeros([args.items, args.dim]))
            t0 = time.perf_counter()
            tf.train.Checkpoint(table=target).read(path).expect_partial()
            read_s = time.perf_counter() - t0
            full = np.concatenate([p.numpy() for p in shards_of(state["items"].table)])
            diff = float(np.max(np.abs(target.numpy() - full)))
        return {"saved_shapes": shapes, "write_s": round(write_s, 3), "restore_into_unsharded_s": round(read_s, 3),
                "restored_max_abs_diff": diff}

    st.run("plain: checkpoint of the sharded table restored into an unsharded tf.Variable", checkpoint)

    def gather():
        t0 = time.perf_counter()
        full = np.concatenate([p.numpy() for p in shards_of(state["items"].table)])
        seconds = time.perf_counter() - t0
        results["gather_table_s"] = seconds
        return {"shape": list(full.shape), "seconds": round(seconds, 3),
                "MB_per_s": round(full.nbytes / 1e6 / seconds, 1)}

    st.run("plain: gather the whole table to the coordinator (export's read)", gather)


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000, help="N, rows of the item table")
    p.add_argument("--keras-items", type=int, default=100_000, help="N of the Keras towers' trial")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--history", type=int, default=20)
    p.add_argument("--sampled", type=int, default=1000)
    p.add_argument("--learning-rate", type=float, default=0.01)
    p.add_argument("--steps", type=int, default=20, help="K steps of the correctness check")
    p.add_argument("--speed-steps", type=int, default=40)
    p.add_argument("--tolerance", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partitioner", choices=["min_size", "fixed"], default="min_size",
                   help="MinSizePartitioner(256 KiB, max_shards=2) or FixedShardsPartitioner(2)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--timeout", type=float, default=1500, help="watchdog: kill everything after this many s")
    p.add_argument("--skip-keras", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ps_trial.json")
    p.add_argument("--serve", nargs=2, metavar=("JOB", "INDEX"), help=argparse.SUPPRESS)
    p.add_argument("--cluster", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.serve:
        serve(args.serve[0], int(args.serve[1]), json.loads(args.cluster), args.threads)
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    st = Stages()

    def watchdog():
        print(f"watchdog: {args.timeout:.0f} s passed during stage {st.current!r}; killing the cluster",
              file=sys.stderr, flush=True)
        kill_children()
        os._exit(3)

    timer = threading.Timer(args.timeout, watchdog)
    timer.daemon = True
    timer.start()
    results: dict = {}
    log_dir = Path(os.environ.get("PS_TRIAL_LOGS", "/tmp/ps_trial_logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        ports = free_ports(5)
        cluster = {"chief": [f"127.0.0.1:{ports[0]}"],
                   "worker": [f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[2]}"],
                   "ps": [f"127.0.0.1:{ports[3]}", f"127.0.0.1:{ports[4]}"]}

        def up():
            start_servers(cluster, args.threads, log_dir)
            wait_listening(cluster["worker"] + cluster["ps"], 120)
            resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
                tf.train.ClusterSpec(cluster), task_type="chief", task_id=0, rpc_layer="grpc")
            partitioners = tf.distribute.experimental.partitioners
            partitioner = (partitioners.MinSizePartitioner(min_shard_bytes=256 << 10, max_shards=2)
                           if args.partitioner == "min_size" else partitioners.FixedShardsPartitioner(2))
            strategy = tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
            coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
            return {"cluster": cluster, "pids": [c.pid for c in _CHILDREN],
                    "strategy": strategy, "coordinator": coordinator}

        cl = st.run("cluster: 1 chief (here), 2 workers, 2 PS on 127.0.0.1", up)
        if cl is not None:
            st.rows[-1].pop("strategy")
            st.rows[-1].pop("coordinator")
            if not args.skip_keras:
                keras_stages(st, args, cl["strategy"], cl["coordinator"])
            plain_stages(st, args, cl["strategy"], cl["coordinator"], results)
    finally:
        kill_children()
        timer.cancel()
    results.pop("_colocated", None)
    record = {"command": " ".join(["python benchmarks/ps_trial.py", *(sys.argv[1:] if argv is None else argv)]),
              "date": time.strftime("%Y-%m-%d", time.localtime(started)),
              "seconds": round(time.time() - started, 1),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                       if k not in ("serve", "cluster")},
              "tensorflow": __import__("tensorflow").__version__, "stages": st.rows, "figures": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(args.out)
    print("\n| stage | ok | detail |\n|---|---|---|")
    for row in st.rows:
        detail = row.get("error") if not row["ok"] else json.dumps(
            {k: v for k, v in row.items() if k not in ("stage", "ok", "seconds")}, default=str)[:200]
        print(f"| {row['stage']} | {'yes' if row['ok'] else 'NO'} | {detail} |")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The servers are gone: TF's exit handlers would try to reach them (one gRPC error per function).
    os._exit(code)
