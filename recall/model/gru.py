"""A GRU over a fixed window of recent history items, unrolled for CPU training.

The same function and weights as `keras.layers.GRU(units)` (Keras 3 defaults: reset_after, tanh,
sigmoid gates; `kernel [D, 3H]`, `recurrent_kernel [H, 3H]`, `bias [2, 3H]`, gate order z, r, h):

    x_z, x_r, x_h = x_t W + b_in                       (all T steps in one matmul, before the loop)
    r_z, r_r, r_h = h_{t−1} U + b_rec
    z = σ(x_z + r_z);  r = σ(x_r + r_r);  h̃ = tanh(x_h + r ⊙ r_h)
    h_t = z ⊙ h_{t−1} + (1 − z) ⊙ h̃ = h_{t−1} + (1 − z) ⊙ (h̃ − h_{t−1})

tests/test_gru.py checks outputs and gradients against `keras.layers.GRU` with the same weights.

Why not Keras' layer: on a CPU its loop is a `tf.while_loop` whose body projects the input of every
step separately, slices `[B, 3H]` tensors per gate (each slice's gradient writes a zero-filled
`[B, 3H]`) and selects with the mask — in TF's profiler of the shipped ML-1M step (one thread) the
slices, their gradients, splits and selects outweighed the matmuls. Here the input projection is one
`[B·T, D]` matmul, the loop is unrolled over the static window (T small: the window of recent
items), the update gate's columns are negated once so one sigmoid gives (1 − z, r), and padding is a
−1e4 update logit (1 − z = 0: the state passes through unchanged, the same as Keras' masked step).
Unrolled, the halves of a split batch (`train.batch_splits`) run their chains of small ops side by
side on the two cores, which Keras' while loops did not. The shipped config's training went from
14,968 to 21,037 examples/s (`python benchmarks/quality.py --skip-full`, benchmarks/RESULTS.md).
Tried and dropped: a hand-written backward pass with the recurrent kernel's gradient as one matmul
after the loop (CPU time per step unchanged, 45–48 ms at batch 512: the per-step matmuls of that
size run at the same rate either way).
"""

from __future__ import annotations

import keras
import tensorflow as tf

_PAD_LOGIT = -1e4  # σ(−1e4) = 0 in float32: at padding 1 − z = 0, gradients 0 too
_UNROLL_LIMIT = 32  # longer sequences of states (a running GRU over a chunk) use tf.scan


class UnrolledGRU(keras.layers.Layer):
    """call(x float [B, T, D] with T static, mask [B, T] (True/1 = item, False/0 = padding)) → h_T [B, units].

    h_0 = 0; padding steps leave the state unchanged (right-aligned histories: padding first, so a row
    of all padding returns zeros). Inputs at padding must be finite (the tower's are zeros): the −1e4
    logit multiplies their candidate by 0, where Keras selects the old state.
    """

    def __init__(self, units: int, matmul_dtype: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        # "bfloat16": the input and recurrent matmuls take bfloat16 operands (float32 accumulation in
        # oneDNN) and return float32; gates, state and weights stay float32. None: the input's dtype.
        self.matmul_dtype = matmul_dtype
        self.supports_masking = True  # takes `mask` like Keras' GRU; the output [B, H] carries none

    def compute_mask(self, inputs, mask=None):
        return None

    def build(self, input_shape):
        # The weights sit on a `cell` sublayer as in Keras' GRU (`sequence.cell.kernel`), so runs
        # trained with `keras.layers.GRU` restore into this layer.
        self.cell = _Weights(input_shape[-1], self.units, name="gru_cell")
        self.built = True

    def call(self, x, mask=None, return_sequences: bool = False):
        """x [B, T, D], mask [B, T] → h_T [B, H], or every state h_1..h_T [B, T, H] with `return_sequences`
        (the causal form of a history encoder: h_t summarises the items up to t)."""
        steps, h_units = x.shape[1], self.units
        if steps is None:
            raise ValueError("UnrolledGRU needs a static number of steps (pad the window to a fixed length)")
        dtype = x.dtype
        # Negate the update gate's columns once: σ(−a_z) = 1 − z comes out of the same sigmoid as r.
        sign = tf.concat([-tf.ones([h_units], dtype), tf.ones([2 * h_units], dtype)], axis=0)
        mm = tf.as_dtype(self.matmul_dtype or dtype)
        kernel = tf.cast(self.cell.kernel * sign, mm)
        recurrent = tf.cast(self.cell.recurrent_kernel * sign, mm)
        bias_in, bias_rec = self.cell.bias[0] * sign, self.cell.bias[1] * sign
        projected = tf.cast(tf.matmul(tf.cast(tf.reshape(x, [-1, x.shape[-1]]), mm), kernel), dtype) + bias_in  # [B·T, 3H]
        projected = tf.reshape(projected, [-1, steps, 3 * h_units])
        if mask is not None:
            # −1e4 on the (negated) update logit at padding: 1 − z = 0, the state passes through.
            pad = (1.0 - tf.cast(mask, dtype)) * tf.cast(_PAD_LOGIT, dtype)  # [B, T]
            update_columns = tf.concat([tf.ones([h_units], dtype), tf.zeros([2 * h_units], dtype)], axis=0)
            projected = projected + pad[..., None] * update_columns
        if return_sequences and steps > _UNROLL_LIMIT:
            return self._scan(projected, recurrent, bias_rec, mm)
        state, states = None, []
        # unstack, not x[:, t]: one Unpack whose gradient is one Pack, not T zero-filled slice gradients.
        for step in tf.unstack(projected, axis=1):
            x_gates, x_h = tf.split(step, [2 * h_units, h_units], axis=-1)
            if state is None:  # h_0 = 0: h U = 0
                pre = tf.broadcast_to(bias_rec, tf.shape(step))
            else:
                pre = tf.nn.bias_add(tf.cast(tf.matmul(tf.cast(state, mm), recurrent), dtype), bias_rec)
            r_gates, r_h = tf.split(pre, [2 * h_units, h_units], axis=-1)
            keep, reset = tf.split(tf.sigmoid(x_gates + r_gates), 2, axis=-1)  # 1 − z, r
            candidate = tf.tanh(x_h + reset * r_h)
            state = keep * candidate if state is None else state + keep * (candidate - state)
            states.append(state)
        if state is None:  # a window of zero steps
            return tf.zeros([tf.shape(x)[0], 0, h_units] if return_sequences else [tf.shape(x)[0], h_units], dtype)
        return tf.stack(states, axis=1) if return_sequences else state

    def _scan(self, projected, recurrent, bias_rec, mm):
        """Every state `[B, T, H]` by a `tf.scan` over the T steps of `projected` `[B, T, 3H]` (the same
        arithmetic as the unrolled loop): a running GRU over a training chunk has tens of steps, which
        unrolled in every copy of a compiled training block take minutes to trace."""
        h_units, dtype = self.units, projected.dtype

        def step(state, x_step):
            x_gates, x_h = tf.split(x_step, [2 * h_units, h_units], axis=-1)
            pre = tf.nn.bias_add(tf.cast(tf.matmul(tf.cast(state, mm), recurrent), dtype), bias_rec)
            r_gates, r_h = tf.split(pre, [2 * h_units, h_units], axis=-1)
            keep, reset = tf.split(tf.sigmoid(x_gates + r_gates), 2, axis=-1)  # 1 − z, r
            return state + keep * (tf.tanh(x_h + reset * r_h) - state)

        initial = tf.zeros([tf.shape(projected)[0], h_units], dtype)  # h_0 = 0: h U = 0, as unrolled
        states = tf.scan(step, tf.transpose(projected, [1, 0, 2]), initializer=initial)  # [T, B, H]
        return tf.transpose(states, [1, 0, 2])

    def get_config(self):
        return {**super().get_config(), "units": self.units, "matmul_dtype": self.matmul_dtype}


class _Weights(keras.layers.Layer):
    """Keras' GRUCell weights and initializers: kernel [D, 3H] glorot_uniform, recurrent_kernel
    [H, 3H] orthogonal, bias [2, 3H] zeros (input and recurrent biases)."""

    def __init__(self, dim: int, units: int, **kwargs):
        super().__init__(**kwargs)
        self.kernel = self.add_weight(shape=(dim, 3 * units), initializer="glorot_uniform", name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(units, 3 * units), initializer="orthogonal",
                                                name="recurrent_kernel")
        self.bias = self.add_weight(shape=(2, 3 * units), initializer="zeros", name="bias")
        self.built = True

