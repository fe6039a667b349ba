"""UnrolledGRU against Keras' GRU with the same weights: outputs and gradients, padding, short windows."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from recall.model import UserTower
from recall.model.gru import UnrolledGRU


def _pair(dim, units, seed=0):
    """(UnrolledGRU, keras.layers.GRU) holding the same random weights (biases non-zero too)."""
    rng = np.random.default_rng(seed)
    ours, ref = UnrolledGRU(units), keras.layers.GRU(units)
    ours.build((None, 3, dim))
    ref.build((None, 3, dim))
    for a, b in [(ours.cell.kernel, ref.cell.kernel), (ours.cell.recurrent_kernel, ref.cell.recurrent_kernel),
                 (ours.cell.bias, ref.cell.bias)]:
        assert tuple(a.shape) == tuple(b.shape)  # the same layout: z, r, h gates; bias [input, recurrent]
        value = rng.normal(0, 0.5, tuple(a.shape)).astype(np.float32)
        a.assign(value)
        b.assign(value)
    return ours, ref


def _batch(batch, steps, dim, seed=0):
    """x [B, T, D] and a right-aligned mask [B, T]: row 0 all padding, row 1 none, the rest random lengths."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, steps, dim)).astype(np.float32)
    length = rng.integers(0, steps + 1, batch)
    length[0], length[1] = 0, steps
    mask = np.arange(steps)[None, :] >= (steps - length)[:, None]
    return tf.constant(x), tf.constant(mask)


def test_one_step_by_hand():
    # D = H = 1, all weights 0 except the candidate's input weight 1: z = r = σ(0) = ½, h̃ = tanh(x),
    # h_1 = ½ · 0 + ½ · tanh(x).
    layer = UnrolledGRU(1)
    layer.build((None, 1, 1))
    layer.cell.kernel.assign([[0.0, 0.0, 1.0]])
    layer.cell.recurrent_kernel.assign(np.zeros((1, 3), np.float32))
    layer.cell.bias.assign(np.zeros((2, 3), np.float32))
    out = layer(tf.constant([[[0.8]]]), mask=tf.constant([[True]])).numpy()
    np.testing.assert_allclose(out, [[0.5 * np.tanh(0.8)]], rtol=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_outputs_match_keras_gru(steps):
    ours, ref = _pair(5, 6)
    x, mask = _batch(9, steps, 5)
    got = ours(x, mask=mask).numpy()
    np.testing.assert_allclose(got, ref(x, mask=mask).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[0], np.zeros(6))  # all padding: h_0
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-6)  # no mask


@pytest.mark.parametrize("steps", [1, 4])
def test_gradients_match_keras_gru(steps):
    ours, ref = _pair(5, 6, seed=1)
    x, mask = _batch(8, steps, 5, seed=1)
    upstream = tf.constant(np.random.default_rng(2).normal(size=(8, 6)).astype(np.float32))

    def grads(layer, weights):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, mask=mask) * upstream)
        return tape.gradient(loss, [x, *weights])

    got = grads(ours, [ours.cell.kernel, ours.cell.recurrent_kernel, ours.cell.bias])
    want = grads(ref, [ref.cell.kernel, ref.cell.recurrent_kernel, ref.cell.bias])
    for name, g, w in zip(["x", "kernel", "recurrent_kernel", "bias"], got, want):
        # One step never multiplies h_0 = 0 by the recurrent kernel: no gradient (None), Keras' is zeros.
        g = np.zeros(w.shape) if g is None and steps == 1 and name == "recurrent_kernel" else g.numpy()
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    assert np.all(got[0].numpy()[0] == 0)  # an all-padding row gets no gradient


def test_gradients_inside_a_traced_function():
    ours, ref = _pair(4, 3, seed=3)
    x, mask = _batch(6, 5, 4, seed=3)

    def grad_of(layer, kernel):
        @tf.function
        def traced():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(layer(x, mask=mask)))
            return tape.gradient(loss, kernel)
        return traced().numpy()

    np.testing.assert_allclose(grad_of(ours, ours.cell.recurrent_kernel), grad_of(ref, ref.cell.recurrent_kernel),
                               rtol=1e-4, atol=1e-5)


def test_padding_anywhere_matches_keras_gru():
    # Keras carries the state through any masked step, not only leading ones.
    ours, ref = _pair(3, 4, seed=4)
    x, _ = _batch(7, 6, 3, seed=4)
    mask = tf.constant(np.random.default_rng(5).random((7, 6)) < 0.6)
    np.testing.assert_allclose(ours(x, mask=mask).numpy(), ref(x, mask=mask).numpy(), rtol=1e-5, atol=1e-6)


def test_same_initializers_as_keras():
    layer = UnrolledGRU(8)
    layer.build((None, 3, 5))
    u = layer.cell.recurrent_kernel.numpy()  # orthogonal over the whole [H, 3H]: orthonormal rows
    np.testing.assert_allclose(u @ u.T, np.eye(8), atol=1e-5)
    limit = np.sqrt(6.0 / (5 + 24))  # glorot_uniform over [D, 3H]
    assert np.abs(layer.cell.kernel.numpy()).max() <= limit
    np.testing.assert_array_equal(layer.cell.bias.numpy(), np.zeros((2, 24)))


def test_restores_a_keras_gru_checkpoint(tmp_path):
    # Runs trained when the tower used keras.layers.GRU keep their weights: the same object paths.
    ours, ref = _pair(5, 6, seed=6)
    ours.cell.kernel.assign(np.zeros((5, 18), np.float32))
    path = tf.train.Checkpoint(sequence=ref).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(sequence=ours).restore(path).assert_existing_objects_matched()
    x, mask = _batch(4, 3, 5, seed=6)
    np.testing.assert_allclose(ours(x, mask=mask).numpy(), ref(x, mask=mask).numpy(), rtol=1e-5, atol=1e-6)


def test_needs_a_static_window():
    layer = UnrolledGRU(3)
    fn = tf.function(lambda x: layer(x), input_signature=[tf.TensorSpec([None, None, 2])])
    with pytest.raises(ValueError, match="static number of steps"):
        fn.get_concrete_function()


@pytest.mark.parametrize("parts", [
    {"history": [{"kind": "mean"}, {"kind": "gru", "window": 4}, {"kind": "recent", "window": 2}]},
    {"history": [{"kind": "last_items", "window": 3}]}, {"history": [{"kind": "attention"}]},
    {"history": [{"kind": "min_gru", "window": 4, "heads": 2}]},
    {"history": [{"kind": "transformer", "band": 3, "heads": 2}]}],
                         ids=["gru+recent", "last_items", "attention", "min_gru", "transformer"])
@pytest.mark.parametrize("width", [0, 1, 3])
def test_serving_histories_of_any_width(parts, width):
    # A history narrower than every window (even empty) is the same user as its items right-aligned
    # in max_history columns.
    keras.utils.set_random_seed(0)
    tower = UserTower(20, 4, [8], 6, example_age=False, name="user", **parts)
    serve = tf.function(lambda h: tower({"history": h, "age": tf.zeros([tf.shape(h)[0]]),
                                         "user_features": tf.zeros([tf.shape(h)[0], 0], tf.int32)}),
                        input_signature=[tf.TensorSpec([None, None], tf.int32)])
    items = [5, 7, 2][:width]
    full = np.array([[-1] * (6 - width) + items], np.int32)
    np.testing.assert_allclose(serve(tf.constant([items], tf.int32) if width else tf.zeros([1, 0], tf.int32)).numpy(),
                               serve(tf.constant(full)).numpy(), rtol=1e-5, atol=1e-6)


def test_tower_pads_short_serving_histories_to_the_window():
    # The exported tower takes histories of any width: a 2-column history is the same user as the
    # same two items right-aligned in 6 columns (the GRU window of 4 is padded, not cut short).
    tower = UserTower(20, 4, [8], 6, history=[{"kind": "mean"}, {"kind": "gru", "window": 4}, {"kind": "recent", "window": 2}],
                      example_age=False, name="user")

    def query(history):
        h = tf.constant(np.asarray(history, np.int32))
        return tower({"history": h, "age": tf.zeros([1]), "user_features": tf.zeros([1, 0], tf.int32)}).numpy()

    serve = tf.function(lambda h: tower({"history": h, "age": tf.zeros([tf.shape(h)[0]]),
                                         "user_features": tf.zeros([tf.shape(h)[0], 0], tf.int32)}),
                        input_signature=[tf.TensorSpec([None, None], tf.int32)])
    wide = query([[-1, -1, -1, -1, 5, 7]])
    np.testing.assert_allclose(serve(tf.constant([[5, 7]], tf.int32)).numpy(), wide, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(query([[-1, -1, 5, 7]]), wide, rtol=1e-5, atol=1e-6)


def test_bfloat16_matmuls_stay_close_to_float32_with_float32_results():
    # bfloat16 operands (8 bits of mantissa), float32 accumulation, gates and state: outputs and
    # gradients within a few per cent of the float32 layer with the same weights.
    ours, _ = _pair(5, 6, seed=8)
    half = UnrolledGRU(6, matmul_dtype="bfloat16")
    half.build((None, 4, 5))
    for a, b in zip(half.weights, ours.weights):
        a.assign(b)
    x, mask = _batch(16, 4, 5, seed=8)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        full_out, half_out = ours(x, mask=mask), half(x, mask=mask)
        full_loss, half_loss = tf.reduce_sum(full_out ** 2), tf.reduce_sum(half_out ** 2)
    assert half_out.dtype == tf.float32 and all(w.dtype == "float32" for w in half.weights)
    np.testing.assert_allclose(half_out.numpy(), full_out.numpy(), rtol=0, atol=0.03)
    assert not np.array_equal(half_out.numpy(), full_out.numpy())  # the matmuls did run in bfloat16
    for g_half, g_full in zip(tape.gradient(half_loss, [x, *half.weights]), tape.gradient(full_loss, [x, *ours.weights])):
        assert g_half.dtype == tf.float32
        scale = np.abs(g_full.numpy()).max()
        np.testing.assert_allclose(g_half.numpy(), g_full.numpy(), rtol=0, atol=0.05 * scale)
    assert half.get_config()["matmul_dtype"] == "bfloat16"
