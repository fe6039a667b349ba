"""train.lr_schedule: the cosine schedule equals its formula at the start, middle and end, both Keras'
optimizers and the row-wise ones follow it, and a checkpoint restore resumes it at the saved step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from recall.errors import RecallError
from recall.training.schedule import learning_rate_schedule, make_optimizer

LR, T = 0.002, 1000


def cosine(step: int, lr: float = LR, total: int = T, warmup: int = 0) -> float:
    """The formula written out (numpy side of the comparison)."""
    if step < warmup:
        return lr * step / warmup
    progress = min(step - warmup, total - warmup) / (total - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def test_constant_is_the_plain_rate():
    assert learning_rate_schedule(LR, "constant", T) == LR


@pytest.mark.parametrize("step, expected", [(0, LR), (T // 4, LR * (0.5 + 0.5 * math.cos(math.pi / 4))),
                                            (T // 2, LR / 2), (T, 0.0), (T + 50, 0.0)])
def test_cosine_start_middle_end(step, expected):
    schedule = learning_rate_schedule(LR, "cosine", T)
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(float(schedule(step)), cosine(step), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("step", [0, 50, 100, 550, 1000])
def test_cosine_with_warmup(step):
    # W = 100: 0 → LR linearly over 100 steps, then LR → 0 over the remaining 900 (LR/2 at step 550).
    schedule = learning_rate_schedule(LR, "cosine", T, warmup_steps=100)
    np.testing.assert_allclose(float(schedule(step)), cosine(step, warmup=100), rtol=1e-5, atol=1e-9)


def test_warmup_must_fit_in_the_planned_steps():
    with pytest.raises(RecallError, match="train.warmup_steps"):
        learning_rate_schedule(LR, "cosine", 100, warmup_steps=100)


def _steps(opt, var, n):
    for _ in range(n):
        opt.apply_gradients([(tf.ones_like(var), var)])


@pytest.mark.parametrize("name", ["adam", "lazy_adam", "lazy_adagrad", "sgd"])
def test_optimizers_follow_the_schedule_and_resume_it(tmp_path, name):
    var = tf.Variable(tf.zeros([3]))
    opt = make_optimizer(name, LR, "cosine", total_steps=20)
    opt.build([var])
    _steps(opt, var, 10)
    np.testing.assert_allclose(float(opt.learning_rate), cosine(10, total=20), rtol=1e-5, atol=1e-9)
    path = tf.train.Checkpoint(var=var, optimizer=opt).save(str(tmp_path / "ckpt"))

    # A fresh optimizer restored from the checkpoint continues at step 10, not at step 0.
    var2 = tf.Variable(tf.zeros([3]))
    opt2 = make_optimizer(name, LR, "cosine", total_steps=20)
    opt2.build([var2])
    tf.train.Checkpoint(var=var2, optimizer=opt2).restore(path).assert_existing_objects_matched()
    assert int(opt2.iterations) == 10
    np.testing.assert_allclose(float(opt2.learning_rate), cosine(10, total=20), rtol=1e-5, atol=1e-9)
    _steps(opt, var, 1)
    _steps(opt2, var2, 1)
    np.testing.assert_allclose(var2.numpy(), var.numpy(), rtol=1e-6)


def test_lazy_adam_with_a_schedule_is_keras_adam_with_it():
    """Dense gradients every step: LazyAdam = Keras' Adam, so with one schedule the paths must agree."""
    rng = np.random.default_rng(0)
    init = rng.normal(size=(4, 3)).astype(np.float32)
    a, b = tf.Variable(init), tf.Variable(init)
    lazy, dense = make_optimizer("lazy_adam", 0.05, "cosine", 8), make_optimizer("adam", 0.05, "cosine", 8)
    lazy.build([a])
    dense.build([b])
    for _ in range(8):
        g = tf.constant(rng.normal(size=(4, 3)), tf.float32)
        lazy.apply_gradients([(g, a)])
        dense.apply_gradients([(g, b)])
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_a_scheduled_rate_cannot_be_set():
    opt = make_optimizer("lazy_adam", LR, "cosine", 10)
    with pytest.raises(ValueError, match="schedule"):
        opt.learning_rate = 0.1
