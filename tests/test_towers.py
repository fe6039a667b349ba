"""The user tower's history pooling: the sparse segment mean equals the gather-and-mask reference."""

import numpy as np
import tensorflow as tf

from recall.model import UserTower


def _reference_mean(table, history):
    """numpy: mean of table rows over the non-negative ids of each row (zeros when none)."""
    out = np.zeros((len(history), table.shape[1]), np.float32)
    for r, row in enumerate(history):
        ids = row[row >= 0]
        if len(ids):
            out[r] = table[ids].mean(axis=0)
    return out


def test_history_mean_and_its_gradient_match_the_reference():
    rng = np.random.default_rng(0)
    n, m = 30, 6
    tower = UserTower(n, 4, [8], m, example_age=False, name="user")
    history = np.full((5, m), -1, np.int32)
    history[0, 2:] = [3, 3, 7, 1]  # a duplicate id counts twice in the mean
    history[1, :] = rng.integers(0, n, m)
    history[3, -1:] = [29]  # rows 2 and 4 stay empty → zeros
    weights = tf.constant(rng.normal(size=(5, 4)), tf.float32)
    table = tower.history_embeddings
    with tf.GradientTape() as tape:
        pooled = tower._mean_of_history(tf.constant(history))
        loss = tf.reduce_sum(pooled * weights)
    grad = tf.convert_to_tensor(tape.gradient(loss, table))
    np.testing.assert_allclose(pooled.numpy(), _reference_mean(table.numpy(), history), rtol=1e-6, atol=1e-7)

    # The gather-and-mask form it replaces, differentiated by TF.
    ref_table = tf.Variable(table.numpy())
    mask = tf.cast(history >= 0, tf.float32)[..., None]
    with tf.GradientTape() as tape:
        emb = tf.gather(ref_table, np.maximum(history, 0)) * mask
        ref_loss = tf.reduce_sum(tf.reduce_sum(emb, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0) * weights)
    ref_grad = tf.convert_to_tensor(tape.gradient(ref_loss, ref_table))
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), ref_grad.numpy(), rtol=1e-5, atol=1e-7)


def test_recent_window_uses_the_latest_columns():
    tower = UserTower(20, 4, [8], 5, recent=2, last_items=3, example_age=False, name="user")
    a = np.array([[-1, 4, 5, 6, 7]], np.int32)
    b = np.array([[9, 4, 5, 6, 7]], np.int32)  # differs only in the oldest column, outside both windows

    def feats(h):
        return {"history": tf.constant(h), "age": tf.zeros([1]), "user_features": tf.zeros([1, 0], tf.int32)}

    # Outputs differ (the all-history mean sees column 0) but the recency parts must not: compare them.
    emb_a, _ = tower._embed_history(tf.constant(a)[:, -3:])
    emb_b, _ = tower._embed_history(tf.constant(b)[:, -3:])
    np.testing.assert_array_equal(emb_a.numpy(), emb_b.numpy())
    assert not np.allclose(tower(feats(a)).numpy(), tower(feats(b)).numpy())


def test_gru_window_ignores_left_padding():
    tower = UserTower(20, 4, [8], 6, gru=4, example_age=False, name="user")
    short = np.array([[-1, -1, -1, -1, 5, 7]], np.int32)
    feats = {"history": tf.constant(short), "age": tf.zeros([1]), "user_features": tf.zeros([1, 0], tf.int32)}
    emb, mask = tower._embed_history(tf.constant(short)[:, -4:])
    masked = tower.sequence(emb, mask=mask[..., 0] > 0).numpy()
    only_items = tower.sequence(emb[:, -2:]).numpy()  # the same two items with no padding at all
    np.testing.assert_allclose(masked, only_items, rtol=1e-5, atol=1e-6)
    assert tower(feats).shape == (1, 4)
