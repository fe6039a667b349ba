"""train.batch_splits: a batch computed as parts (run concurrently by TF) gives the loss and gradients
of one pass — same candidates, same per-row losses — for every loss kind."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recall.config import Config
from recall.pipeline import build_model
from recall.training.samplers import make_sampler
from recall.training.step import _split_batch, make_loss_fn, trainable_variables
from recall.training.task import RetrievalTask

NUM_ITEMS = 60


def _batch(rng, size, history=8):
    hist = rng.integers(0, NUM_ITEMS, (size, history)).astype(np.int32)
    hist[:3, :5] = -1  # some short histories
    return ({"history": tf.constant(hist), "age": tf.constant(rng.random(size), tf.float32),
             "user_features": tf.constant(rng.integers(0, 3, (size, 1)), tf.int32)},
            tf.constant(rng.integers(0, NUM_ITEMS, size), tf.int64))


@pytest.mark.parametrize("kind,sampler", [("sampled_softmax", "log_uniform"), ("sampled_softmax", "in_batch"),
                                          ("nce", "unigram"), ("full_softmax", None)])
@pytest.mark.parametrize("splits", [2, 3])
def test_split_batch_gives_the_loss_and_gradients_of_one_pass(kind, sampler, splits):
    # No dropout (parts draw their own masks) and float32 (the comparison is to 1e-5).
    cfg = Config.model_validate({"model": {"dim": 8, "hidden": [16], "max_history": 8, "tie_embeddings": True,
                                           "dropout": 0.0, "compute_dtype": "float32",
                                           "history": [{"kind": "mean"}, {"kind": "min_gru", "window": 4, "heads": 2}]}})
    user, items = build_model(cfg, NUM_ITEMS, [3])
    counts = np.arange(1, NUM_ITEMS + 1)
    candidate_sampler = None if sampler is None else make_sampler(
        sampler, 12, NUM_ITEMS, True, counts, seed=5, stateless=sampler != "in_batch", batch_size=20)
    variables = trainable_variables(user, items)
    features, labels = _batch(np.random.default_rng(0), 20)  # 20 rows: parts of 10/10 or 7/6/7
    seed = tf.constant([5, 11], tf.int64)

    def loss_and_grads(loss_fn):
        with tf.GradientTape() as tape:
            loss = loss_fn(features, labels, training=True, seed=seed)
        return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]

    task = RetrievalTask(items, kind, candidate_sampler)
    whole = tf.function(lambda: loss_and_grads(make_loss_fn(user, task)))()
    parts = tf.function(lambda: loss_and_grads(make_loss_fn(user, task, splits=splits)))()
    np.testing.assert_allclose(parts[0].numpy(), whole[0].numpy(), rtol=1e-5)
    for g_parts, g_whole, v in zip(parts[1], whole[1], variables):
        np.testing.assert_allclose(g_parts.numpy(), g_whole.numpy(), rtol=1e-4, atol=1e-6, err_msg=v.path)


def test_split_batch_parts_cover_the_batch_in_order():
    features = {"history": tf.reshape(tf.range(14), [7, 2])}
    parts = _split_batch(features, tf.range(7), tf.range(7) * 10, 3)
    assert [p[1].numpy().tolist() for p in parts] == [[0, 1], [2, 3, 4], [5, 6]]
    assert [p[2].numpy().tolist() for p in parts] == [[0, 10], [20, 30, 40], [50, 60]]
    np.testing.assert_array_equal(parts[1][0]["history"].numpy(), [[4, 5], [6, 7], [8, 9]])
    assert len(_split_batch(features, tf.range(7), None, 1)) == 1
    assert len(_split_batch(features, tf.range(2), None, 3)) == 1  # fewer rows than parts: one pass
