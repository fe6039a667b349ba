"""minGRU over the most recent history items, computed in parallel (Feng et al. 2024, "Were RNNs All
We Needed?").

A GRU whose gate and candidate depend on the current item only, not on the previous state:

    z_t = σ(x_t W_z + b_z)            update gate   [B, T, G]   (G gates: one per `heads` block of H / G units)
    h̃_t = x_t W_h + b_h               candidate     [B, T, H]
    h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t,   h_0 = 0

Without h_{t−1} inside the gates the recurrence unrolls into a weighted sum:

    h_T = Σ_t  w_t ⊙ h̃_t,   w_t = z_t ⊙ Π_{s>t} (1 − z_s) = exp(log z_t + Σ_{s>t} log(1 − z_s))

so the encoder is a weighted pooling of the T items and one projection, where a GRU runs T dependent
steps of small matmuls (on ML-1M the shipped config runs ~9k examples/s with its GRU and ~27k
without it: benchmarks/RESULTS.md, issue 5). The candidate
is linear in x_t, so it is applied after the pooling (Σ_t w_t x_t, then W_h): per gate block, G pooled
`[D]` vectors are projected instead of T positions.
The products are taken in log space (log(1 − σ(a)) = −softplus(a), log σ(a) = a − softplus(a): exact,
no underflow for long windows); the suffix sums Σ_{s>t} are a matmul with a constant `[T, T]`
triangle (TF's reverse exclusive `cumsum` was 20 % of the whole training step).

`heads` = H is Feng et al.'s minGRU (a gate per unit). Fewer gates share one gate across a block of
H / heads units: the per-position work is on `[B, T, heads]` instead of `[B, T, H]` and G vectors
are pooled, which on a CPU is most of the layer's cost (the weights w_t are then per block; the
candidate keeps all H units). With one head the layer is a gated recency-weighted sum of the items
(weights summing to 1 − Π(1 − z_t) ≤ 1) followed by a Dense layer.

Padding (right-aligned histories: PAD on the left) gets gate logit −1e4 added (in effect −∞ for any
trained gate): z = 0, so it adds
nothing to the sum and does not decay what comes after it — extra PAD on the left changes nothing,
and the exported tower takes histories of any length.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

_PAD_LOGIT = -1e4  # σ(−1e4) = 0 and softplus(−1e4) = 0 in float32, gradients 0 too


class MinGRU(keras.layers.Layer):
    """call(x float [B, T, D], mask float [B, T, 1] (1 = item, 0 = padding)) → h_T `[B, units]`.

    `heads` gates (a divisor of `units`): heads = units is the per-unit minGRU.
    """

    def __init__(self, units: int, heads: int | None = None, **kwargs):
        super().__init__(**kwargs)
        heads = units if heads is None else heads
        if units % heads:
            raise ValueError(f"heads ({heads}) must divide units ({units})")
        self.units, self.heads = units, heads
        self.gate = keras.layers.Dense(heads, name="gate")
        self.candidate = keras.layers.Dense(units, name="candidate")

    def build(self, input_shape):
        self.gate.build(input_shape)
        self.candidate.build(input_shape)
        self.built = True

    def call(self, x, mask):
        steps = ops.shape(x)[1]
        a = self.gate(x)  # gate logits [B, T, G]
        a = a + (1.0 - ops.cast(mask, a.dtype)) * ops.cast(_PAD_LOGIT, a.dtype)  # −1e4 at padding
        a = tf.transpose(a, [0, 2, 1])  # [B, G, T]: T last, so the sums over t below are matmuls
        log_keep = -tf.nn.softplus(a)  # log(1 − z_t)
        # later[b, g, t] = Σ_{s>t} log_keep[b, g, s]: one matmul with the triangle U[s, t] = [s > t].
        later = tf.reshape(tf.matmul(tf.reshape(log_keep, [-1, steps]), _strictly_later(steps, a.dtype)),
                           tf.shape(a))
        weights = tf.exp(a + log_keep + later)  # w_t = z_t Π_{s>t} (1 − z_s)   [B, G, T]
        # The candidate is linear in x_t, so the sum over t is taken first and projected after:
        #   Σ_t w_t (x_t W_h + b_h) = (Σ_t w_t x_t) W_h + (Σ_t w_t) b_h,
        # per gate block — G pooled vectors [B, G, D] instead of T projected ones [B, T, H].
        pooled = tf.matmul(weights, x)  # [B, G, D]
        block = self.units // self.heads
        kernel = tf.transpose(tf.reshape(self.candidate.kernel, [-1, self.heads, block]), [1, 0, 2])  # [G, D, H/G]
        h = tf.transpose(tf.matmul(tf.transpose(pooled, [1, 0, 2]), kernel), [1, 0, 2])  # [B, G, H/G]
        h = h + tf.reduce_sum(weights, axis=-1)[..., None] * tf.reshape(self.candidate.bias, [self.heads, block])
        return tf.reshape(h, [-1, self.units])

    def get_config(self):
        return {**super().get_config(), "units": self.units, "heads": self.heads}


def _strictly_later(steps, dtype=tf.float32) -> tf.Tensor:
    """`[T, T]`: U[s, t] = 1 where s > t (T may be dynamic: serving takes any history length)."""
    idx = tf.range(steps)
    return tf.cast(idx[:, None] > idx[None, :], dtype)
