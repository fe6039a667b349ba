"""A minGRU over the latest n history items (recall/model/min_gru.py: gates from each item alone).

Per position: h = Σ_t w_t (x_t W_h + b_h) over the window, w_t = z_t Π_{s>t} (1 − z_s). Because the
gates do not depend on the state, the weight of item s seen from position j is

    w_{j,s} = z_s · exp(Σ_{s<r<j} log(1 − z_r)) = exp(log z_s + C_{j−1} − C_s),  C = cumsum log(1 − z)

for s in the window [j − n, j): the causal form computes every position's weights at once from one
cumulative sum over the chunk, pools with one matmul and projects per gate block — exact.
"""

from __future__ import annotations

import tensorflow as tf

from recall.model.encoders.base import HistoryEncoder, PositionView, SequenceView
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
        cell, x, length = self.min_gru, view.emb, view.length
        a = cell.gate(x) + (1.0 - view.mask) * _PAD_LOGIT  # gate logits [C, S, G], −1e4 at padding
        log_keep = -tf.nn.softplus(a)  # log(1 − z)
        log_z = a + log_keep  # log σ(a) = a − softplus(a)
        total = tf.cumsum(log_keep, axis=1)  # C_s  [C, S, G]
        at_j = total[:, view.context - 1:view.context - 1 + length]  # C_{j−1}  [C, L, G]
        # The difference first (both sums can be large; what matters is their gap), then log z_s.
        exponent = (at_j[:, :, None] - total[:, None]) + log_z[:, None]  # [C, L, S, G]
        band = view.band(self.reads)[None, :, :, None] > 0
        weights = tf.exp(tf.where(band, exponent, -1e30))  # 0 outside the window, no overflow
        heads, block = cell.heads, cell.units // cell.heads
        pooled = tf.einsum("clsg,csd->clgd", weights, x)  # [C, L, G, D]
        kernel = tf.transpose(tf.reshape(cell.candidate.kernel, [-1, heads, block]), [1, 0, 2])  # [G, D, H/G]
        h = tf.einsum("clgd,gdk->clgk", pooled, kernel)
        h = h + tf.reduce_sum(weights, axis=2)[..., None] * tf.reshape(cell.candidate.bias, [heads, block])
        return tf.reshape(h, [-1, length, cell.units])

    def get_config(self):
        return {**super().get_config(), "heads": self.heads}
