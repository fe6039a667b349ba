"""The training loop, top to bottom: restore → for each epoch: steps → validate → checkpoint → stop?

Part of the training entry point (it reads the Config). State that a resumed run needs — model,
optimizer slots, global step, epoch, batches done in the epoch, best validation metric, epochs
without improvement, the streaming sampler's estimate, dropout seed states — lives in one
`tf.train.Checkpoint`; the epoch's example order is a pure function of (seed, epoch), so resuming
mid-epoch replays the same order and skips what was done. Steps run `train.steps_per_execution` at
a time inside one compiled call (training/step.py); a step's negatives are keyed on its global step
(stateless samplers), which with `train.deterministic` (op determinism) makes a resumed run
bit-identical to an uninterrupted one (tests/test_resume.py kills a run with SIGKILL to check it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from recall.config import Config, best_metric
from recall.data.sequences import make_chunks
from recall.errors import RecallError
from recall.evaluation.model_eval import evaluate_towers
from recall.io import write_json
from recall.training.inputs import ExampleBatcher, SequenceBatcher, epoch_blocks, epoch_order
from recall.training.sampler_stats import sampler_report
from recall.training.samplers import make_sampler
from recall.training.schedule import make_optimizer
from recall.training.step import make_loss_fn, make_train_block, trainable_variables
from recall.training.task import RetrievalTask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Worker:
    """This process in a multi-worker job: the strategy, its index in the cluster (0 = the chief) and
    the run directory all workers share (where the chief's checkpoints are)."""

    strategy: object
    index: int
    shared_dir: Path
    collective: object | None = None  # data.shard_by_user: the job's collectives (distributed/collect.py)

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    @property
    def sharded(self) -> bool:
        """Does this worker hold only its own users' examples (data.shard_by_user)?"""
        return self.collective is not None


def fit(cfg: Config, data, user, items, run_dir: Path, warm=None, on_epoch=None, worker=None) -> dict:
    """Train `user`/`items` in place; leaves the best-validation weights in them. Returns a summary.

    `warm` (recall/warm_start.py WarmStart): on a fresh run directory, the parent's state is moved
    into the towers, optimizer and sampler first, and those starting weights are validated as epoch 0
    (they are the run's first "best"). A run directory with a checkpoint resumes from it instead.
    `on_epoch(epoch, user, items, seconds)`: called after each validation (epoch 0 included) with the
    run's training seconds so far (benchmarks/warm_start.py evaluates test there).

    `worker` (several workers, `Worker`): the towers were built in `worker.strategy.scope()`; the
    optimizer is built there too and every step runs through `strategy.run` on this worker's slice of
    the global batch (training/step.py). Every worker resumes from the chief's latest checkpoint
    (`worker.shared_dir`: a file system all workers see) and validates the same weights, so all make
    the same early-stopping decision; a non-chief's `run_dir` is a scratch directory its checkpoints,
    history and TensorBoard go to (TF's multi-worker guide: every worker saves, only the chief's count).

    A sharded worker (`worker.sharded`, data.shard_by_user) holds only its users' examples: its epoch
    order is a permutation of them keyed on (seed, epoch, worker), cut into its part of every global
    batch (`shard_batch`); every worker runs the same number of steps (`shard_steps`), and one whose
    examples run out first wraps around to the start of its order (see `shard_epoch_order` for why).
    Validation evaluates its own users and sums the counts over the workers (evaluation/protocol.py).
    """
    from recall.model.towers import _backing

    tc, lc = cfg.train, cfg.loss
    if tc.deterministic:
        # Bitwise-reproducible kernels; every random draw below is keyed on (seed, step) or checkpointed.
        tf.config.experimental.enable_op_determinism()
    tf.random.set_seed(cfg.seed)
    num_items = data.split.num_items
    sampler = None
    steps_per_block = tc.steps_per_execution
    if lc.kind != "full_softmax":
        # Negatives come from the stateless samplers (training/stateless.py), keyed on (seed, step):
        # TF's sampler ops keep their stream inside the op, and the K unrolled copies of the step in
        # a block (training/step.py) would be K ops with the same seed drawing the same negatives.
        # learned_unigram has no stateless twin (its counts live in TF's op): one step per call.
        learned = lc.uses_learned_unigram
        if learned and steps_per_block > 1:
            log.info("learned_unigram: one step per compiled call (train.steps_per_execution=%d ignored)",
                     steps_per_block)
            steps_per_block = 1
        # NEG is NCE without the log Q term: its sampler reports expected counts of 1.
        sampler = make_sampler(lc.sampler, lc.num_sampled, num_items, lc.unique, data.split.item_counts,
                               lc.distortion, lc.logq_correction and lc.kind != "neg", seed=cfg.seed,
                               mixed_base=lc.mixed_base, streaming=lc.frequency == "streaming",
                               batch_size=tc.batch_size, streaming_alpha=lc.streaming_alpha,
                               stateless=not learned)
    variables = trainable_variables(user, items)
    strategy = None if worker is None else worker.strategy
    chief = worker is None or worker.is_chief
    # The unit of a batch: an example (positions), or a chunk of up to sequence_length consecutive
    # examples of one user that the tower encodes in one causal pass (sequences).
    if tc.batching == "sequences":
        if not user.exact_causal:
            # Chunks of up to 8 (the default recipe's): top-50 overlap 0.977 with serving (benchmarks/gru_skew.py).
            (log.info if tc.sequence_length <= 8 else log.warning)(
                "train.batching=sequences with a GRU in model.history: it runs along each chunk, so the k-th "
                "position of a chunk sees k more items than evaluation and serving give it (README 'Two batching "
                "modes'); keep train.sequence_length small (≤ 8), or use positions")
        chunks = make_chunks(data.examples, tc.sequence_length)
        unit_examples = chunks.count.astype(np.int64)  # examples per chunk
        per_batch = tc.batch_size // tc.sequence_length
        batcher = SequenceBatcher(data.split.train_items, data.split.train_indptr, data.examples, chunks,
                                  data.features.codes, user.context, tc.sequence_length)
    else:
        unit_examples, per_batch = None, tc.batch_size
        batcher = ExampleBatcher(data.split.train_items, data.examples, data.features.codes, cfg.model.max_history)
    n = len(unit_examples) if unit_examples is not None else len(data.examples)
    sharded = worker is not None and worker.sharded
    total_examples = len(data.examples)
    if sharded:
        per_batch = shard_batch(per_batch, worker.collective.num_workers, worker.index, tc)
        batches_per_epoch, total_examples = shard_steps(n, len(data.examples), per_batch, worker.collective)
    else:
        batches_per_epoch = math.ceil(n / per_batch)
    planned_steps = tc.epochs * batches_per_epoch
    # A warm start carries the parent optimizer's step counter; the schedule starts at this run's step 0.
    step_offset = tf.Variable(0, dtype=tf.int64, name="warm_start_step") if cfg.warm_start is not None else None
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        optimizer = make_optimizer(tc.optimizer, tc.learning_rate, tc.lr_schedule, planned_steps, tc.warmup_steps,
                                   step_offset=step_offset)
        optimizer.build(variables)
    global_rows = None
    if strategy is not None:
        from recall.distributed.replicas import gather_global_rows as global_rows
    task = RetrievalTask(items, lc.kind, sampler, lc.remove_accidental_hits, global_rows=global_rows)
    loss_fn = make_loss_fn(user, task, tc.batching, tc.batch_splits)
    train_block = make_train_block(batcher, loss_fn, variables, optimizer, cfg.seed, strategy,
                                   replica=0 if worker is None else worker.index, sharded=sharded)

    # --- state and checkpoints ---------------------------------------------------------------
    state = {
        "step": tf.Variable(0, dtype=tf.int64, name="step"),
        "epoch": tf.Variable(0, dtype=tf.int64, name="epoch"),  # epochs fully done
        "epoch_batches": tf.Variable(0, dtype=tf.int64, name="epoch_batches"),  # batches done in current epoch
        "best": tf.Variable(-1.0, dtype=tf.float64, name="best"),
        "bad_epochs": tf.Variable(0, dtype=tf.int64, name="bad_epochs"),
        "train_seconds": tf.Variable(0.0, dtype=tf.float64, name="train_seconds"),
        "examples_seen": tf.Variable(0, dtype=tf.int64, name="examples_seen"),
        # The epoch's running (exponentially averaged) loss, NaN before its first step, and its sum.
        "running_loss": tf.Variable(math.nan, dtype=tf.float64, name="running_loss"),
        "epoch_loss_sum": tf.Variable(0.0, dtype=tf.float64, name="epoch_loss_sum"),
    }
    # A stateful sampler (streaming frequency estimate) is part of the state too, and so are the
    # dropout layers' seed-generator states, which tf.train.Checkpoint does not reach through Keras 3.
    extra = {"sampler": sampler} if isinstance(sampler, tf.Module) else {}
    seed_states = [_backing(v) for v in user.variables if "seed_generator" in v.path]
    if seed_states:
        extra["seed_states"] = seed_states
    if step_offset is not None:
        extra["warm_start_step"] = step_offset
    ckpt = tf.train.Checkpoint(user=user, items=items, optimizer=optimizer, **extra, **state)
    manager = tf.train.CheckpointManager(ckpt, str(run_dir / "checkpoints"), max_to_keep=2)
    best_ckpt = tf.train.Checkpoint(user=user, items=items)
    best_manager = tf.train.CheckpointManager(best_ckpt, str(run_dir / "checkpoints" / "best"), max_to_keep=1)
    history_path = run_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else {"epochs": [], "loss": []}
    # Every worker resumes from the chief's checkpoints; a non-chief writes its own to scratch.
    latest = manager.latest_checkpoint if worker is None else \
        tf.train.latest_checkpoint(str(worker.shared_dir / "checkpoints"))
    if latest:
        ckpt.restore(latest).assert_existing_objects_matched()
        log.info("resumed from %s (step %d, epoch %d)", latest, int(state["step"]), int(state["epoch"]))
    # history.json is written just before each checkpoint: drop what a kill left past the checkpoint.
    history["loss"] = [e for e in history["loss"] if e[0] <= int(state["step"])]
    history["epochs"] = [e for e in history["epochs"] if e["epoch"] <= int(state["epoch"])]

    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
    es = tc.early_stopping
    metric = best_metric(cfg)  # without early stopping, "best" still needs a metric that is computed

    def validate() -> dict:
        return evaluate_towers(user, items, data.valid, data.features.codes, cfg.eval.ks, cfg.index.factory,
                               cfg.index.nprobe, cfg.index.ef_search, cfg.eval.batch_size,
                               cfg.eval.query_age, collective=worker.collective if sharded else None)["filtered"]

    if warm is not None and not latest:
        report = warm.apply(user, items, variables, optimizer, sampler)
        step_offset.assign(int(optimizer.iterations.numpy()))
        write_json(run_dir / "lineage.json", {"parent_run_dir": str(warm.parent.run_dir),
                                              "parent_config_hash": warm.parent.config_hash, **report})
        # Epoch 0: the carried model on the new validation queries — the score training has to beat.
        valid = validate()
        state["best"].assign(valid[metric])
        best_manager.save(checkpoint_number=0)
        history["epochs"].append({"epoch": 0, "step": 0, "loss": None, "train_seconds": 0.0,
                                  **{f"valid_{k}": v for k, v in valid.items() if k != "count"}})
        print(f"epoch 0 (warm start from {warm.parent.run_dir}): valid {metric} {valid[metric]:.4f}", flush=True)
        if on_epoch is not None:
            on_epoch(0, user, items, 0.0)
        _save(manager, state, None, 0, history, history_path)  # a resume does not need the parent again
    # A run that already stopped early stays stopped when `recall train` is called on it again.
    stopped_early = bool(es) and int(state["bad_epochs"]) >= es.patience
    every = tc.checkpoint_every_steps

    while int(state["epoch"]) < tc.epochs and not stopped_early:
        epoch = int(state["epoch"])
        done = int(state["epoch_batches"])
        order = shard_epoch_order(n, cfg.seed, epoch, worker.index, batches_per_epoch * per_batch, tc.shuffle) \
            if sharded else epoch_order(n, cfg.seed, epoch, tc.shuffle)
        bar = tqdm(total=batches_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{tc.epochs}",
                   unit="batch", dynamic_ncols=True, mininterval=0.5, disable=not chief)
        t0, ex0 = time.perf_counter(), 0
        epoch_seconds, epoch_examples = 0.0, 0  # this process's training time in the epoch (no saves)
        running = float(state["running_loss"]) if done else math.nan
        loss_sum = float(state["epoch_loss_sum"]) if done else 0.0
        step = int(state["step"])
        for idx in epoch_blocks(order, per_batch, done, steps_per_block, step, every):
            k = idx.shape[0]
            losses = train_block(tf.constant(idx), tf.constant(step, tf.int64))
            if sharded:  # the job's examples: the global batches' rows
                losses, rows = losses[0].numpy(), losses[1].numpy()
            else:
                losses, rows = losses.numpy(), None
            for loss in losses.tolist():
                step += 1
                running = loss if math.isnan(running) else 0.98 * running + 0.02 * loss
                loss_sum += loss
                if step % 50 == 0:
                    with writer.as_default(step=step):
                        tf.summary.scalar("train/loss", loss)
                    history["loss"].append([step, running])
            done += k
            ex0 += int(rows.sum()) if rows is not None else idx.size if unit_examples is None else \
                int(unit_examples[idx].sum())
            bar.update(k)
            bar.set_postfix(loss=f"{running:.4f}", ex_s=f"{ex0 / (time.perf_counter() - t0):,.0f}", refresh=False)
            if every and step % every == 0:
                _sync(state, step, done, running, loss_sum)
                seconds = _save(manager, state, t0, ex0, history, history_path)
                epoch_seconds, epoch_examples = epoch_seconds + seconds, epoch_examples + ex0
                t0, ex0 = time.perf_counter(), 0
        bar.close()
        _sync(state, step, done, running, loss_sum)
        epoch_seconds, epoch_examples = epoch_seconds + _account(state, t0, ex0), epoch_examples + ex0
        # --- validate, keep the best, maybe stop ----------------------------------------------
        valid = validate()
        score = valid[metric]
        state["epoch"].assign_add(1)
        state["epoch_batches"].assign(0)
        improved = score > float(state["best"])
        if improved:
            state["best"].assign(score)
            state["bad_epochs"].assign(0)
            best_manager.save(checkpoint_number=int(state["step"]))
        else:
            state["bad_epochs"].assign_add(1)
        with writer.as_default(step=int(state["step"])):
            for k, v in valid.items():
                if k != "count":
                    tf.summary.scalar(f"valid/{k}", v)
        epoch_loss = loss_sum / batches_per_epoch  # the mean training loss of the epoch's batches
        history["epochs"].append({"epoch": epoch + 1, "step": int(state["step"]), "loss": epoch_loss,
                                  "train_seconds": round(epoch_seconds, 3),
                                  "examples_per_sec": round(epoch_examples / max(epoch_seconds, 1e-9), 1),
                                  **{f"valid_{k}": v for k, v in valid.items() if k != "count"}})
        if chief:
            print(f"epoch {epoch + 1}: loss {epoch_loss:.4f}  valid {metric} {score:.4f}"
                  f"{'  (best)' if improved else ''}", flush=True)
        if es and int(state["bad_epochs"]) >= es.patience:
            stopped_early = True
            if chief:
                print(f"early stopping: no {metric} improvement for {es.patience} epochs", flush=True)
        if on_epoch is not None:
            on_epoch(epoch + 1, user, items, float(state["train_seconds"]))
        _save(manager, state, None, 0, history, history_path)
    writer.flush()

    if best_manager.latest_checkpoint:
        best_ckpt.restore(best_manager.latest_checkpoint).assert_existing_objects_matched()
    seconds = float(state["train_seconds"])
    seen = int(state["examples_seen"])
    return {
        "epochs": int(state["epoch"]),
        "steps": int(state["step"]),
        "examples": total_examples,
        "batching": tc.batching,
        "seconds": round(seconds, 2),
        "examples_per_sec": round(seen / seconds, 1) if seconds > 0 else None,
        "best_valid": {metric: float(state["best"])},
        "stopped_early": stopped_early or int(state["bad_epochs"]) >= (es.patience if es else 10**9),
        "sampler": None if lc.kind == "full_softmax" else sampler_report(
            lc.sampler, data.split.item_counts, distortion=lc.distortion, base=lc.mixed_base,
            batch_size=tc.batch_size, num_sampled=lc.num_sampled),
        "loss": lc.kind,
    }


def shard_batch(per_batch: int, num_workers: int, index: int, tc) -> int:
    """This worker's part of a global batch of `per_batch` units (examples, or chunks with batching
    sequences): the index-th of num_workers near-equal parts (distributed/replicas.py `slice_bounds`)."""
    from recall.distributed.replicas import slice_bounds

    lo, hi = slice_bounds(per_batch, num_workers, 0)
    if hi - lo == 0:
        unit = "" if tc.batching == "positions" else f" / sequence_length {tc.sequence_length} = {per_batch} chunks"
        raise RecallError(f"train.batch_size={tc.batch_size}{unit} gives some of the {num_workers} workers no row of "
                          f"a global batch; raise train.batch_size to at least {num_workers}"
                          f"{'' if tc.batching == 'positions' else ' × sequence_length'}, or use fewer workers")
    lo, hi = slice_bounds(per_batch, num_workers, index)
    return hi - lo


def shard_steps(units: int, examples: int, per_batch: int, collective) -> tuple[int, int]:
    """(steps of an epoch, the job's examples): every worker runs as many steps as the worker that needs
    the most (ceil(its units / its part of a batch)); collective. A worker without examples is a
    RecallError on every worker alike."""
    table = collective.per_worker([units, math.ceil(units / per_batch), examples])  # [W, 3]
    if (table[:, 0] == 0).any():
        empty = int(np.flatnonzero(table[:, 0] == 0)[0])
        raise RecallError(f"data.shard_by_user: worker {empty} of {collective.num_workers} holds no training "
                          "examples (its users' histories are all shorter than train.min_history); lower "
                          "train.min_history, use fewer workers, or set data.shard_by_user=false")
    return int(table[:, 1].max()), int(table[:, 2].sum())


def shard_epoch_order(units: int, seed: int, epoch: int, worker: int, length: int, shuffle: bool = True) -> np.ndarray:
    """A sharded worker's order of one epoch: int64 [length], a permutation of its `units` keyed on
    (seed, epoch, worker), repeated from its start to fill `length` (= steps × its part of a batch).

    Why wrap around rather than pad with weight-0 rows: every row of every step is then a real example
    at its configured weight, so each global batch keeps train.batch_size rows (in_batch and mixed
    draw their negatives from it, log Q assumes it) and every worker's batch shape stays fixed. The
    price: a worker with fewer examples than the busiest repeats the first (length − units) of its
    order — with users spread by a hash, O(√examples) per epoch.
    """
    rng = np.random.default_rng([seed, epoch, worker])
    order = rng.permutation(units) if shuffle else np.arange(units)
    return np.resize(order.astype(np.int64), length)


def _sync(state: dict, step: int, done: int, running: float, loss_sum: float) -> None:
    """Copy the loop's position into the checkpointed variables (only read when saving or after the epoch)."""
    state["step"].assign(step)
    state["epoch_batches"].assign(done)
    state["running_loss"].assign(running)
    state["epoch_loss_sum"].assign(loss_sum)


def _account(state: dict, t0: float | None, examples: int) -> float:
    """Add the training time since `t0` and its examples to the run's totals; returns those seconds."""
    if t0 is None:
        return 0.0
    seconds = time.perf_counter() - t0
    state["train_seconds"].assign_add(seconds)
    state["examples_seen"].assign_add(examples)
    return seconds


def _save(manager, state, t0, examples, history, history_path) -> float:
    """Account the time since `t0`, write history.json, then the checkpoint; returns the seconds accounted."""
    seconds = _account(state, t0, examples)
    # History first: a kill between the two leaves it ahead of the checkpoint, and a resumed run
    # trims it back (the other order would lose the entries since the previous checkpoint).
    write_json(history_path, history)
    manager.save(checkpoint_number=int(state["step"]))
    return seconds
