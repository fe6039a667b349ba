"""A minGRU over the latest n history items (recall/model/min_gru.py: gates from each item alone).

Per position: h = Σ_t w_t (x_t W_h + b_h) over the window, w_t = z_t Π_{s>t} (1 − z_s). Because the
gates do not depend on the state, the weight of item s seen from position j is

    w_{j,s} = z_s · exp(Σ_{s<r<j} log(1 − z_r)) = exp(log z_s + C_{j−1} − C_s),  C = cumsum log(1 − z)

for s in the window [j − n, j): the causal form computes every position's weights at once from one
cumulative sum over the chunk, pools with one matmul and projects per gate block — exact.
"""

from __future__ import annotations

import tensorflow as tf

from recall.model.encoders.base import HistoryEncoder, PositionView, SequenceView, band_matrix
from recall.model.min_gru import _PAD_LOGIT, MinGRU


class MinGRUEncoder(HistoryEncoder):
    """minGRU state after the latest `reads` items → [D]; `heads` gates (a divisor of D, None = D)."""

    kind = "min_gru"

    def __init__(self, dim: int, reads: int, heads: int | None = None, **kwargs):
        super().__init__(dim, reads, **kwargs)
        self.heads = heads
        self.min_gru = MinGRU(dim, heads, name="min_gru")

    def per_position(self, view: PositionView, training=False):
        return self.min_gru(*view.window(self.reads))

    def causal(self, view: SequenceView, training=False):
        cell, n, length = self.min_gru, self.reads, view.length
        # Only the columns some labelled position reads: [context − n, S − 1). In them, position l's
        # window is columns l .. l + n − 1 and C_{j−1} is column l + n − 1.
        lo, hi = view.context - n, view.columns - 1
        x, mask = view.emb[:, lo:hi], view.mask[:, lo:hi]  # [C, T, D], [C, T, 1], T = n + L − 1
        a = cell.gate(x) + (1.0 - mask) * _PAD_LOGIT  # gate logits [C, T, G], −1e4 at padding
        a = tf.transpose(a, [0, 2, 1])  # [C, G, T]
        log_keep = -tf.nn.softplus(a)  # log(1 − z)
        log_z = a + log_keep  # log σ(a) = a − softplus(a)
        total = tf.cumsum(log_keep, axis=-1)  # C_s  [C, G, T]
        at_j = total[..., n - 1:n - 1 + length]  # C_{j−1}  [C, G, L]
        # The difference first (both sums can be large; what matters is their gap), then log z_s.
        exponent = (at_j[..., None] - total[..., None, :]) + log_z[..., None, :]  # [C, G, L, T]
        window = tf.constant(band_matrix(length, length + n, n)[:, :-1] > 0)[None, None]  # [1, 1, L, T]
        weights = tf.exp(tf.where(window, exponent, -1e30))  # 0 outside the window, no overflow
        pooled = tf.matmul(weights, x[:, None])  # Σ_s w_{j,s} x_s   [C, G, L, D]
        heads, block = cell.heads, cell.units // cell.heads
        kernel = tf.transpose(tf.reshape(cell.candidate.kernel, [-1, heads, block]), [1, 0, 2])  # [G, D, H/G]
        h = tf.matmul(pooled, kernel[None])  # [C, G, L, H/G]
        h = h + tf.reduce_sum(weights, axis=-1)[..., None] * tf.reshape(cell.candidate.bias, [heads, 1, block])
        return tf.reshape(tf.transpose(h, [0, 2, 1, 3]), [-1, length, cell.units])

    def get_config(self):
        return {**super().get_config(), "heads": self.heads}
