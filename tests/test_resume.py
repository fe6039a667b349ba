"""A run killed with SIGKILL (twice, mid-epoch) and restarted with the same command ends bit-identical
to an uninterrupted run, under `train.deterministic: true`.

Every run is a real `python -m recall train` subprocess. The killer watches the run's checkpoint state
file and sends SIGKILL as soon as a checkpoint past a given step appears — whatever the process is
doing at that moment (a step, a checkpoint write, the history file). Before each restart the test
checks that the checkpoint it will resume from is mid-epoch, so the resume path exercised is the
hard one: replaying the epoch's order from the middle, with the negatives of each step drawn from
(seed, step) and the dropout streams restored from the checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

# ~14k examples, batch 32 → 437 steps per epoch, ~1–2 s per epoch on 2 cores: slow enough to kill
# mid-epoch, small enough for the default suite. Dropout on, so the seed-generator state matters.
CONFIG = """\
seed: 3
data: {source: synthetic, synthetic: {num_users: 400, num_items: 300, interactions_per_user: 40}}
model: {dim: 16, hidden: [32], max_history: 20, history: [{kind: mean}, {kind: recent, window: 3}], dropout: 0.1,
        tie_embeddings: false, compute_dtype: float32}
loss: {sampler: log_uniform, num_sampled: 20}
train: {epochs: 3, batch_size: 32, deterministic: true, checkpoint_every_steps: 7, steps_per_execution: 4,
        early_stopping: null, batching: positions, lr_schedule: constant}
eval: {ks: [10, 20, 50]}
"""
STEPS_PER_EPOCH = 437  # ceil(13,983 examples / 32), checked against the finished run below
TIMING = {"seconds", "train_seconds", "examples_per_sec", "qps"}  # wall-clock fields: the only ones allowed to differ


def _start(config: Path, run_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "CI": "true", "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "recall", "train", str(config), "--run-dir", str(run_dir)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _latest_step(run_dir: Path) -> int:
    """Step of the newest checkpoint named in TF's state file (0 when there is none yet)."""
    try:
        text = (run_dir / "checkpoints" / "checkpoint").read_text()
    except (FileNotFoundError, OSError):
        return 0
    found = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', text, re.M)
    return int(found.group(1)) if found else 0


def _kill_once_past(proc: subprocess.Popen, run_dir: Path, step: int, log: Path) -> None:
    deadline = time.monotonic() + 300
    while _latest_step(run_dir) < step:
        assert proc.poll() is None, f"run ended before step {step}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint progress in 300 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def _checkpoint(run_dir: Path, path: str | None = None) -> dict[str, np.ndarray]:
    path = path or tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _without_timing(tree):
    if isinstance(tree, dict):
        return {k: _without_timing(v) for k, v in tree.items() if k not in TIMING}
    if isinstance(tree, list):
        return [_without_timing(v) for v in tree]
    return tree


def _steps_per_epoch(config: Path) -> int:
    """Batches per epoch of the config's data: examples / batch, or chunks / chunks per batch."""
    import math

    import recall
    from recall.data.sequences import make_chunks
    from recall.pipeline import prepare_data

    cfg = recall.load_config(config)
    data = prepare_data(cfg)
    tc = cfg.train
    if tc.batching == "sequences":
        return math.ceil(len(make_chunks(data.examples, tc.sequence_length)) / (tc.batch_size // tc.sequence_length))
    return math.ceil(len(data.examples) / tc.batch_size)


# Sequence batching: chunks of 8 positions, 4 per batch, the same tower run causally.
SEQUENCE_CONFIG = CONFIG.replace("batch_size: 32,", "batch_size: 32, batching: sequences, sequence_length: 8,")


@pytest.mark.parametrize("batching", ["positions", "sequences"])
def test_sigkilled_twice_then_resumed_equals_an_uninterrupted_run(tmp_path, batching):
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG if batching == "positions" else SEQUENCE_CONFIG)
    steps_per_epoch = _steps_per_epoch(config)
    assert steps_per_epoch > 200  # room to be killed mid-epoch
    if batching == "positions":
        assert steps_per_epoch == STEPS_PER_EPOCH
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight_log, killed_log = tmp_path / "straight.log", tmp_path / "killed.log"

    straight = _start(config, straight_dir, straight_log)  # runs alongside the killed one
    for kill_past in (150, steps_per_epoch + 150):  # once in epoch 1, once in epoch 2
        proc = _start(config, killed_dir, killed_log)
        _kill_once_past(proc, killed_dir, kill_past, killed_log)
        state = _checkpoint(killed_dir)
        assert int(state["epoch_batches/.ATTRIBUTES/VARIABLE_VALUE"]) > 0, "should resume mid-epoch"
        assert not (killed_dir / "metrics.json").exists()
    final = _start(config, killed_dir, killed_log)
    assert final.wait(timeout=600) == 0, killed_log.read_text()[-3000:]
    assert straight.wait(timeout=600) == 0, straight_log.read_text()[-3000:]
    assert killed_log.read_text().count("resumed from") >= 2
    assert json.loads((straight_dir / "metrics.json").read_text())["train"]["steps"] == 3 * steps_per_epoch

    # The same weights, optimizer slots, sampler/dropout state and counters, bit for bit.
    a, b = _checkpoint(straight_dir), _checkpoint(killed_dir)
    assert sorted(a) == sorted(b)
    assert any("seed_states" in name for name in a), "dropout seed state should be checkpointed"
    differ = [name for name in a if not np.array_equal(a[name], b[name]) and not name.startswith("train_seconds")]
    assert differ == []
    best = "checkpoints/best"
    a_best = _checkpoint(straight_dir, tf.train.latest_checkpoint(str(straight_dir / best)))
    b_best = _checkpoint(killed_dir, tf.train.latest_checkpoint(str(killed_dir / best)))
    assert sorted(a_best) == sorted(b_best)
    # (save_counter counts saves by this process's best-checkpoint object, which is not restored)
    assert all(np.array_equal(a_best[name], b_best[name]) for name in a_best if not name.startswith("save_counter"))

    # The same metrics, history and exported vectors.
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (straight_dir, killed_dir)]
    assert _without_timing(metrics[0]) == _without_timing(metrics[1])
    histories = [json.loads((d / "history.json").read_text()) for d in (straight_dir, killed_dir)]
    assert _without_timing(histories[0]) == _without_timing(histories[1])
    np.testing.assert_array_equal(np.load(straight_dir / "export" / "item_vectors.npy"),
                                  np.load(killed_dir / "export" / "item_vectors.npy"))
