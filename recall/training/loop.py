"""The training loop, top to bottom: restore → for each epoch: steps → validate → checkpoint → stop?

Part of the training entry point (it reads the Config). State that a resumed run needs — model,
optimizer slots, global step, epoch, batches done in the epoch, best validation metric, epochs
without improvement — lives in one `tf.train.Checkpoint`; the epoch's example order is a pure
function of (seed, epoch), so resuming mid-epoch replays the same order and skips what was done.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import tensorflow as tf
from tqdm import tqdm

from recall.config import Config
from recall.evaluation.model_eval import evaluate_towers
from recall.io import write_json
from recall.training.inputs import ExampleBatcher, epoch_order
from recall.training.sampler_stats import sampler_report
from recall.training.samplers import make_sampler
from recall.training.step import make_loss_fn, make_train_step, trainable_variables

log = logging.getLogger(__name__)


def fit(cfg: Config, data, user, items, run_dir: Path) -> dict:
    """Train `user`/`items` in place; leaves the best-validation weights in them. Returns a summary."""
    from recall.pipeline import make_optimizer

    tc, lc = cfg.train, cfg.loss
    tf.random.set_seed(cfg.seed)
    num_items = data.split.num_items
    sampler = None
    if lc.kind != "full_softmax":
        # NEG is NCE without the log Q term: its sampler reports expected counts of 1.
        sampler = make_sampler(lc.sampler, lc.num_sampled, num_items, lc.unique, data.split.item_counts,
                               lc.distortion, lc.logq_correction and lc.kind != "neg", seed=cfg.seed,
                               mixed_base=lc.mixed_base, streaming=lc.frequency == "streaming",
                               batch_size=tc.batch_size, streaming_alpha=lc.streaming_alpha)
    variables = trainable_variables(user, items)
    optimizer = make_optimizer(tc.optimizer, tc.learning_rate, tc.lr_schedule, tc.epochs * math.ceil(len(data.examples) / tc.batch_size), tc.warmup_steps)
    optimizer.build(variables)
    loss_fn = make_loss_fn(user, items, lc.kind, sampler, lc.remove_accidental_hits)
    train_step = make_train_step(loss_fn, variables, optimizer)

    # --- state and checkpoints ---------------------------------------------------------------
    state = {
        "step": tf.Variable(0, dtype=tf.int64, name="step"),
        "epoch": tf.Variable(0, dtype=tf.int64, name="epoch"),  # epochs fully done
        "epoch_batches": tf.Variable(0, dtype=tf.int64, name="epoch_batches"),  # batches done in current epoch
        "best": tf.Variable(-1.0, dtype=tf.float64, name="best"),
        "bad_epochs": tf.Variable(0, dtype=tf.int64, name="bad_epochs"),
        "train_seconds": tf.Variable(0.0, dtype=tf.float64, name="train_seconds"),
        "examples_seen": tf.Variable(0, dtype=tf.int64, name="examples_seen"),
    }
    # A stateful sampler (streaming frequency estimate) is part of the state too.
    extra = {"sampler": sampler} if isinstance(sampler, tf.Module) else {}
    ckpt = tf.train.Checkpoint(user=user, items=items, optimizer=optimizer, **extra, **state)
    manager = tf.train.CheckpointManager(ckpt, str(run_dir / "checkpoints"), max_to_keep=2)
    best_ckpt = tf.train.Checkpoint(user=user, items=items)
    best_manager = tf.train.CheckpointManager(best_ckpt, str(run_dir / "checkpoints" / "best"), max_to_keep=1)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log.info("resumed from %s (step %d, epoch %d)", manager.latest_checkpoint,
                 int(state["step"]), int(state["epoch"]))
    history_path = run_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else {"epochs": [], "loss": []}

    batcher = ExampleBatcher(data.split.train_items, data.examples, data.features.codes, cfg.model.max_history)
    n = len(data.examples)
    batches_per_epoch = math.ceil(n / tc.batch_size)
    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
    es = tc.early_stopping
    # Without early stopping, "best" still needs a metric that is computed: HR at the largest K ≤ 50.
    metric = es.metric if es else f"hr@{max([k for k in cfg.eval.ks if k <= 50] or [min(cfg.eval.ks)])}"
    # A run that already stopped early stays stopped when `recall train` is called on it again.
    stopped_early = bool(es) and int(state["bad_epochs"]) >= es.patience

    while int(state["epoch"]) < tc.epochs and not stopped_early:
        epoch = int(state["epoch"])
        done = int(state["epoch_batches"])
        order = epoch_order(n, cfg.seed, epoch, tc.shuffle)
        dataset = batcher.dataset(order, tc.batch_size, skip_batches=done)
        bar = tqdm(total=batches_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{tc.epochs}",
                   unit="batch", dynamic_ncols=True, mininterval=0.5)
        t0, ex0, running = time.perf_counter(), 0, None
        for features, labels in dataset:
            loss = float(train_step(features, labels))
            state["step"].assign_add(1)
            state["epoch_batches"].assign_add(1)
            ex0 += int(labels.shape[0])
            running = loss if running is None else 0.98 * running + 0.02 * loss
            step = int(state["step"])
            if step % 50 == 0:
                with writer.as_default(step=step):
                    tf.summary.scalar("train/loss", loss)
                history["loss"].append([step, running])
            bar.update(1)
            if bar.n % 20 == 0:
                bar.set_postfix(loss=f"{running:.4f}", ex_s=f"{ex0 / (time.perf_counter() - t0):,.0f}")
            if tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0:
                _save(manager, state, t0, ex0, history, history_path)
                t0, ex0 = time.perf_counter(), 0
        bar.close()
        _account(state, t0, ex0)

        # --- validate, keep the best, maybe stop ----------------------------------------------
        valid = evaluate_towers(user, items, data.valid, data.features.codes, cfg.eval.ks, cfg.index.factory,
                                cfg.index.nprobe, cfg.index.ef_search, cfg.eval.batch_size,
                                cfg.eval.query_age)["filtered"]
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
        history["epochs"].append({"epoch": epoch + 1, "step": int(state["step"]), "loss": running,
                                  **{f"valid_{k}": v for k, v in valid.items() if k != "count"}})
        print(f"epoch {epoch + 1}: loss {running:.4f}  valid {metric} {score:.4f}"
              f"{'  (best)' if improved else ''}", flush=True)
        if es and int(state["bad_epochs"]) >= es.patience:
            stopped_early = True
            print(f"early stopping: no {metric} improvement for {es.patience} epochs", flush=True)
        _save(manager, state, None, 0, history, history_path)
    writer.flush()

    if best_manager.latest_checkpoint:
        best_ckpt.restore(best_manager.latest_checkpoint).assert_existing_objects_matched()
    seconds = float(state["train_seconds"])
    seen = int(state["examples_seen"])
    return {
        "epochs": int(state["epoch"]),
        "steps": int(state["step"]),
        "examples": n,
        "seconds": round(seconds, 2),
        "examples_per_sec": round(seen / seconds, 1) if seconds > 0 else None,
        "best_valid": {metric: float(state["best"])},
        "stopped_early": stopped_early or int(state["bad_epochs"]) >= (es.patience if es else 10**9),
        "sampler": None if lc.kind == "full_softmax" else sampler_report(
            lc.sampler, data.split.item_counts, distortion=lc.distortion, base=lc.mixed_base,
            batch_size=tc.batch_size, num_sampled=lc.num_sampled),
        "loss": lc.kind,
    }


def _account(state: dict, t0: float | None, examples: int) -> None:
    if t0 is not None:
        state["train_seconds"].assign_add(time.perf_counter() - t0)
        state["examples_seen"].assign_add(examples)


def _save(manager, state, t0, examples, history, history_path) -> None:
    _account(state, t0, examples)
    manager.save(checkpoint_number=int(state["step"]))
    write_json(history_path, history)
