"""Stateless twins of TF's uniform / log-uniform / unigram candidate samplers (`train.deterministic`).

TF's candidate-sampler ops keep their random stream inside the op's kernel: a run restored from a
checkpoint gets a fresh kernel and replays the stream from its start, so a resumed run samples
different negatives than an uninterrupted one. Here every batch's draws are a pure function of a
seed `[2]` int64 — (config seed, global step) — so the negatives of step t are the same whether the
run was interrupted or not.

Semantics are TF's, draw for draw in distribution (tests/test_sampler_math.py runs the same checks
on both):
- one draw has probability Q(id): uniform 1/N; log-uniform log((id+2)/(id+1)) / log(N+1), sampled
  as floor(exp(u · log(N+1))) − 1; unigram ∝ count^distortion, sampled by inverse CDF;
- `unique=False`: S i.i.d. draws, expected count S·Q(id);
- `unique=True`: draws until S distinct ids were seen (num_tries draws); the candidates are those S
  ids in order of first appearance, and the expected count is TF's `ExpectedCountHelper`: S·Q when
  nothing was rejected (num_tries == S), else the inclusion probability −expm1(num_tries·log1p(−Q)).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf


class StatelessSampler:
    """sampler(labels int64 [B, 1], seed int64 [2]) → (candidates [S], true_expected [B, 1],
    sampled_expected [S]) — the same triple as TF's samplers, deterministic in `seed`."""

    def __init__(self, kind: str, num_sampled: int, num_classes: int, unique: bool = True,
                 item_counts: np.ndarray | None = None, distortion: float = 1.0):
        if kind not in ("uniform", "log_uniform", "unigram"):
            raise ValueError(f"no stateless sampler {kind!r}: use uniform, log_uniform or unigram")
        if unique and num_sampled > num_classes:
            raise ValueError(f"unique sampling of {num_sampled} ids from {num_classes} classes is impossible")
        self.kind, self.num_sampled, self.num_classes, self.unique = kind, num_sampled, num_classes, unique
        if kind == "unigram":
            if item_counts is None or len(item_counts) != num_classes:
                raise ValueError("unigram sampler needs item_counts of length num_classes")
            w = np.asarray(item_counts, np.float64) ** distortion
            self._q = tf.constant(w / w.sum(), tf.float64)  # [N]
            self._cdf = tf.constant(np.cumsum(w) / w.sum(), tf.float64)  # [N], last = 1
        # Draws per round of the unique=True loop: enough for S distinct ids in one round usually.
        self._chunk = max(2 * num_sampled, 64)

    def q(self, ids: tf.Tensor) -> tf.Tensor:
        """Probability of one draw, float64 [len(ids)]."""
        n = self.num_classes
        if self.kind == "uniform":
            return tf.fill(tf.shape(ids), tf.constant(1.0 / n, tf.float64))
        if self.kind == "log_uniform":
            x = tf.cast(ids, tf.float64)
            return tf.math.log((x + 2.0) / (x + 1.0)) / math.log(n + 1.0)
        return tf.gather(self._q, ids)

    def draw(self, seed: tf.Tensor, count: int) -> tf.Tensor:
        """`count` i.i.d. draws from Q, int64 [count]."""
        n = self.num_classes
        if self.kind == "uniform":
            return tf.random.stateless_uniform([count], seed, minval=0, maxval=n, dtype=tf.int64)
        u = tf.random.stateless_uniform([count], seed, dtype=tf.float64)
        if self.kind == "log_uniform":
            ids = tf.cast(tf.floor(tf.exp(u * math.log(n + 1.0))), tf.int64) - 1
        else:  # inverse CDF: the first id whose cumulative probability exceeds u
            ids = tf.searchsorted(self._cdf, u, side="right", out_type=tf.int64)
        return tf.clip_by_value(ids, 0, n - 1)  # float round-off at the top end

    def __call__(self, labels: tf.Tensor, seed: tf.Tensor | None = None):
        if seed is None:
            raise ValueError("a stateless sampler needs a seed [2] per call")
        seed = tf.cast(seed, tf.int64)
        s = self.num_sampled
        if not self.unique:
            sampled = self.draw(seed, s)
            tries = tf.constant(float(s), tf.float64)
        else:
            sampled, tries = self._draw_unique(seed)
        labels = tf.cast(labels, tf.int64)
        true_ec = self._expected_count(self.q(tf.reshape(labels, [-1])), tries)
        sampled_ec = self._expected_count(self.q(sampled), tries)
        return (tf.stop_gradient(sampled), tf.stop_gradient(tf.reshape(true_ec, tf.shape(labels))),
                tf.stop_gradient(sampled_ec))

    def _draw_unique(self, seed):
        """Draw rounds of `chunk` ids (round r from seed folded with r) until S distinct were seen.

        → (the first S distinct ids in order of appearance int64 [S], num_tries float64 scalar)."""
        s = self.num_sampled

        def need_more(r, draws):
            return tf.size(tf.unique(draws)[0]) < s

        def one_more_round(r, draws):
            more = self.draw(tf.random.experimental.stateless_fold_in(seed, r), self._chunk)
            return r + 1, tf.concat([draws, more], 0)

        _, draws = tf.while_loop(need_more, one_more_round, (tf.constant(0, tf.int64), tf.zeros([0], tf.int64)),
                                 shape_invariants=(tf.TensorShape([]), tf.TensorShape([None])))
        distinct, index = tf.unique(draws)  # distinct in order of first appearance
        positions = tf.cast(tf.range(tf.shape(index)[0]), tf.int64)
        first = tf.math.unsorted_segment_min(positions, index, tf.size(distinct))  # [num distinct]
        # The draw that brought the S-th distinct id ends the sampling: num_tries = its position + 1.
        tries = tf.cast(first[s - 1] + 1, tf.float64)
        return tf.ensure_shape(distinct[:s], [s]), tries

    def _expected_count(self, q: tf.Tensor, tries: tf.Tensor) -> tf.Tensor:
        """TF's ExpectedCountHelper: S·q if num_tries == S, else −expm1(num_tries·log1p(−q)). → float32."""
        s = float(self.num_sampled)
        counted = tf.where(tf.equal(tries, s), s * q, -tf.math.expm1(tries * tf.math.log1p(-q)))
        return tf.cast(counted, tf.float32)
