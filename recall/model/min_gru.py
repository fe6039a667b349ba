"""minGRU over the most recent history items, computed in parallel (Feng et al. 2024, "Were RNNs All
We Needed?").

A GRU whose gate and candidate depend on the current item only, not on the previous state:

    z_t = σ(x_t W_z + b_z)            update gate   [B, T, H]
    h̃_t = x_t W_h + b_h               candidate     [B, T, H]
    h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t,   h_0 = 0

Without h_{t−1} inside the gates the recurrence unrolls into a weighted sum:

    h_T = Σ_t  z_t ⊙ Π_{s>t} (1 − z_s) ⊙ h̃_t

so the whole encoder is one matmul over all T positions (`[B·T, D] × [D, 2H]`) and elementwise work,
where a GRU runs T dependent steps of small matmuls — the shipped ML-1M config spent ~70 % of its
step in Keras' GRU. The products are taken in log space, log(1 − σ(a)) = −softplus(a), as a reverse
cumulative sum (exact, no underflow for long windows).

Padding (right-aligned histories: PAD on the left) gets z = 0: it adds nothing to the sum and does
not decay what comes after it, so extra PAD on the left changes nothing — the exported tower takes
histories of any length.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


class MinGRU(keras.layers.Layer):
    """call(x float [B, T, D], mask float [B, T, 1] (1 = item, 0 = padding)) → h_T `[B, units]`."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        # One Dense for gate and candidate: a single [D, 2H] matmul over every position.
        self.projection = keras.layers.Dense(2 * units, name="projection")

    def build(self, input_shape):
        self.projection.build(input_shape)
        self.built = True

    def call(self, x, mask):
        gate_logits, candidate = ops.split(self.projection(x), 2, axis=-1)  # [B, T, H] each
        log_z = -ops.softplus(-gate_logits) * mask  # log σ(a); 0 at padding (masked by z below)
        log_keep = -ops.softplus(gate_logits) * mask  # log(1 − σ(a)); 0 at padding: no decay
        # Σ_{s>t} log(1 − z_s): the reverse cumulative sum, exclusive of t itself.
        later = tf.cumsum(log_keep, axis=1, reverse=True, exclusive=True)
        weights = ops.exp(log_z + later) * mask  # z_t Π_{s>t}(1 − z_s), [B, T, H]
        return ops.sum(weights * candidate, axis=1)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
