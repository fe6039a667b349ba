"""Sequence batching: chunks cover every example once, the chunk batcher feeds each position the
history the per-position batcher would, both modes give the same loss on the same examples, and
sample weights multiply each example's loss."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from recall.config import Config
from recall.data.examples import Examples, make_examples
from recall.data.sequences import make_chunks
from recall.data.split import leave_last_out
from recall.data.synthetic import synthesize
from recall.errors import RecallError
from recall.pipeline import build_model
from recall.training.inputs import ExampleBatcher, SequenceBatcher
from recall.training.step import make_loss_fn
from recall.training.task import RetrievalTask


def test_chunks_by_hand():
    # users 0 (5 examples), 1 (2), 2 (4); length 2 → [0,1] [2,3] [4] | [5,6] | [7,8] [9,10]
    user = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2], np.int32)
    label_pos = np.array([1, 2, 3, 4, 5, 8, 9, 12, 13, 14, 15])
    chunks = make_chunks(Examples(label_pos, np.ones(11, np.int32), user, np.zeros(11, np.float32)), 2)
    assert chunks.first.tolist() == [0, 2, 4, 5, 7, 9] and chunks.count.tolist() == [2, 2, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="consecutive"):
        make_chunks(Examples(np.array([1, 3]), np.ones(2, np.int32), np.zeros(2, np.int32), np.zeros(2)), 2)


@pytest.fixture(scope="module")
def split():
    df = synthesize(num_users=40, num_items=60, interactions_per_user=14, num_topics=4, seed=2)
    df["weight"] = np.random.default_rng(0).uniform(0.0, 3.0, len(df))
    return leave_last_out(df)


@pytest.mark.parametrize("min_history, per_user, length", [(1, None, 4), (3, 5, 3), (0, None, 7)])
def test_every_example_once_with_its_own_history(split, min_history, per_user, length):
    max_history = 6
    examples = make_examples(split, max_history, min_history, per_user)
    chunks = make_chunks(examples, length)
    covered = np.concatenate([np.arange(f, f + c) for f, c in zip(chunks.first, chunks.count)])
    np.testing.assert_array_equal(covered, np.arange(len(examples)))  # each example exactly once, in order

    codes = np.arange(split.num_users, dtype=np.int32)[:, None]
    seq = SequenceBatcher(split.train_items, split.train_indptr, examples, chunks, codes, max_history, length)
    pos = ExampleBatcher(split.train_items, examples, codes, max_history)
    features, labels, weights = (t.numpy() if not isinstance(t, dict) else {k: v.numpy() for k, v in t.items()}
                                 for t in seq(tf.range(len(chunks), dtype=tf.int64)))
    want_features, want_labels, want_weights = pos(tf.range(len(examples), dtype=tf.int64))
    labelled = features["labelled"]
    assert labelled.sum() == len(examples)
    np.testing.assert_array_equal(labels[labelled], want_labels.numpy())
    np.testing.assert_allclose(weights[labelled], want_weights.numpy())
    np.testing.assert_allclose(features["age"][labelled], want_features["age"].numpy())
    assert (labels[~labelled] == 0).all() and (weights[~labelled] == 0).all()
    # The history of position l of chunk c: the columns before it, the latest max_history.
    rows = np.argwhere(labelled)
    histories = np.stack([features["items"][c, p:max_history + p] for c, p in rows])
    np.testing.assert_array_equal(histories, want_features["history"].numpy())
    np.testing.assert_array_equal(np.repeat(features["user_features"], labelled.sum(1), axis=0),
                                  want_features["user_features"].numpy())


def test_weights_come_from_the_label_interaction(split):
    examples = make_examples(split, 6)
    np.testing.assert_array_equal(examples.weight, split.train_weights[examples.label_pos])
    assert split.train_weights.dtype == np.float32 and len(split.train_weights) == len(split.train_items)


@pytest.mark.parametrize("kind", ["full_softmax", "sampled_softmax"])
def test_both_modes_give_the_same_loss_on_the_same_examples(split, kind):
    """An exact tower (no dropout): the causal pass over a batch of chunks and the per-position pass
    over the same examples give one loss (same rows, same shared candidates, weights applied)."""
    from recall.training.samplers import make_sampler

    cfg = Config.model_validate({"model": {"dim": 8, "hidden": [16], "max_history": 6, "tie_embeddings": True,
                                           "history": [{"kind": "mean"}, {"kind": "recent", "window": 2},
                                                       {"kind": "transformer", "band": 3, "dropout": 0.0}]}})
    user, items = build_model(cfg, split.num_items, [split.num_users])
    examples = make_examples(split, 6)
    chunks = make_chunks(examples, 4)
    codes = np.arange(1, split.num_users + 1, dtype=np.int32)[:, None]
    seq = SequenceBatcher(split.train_items, split.train_indptr, examples, chunks, codes, user.context, 4)
    pos = ExampleBatcher(split.train_items, examples, codes, 6)
    sampler = None if kind == "full_softmax" else make_sampler("unigram", 20, split.num_items, True,
                                                               split.item_counts, stateless=True)
    task = RetrievalTask(items, kind, sampler)
    picked = np.array([0, 3, 5, len(chunks) - 1])
    rows = np.concatenate([np.arange(chunks.first[c], chunks.first[c] + chunks.count[c]) for c in picked])
    seed = tf.constant([1, 2], tf.int64)
    by_chunks = make_loss_fn(user, task, "sequences")(*seq(tf.constant(picked)), training=False, seed=seed)
    by_rows = make_loss_fn(user, task, "positions")(*pos(tf.constant(rows)), training=False, seed=seed)
    np.testing.assert_allclose(float(by_chunks), float(by_rows), rtol=1e-5)
    # The weights matter: all-ones weights give another loss.
    features, labels, weights = pos(tf.constant(rows))
    unweighted = make_loss_fn(user, task, "positions")(features, labels, tf.ones_like(weights), training=False,
                                                        seed=seed)
    assert abs(float(unweighted) - float(by_rows)) > 1e-4


def test_weighted_loss_by_hand():
    """2 queries × 3 items, full softmax: loss = (w0·ℓ0 + w1·ℓ1) / 2 with ℓ = −log softmax(q·V + b)[label]."""
    from recall.model import ItemTower

    items = ItemTower(3, 2, name="items")
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    items.embeddings.assign(vectors)
    items.bias.assign([0.0, 0.5, -0.5])
    queries = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
    labels, weights = np.array([0, 2]), np.array([2.0, 0.5], np.float32)
    # row 0 logits [2, 0.5, 1.5]: ℓ0 = log(e² + e^0.5 + e^1.5) − 2; row 1 logits [0, 1.5, 0.5]: ℓ1 = log(1 + e^1.5 + e^0.5) − 0.5
    logits = queries @ vectors.T + np.array([0.0, 0.5, -0.5])
    per_row = np.log(np.exp(logits).sum(1)) - logits[np.arange(2), labels]
    want = (weights * per_row).sum() / 2
    got = RetrievalTask(items, "full_softmax")(tf.constant(queries), tf.constant(labels), tf.constant(weights))
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    assert abs(float(RetrievalTask(items, "full_softmax")(tf.constant(queries), tf.constant(labels))) - want) > 0.01


def test_weight_column_is_read_and_checked(tmp_path):
    from recall.data.readers import read_interactions

    path = tmp_path / "log.csv"
    pd.DataFrame({"user_id": [1, 1, 2], "item_id": [5, 6, 5], "timestamp": [1, 2, 3],
                  "watch": [0.5, 2.0, 1.0]}).to_csv(path, index=False)
    df = read_interactions(path, columns={"weight": "watch"})
    assert df["weight"].tolist() == [0.5, 2.0, 1.0]
    assert "weight" not in read_interactions(path)  # only when asked for
    pd.DataFrame({"user_id": [1], "item_id": [5], "timestamp": [1], "watch": [-1.0]}).to_csv(path, index=False)
    with pytest.raises(RecallError, match=r"'watch' \(data.columns.weight\) must hold finite numbers ≥ 0"):
        read_interactions(path, columns={"weight": "watch"})
    with pytest.raises(RecallError, match="data.columns.weight"):
        read_interactions(path, columns={"weight": "minutes"})
