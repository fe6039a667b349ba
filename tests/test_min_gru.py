"""MinGRU's parallel form against the sequential recurrence it unrolls (numpy), by hand and at random."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from recall.model.min_gru import MinGRU


def sequential_min_gru(x, mask, wz, bz, wh, bh):
    """numpy reference: h_t = (1 − z_t) h_{t−1} + z_t h̃_t step by step, padding steps skipped.
    x [B, T, D], mask [B, T], gate wz [D, G], bz [G], candidate wh [D, H], bh [H] → h_T [B, H];
    gate g drives the g-th block of H / G units."""
    units, heads = wh.shape[1], wz.shape[1]
    h = np.zeros((x.shape[0], units))
    for t in range(x.shape[1]):
        z = np.repeat(1.0 / (1.0 + np.exp(-(x[:, t] @ wz + bz))), units // heads, axis=1)
        step = (1.0 - z) * h + z * (x[:, t] @ wh + bh)
        h = np.where(mask[:, t, None] > 0, step, h)
    return h


def _layer(dim, units, heads=None, weights=None):
    layer = MinGRU(units, heads)
    layer.build((None, None, dim))
    if weights is not None:
        wz, bz, wh, bh = weights
        layer.gate.kernel.assign(wz)
        layer.gate.bias.assign(bz)
        layer.candidate.kernel.assign(wh)
        layer.candidate.bias.assign(bh)
    return layer


def test_two_steps_by_hand():
    # D = H = 1, gate kernel 0 and bias 0, candidate kernel 1 and bias 0: z = σ(0) = ½ at every step,
    # h̃_t = x_t. h_1 = ½·2 = 1, h_2 = ½·1 + ½·4 = 2.5.
    zero, one = np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32)
    layer = _layer(1, 1, weights=(zero, np.zeros(1, np.float32), one, np.zeros(1, np.float32)))
    x = tf.constant([[[2.0], [4.0]]])
    out = layer(x, tf.ones([1, 2, 1]))
    assert out.numpy()[0, 0] == pytest.approx(2.5, abs=1e-6)
    # The first step masked (padding): h_2 = ½·4 = 2 — padding neither adds nor decays.
    out = layer(x, tf.constant([[[0.0], [1.0]]]))
    assert out.numpy()[0, 0] == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("heads", [4, 2, 1])
def test_matches_sequential_recurrence_with_left_padding(heads):
    rng = np.random.default_rng(heads)
    batch, steps, dim, units = 7, 12, 5, 4
    # Large gate weights: z near 0 and near 1 both occur.
    weights = [rng.normal(0, 1.5, (dim, heads)), rng.normal(0, 1.0, heads),
               rng.normal(0, 1.0, (dim, units)), rng.normal(0, 1.0, units)]
    x = rng.normal(size=(batch, steps, dim)).astype(np.float32)
    lengths = np.array([0, 1, 3, 6, 11, 12, 12])
    mask = (np.arange(steps)[None, :] >= steps - lengths[:, None]).astype(np.float32)  # right-aligned
    x = x * mask[..., None]
    layer = _layer(dim, units, heads, [w.astype(np.float32) for w in weights])
    got = layer(tf.constant(x), tf.constant(mask[..., None])).numpy()
    want = sequential_min_gru(x.astype(np.float64), mask, *weights)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.all(got[0] == 0.0)  # an empty history gives h_0 = 0


def test_extra_left_padding_changes_nothing():
    rng = np.random.default_rng(1)
    layer = _layer(6, 6, heads=3)
    x = rng.normal(size=(3, 8, 6)).astype(np.float32)
    mask = np.ones((3, 8, 1), np.float32)
    padded_x = np.concatenate([np.zeros((3, 5, 6), np.float32), x], axis=1)
    padded_mask = np.concatenate([np.zeros((3, 5, 1), np.float32), mask], axis=1)
    np.testing.assert_allclose(layer(tf.constant(padded_x), tf.constant(padded_mask)).numpy(),
                               layer(tf.constant(x), tf.constant(mask)).numpy(), rtol=1e-6, atol=1e-6)


def test_long_window_forgets_early_items_without_nan():
    # 400 steps with gates σ(20) (exactly 1.0 in float32): every item but the latest is decayed to
    # weight 0, so the output is the latest item, 1 — not NaN (a cumulative product divided back
    # would be 0 / 0 here) and not polluted by the large early item.
    one = np.ones((1, 1), np.float32)
    layer = _layer(1, 1, weights=(0 * one, np.array([20.0], np.float32), one, np.zeros(1, np.float32)))
    x = np.zeros((1, 400, 1), np.float32)
    x[0, 0, 0], x[0, -1, 0] = 1000.0, 1.0
    out = layer(tf.constant(x), tf.ones([1, 400, 1])).numpy()[0, 0]
    assert math.isfinite(out) and out == pytest.approx(1.0, abs=1e-6)


def _sequential_tf(layer, x, mask):
    """The recurrence step by step in TF, with the layer's own weights (differentiable reference)."""
    units, heads = layer.units, layer.heads
    h = tf.zeros([x.shape[0], units])
    for t in range(x.shape[1]):
        z = tf.repeat(tf.sigmoid(layer.gate(x[:, t])), units // heads, axis=1)
        step = (1.0 - z) * h + z * layer.candidate(x[:, t])
        h = tf.where(mask[:, t] > 0, step, h)
    return h


@pytest.mark.parametrize("heads", [8, 2, 1])
def test_gradients_match_the_sequential_recurrence(heads):
    rng = np.random.default_rng(heads)
    layer = _layer(5, 8, heads)
    for w in layer.gate.weights:  # large gates: z near 0 and 1 both occur
        w.assign(w * 6.0 + 0.5)
    x = tf.constant(rng.normal(size=(6, 9, 5)), tf.float32)
    lengths = np.array([0, 1, 4, 8, 9, 9])
    mask = tf.constant((np.arange(9)[None, :] >= 9 - lengths[:, None]).astype(np.float32)[..., None])
    target = tf.constant(rng.normal(size=(6, 8)), tf.float32)
    grads = []
    for fn in (lambda: layer(x, mask), lambda: _sequential_tf(layer, x, mask)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(fn() * target)
        grads.append(tape.gradient(loss, [x, *layer.trainable_variables]))
    for got, want in zip(*grads):
        assert np.all(np.isfinite(got.numpy()))
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
