"""In-batch and mixed negatives (Yi et al. 2019; Yang et al. 2020) behind the same sampler triple.

`in_batch`: the candidate set is the batch's own labels `[B]`. Each column is one draw from the
training item distribution p, so item j's expected count in the set is B·p_j; subtracting
log(B·p_j) keeps popular items — which appear in many batches — from being over-penalised.
The loss's accidental-hit removal (TF's `compute_accidental_hits`, one column per distinct id) then
drops, in every row, one column equal to that row's label — the row's own positive, which is already
the true column. Other rows' copies of the same item stay: they are draws from p like any other
column, and keeping them is what makes Σ_c e^{o_c}/(B·p_c) a consistent estimate of the whole
partition function, so the log Q-corrected gradient converges as B grows (Yi et al.'s batch softmax).

`mixed`: the batch labels plus S candidates from a base sampler with expected counts E_base. An
item's expected count in the combined multiset is B·p_j + E_base(j), used for every column of j.

p comes from training counts, or from Yi et al.'s streaming estimator (`FrequencyEstimator`) that
learns each item's average gap between appearances online, so nothing is counted in advance.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class FrequencyEstimator(tf.Module):
    """Streaming estimate of how often each item appears in a batch (Yi et al. 2019, Algorithm 2).

    For every distinct item j in a batch at global step t, appearing c_j ≥ 1 times:
    gap[j] ← (1-α)·gap[j] + α·(t − last[j]); last[j] ← t; mult[j] ← (1-α)·mult[j] + α·c_j.
    1 / gap[j] estimates the probability that j is in a batch at all, 1 − (1 − p_j)^B (Yi et al.'s
    estimate), and mult[j] the number of copies of j in a batch that holds it, E[c_j | c_j ≥ 1]. Their
    product, mult[j] / gap[j], is the expected number of appearances per batch, B·p_j — the same
    quantity the counted mode uses, also for popular items that repeat within a batch (for which
    1 / gap alone saturates at 1). Updates touch only the batch's items. State is in variables, so it
    is checkpointed with the model and a resumed run continues the estimate.
    """

    def __init__(self, num_items: int, batch_size: int, alpha: float = 0.01, name: str = "frequency"):
        super().__init__(name=name)
        self.alpha = alpha
        # Before an item is seen, assume uniform popularity: one appearance every N/B batches.
        initial_gap = max(num_items / max(batch_size, 1), 1.0)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.last = tf.Variable(tf.zeros([num_items], tf.int64), trainable=False, name="last_step")
        self.gap = tf.Variable(tf.fill([num_items], tf.constant(initial_gap, tf.float32)), trainable=False,
                               name="gap")
        self.mult = tf.Variable(tf.ones([num_items], tf.float32), trainable=False, name="multiplicity")

    def update(self, ids: tf.Tensor) -> None:
        """ids int64 [B] (duplicates allowed: each distinct item is updated once per batch)."""
        self.step.assign_add(1)
        unique_ids, _, copies = tf.unique_with_counts(ids)
        t = self.step
        elapsed = tf.cast(t - tf.gather(self.last, unique_ids), tf.float32)
        new_gap = (1.0 - self.alpha) * tf.gather(self.gap, unique_ids) + self.alpha * elapsed
        new_mult = (1.0 - self.alpha) * tf.gather(self.mult, unique_ids) + self.alpha * tf.cast(copies, tf.float32)
        self.gap.scatter_nd_update(unique_ids[:, None], new_gap)
        self.mult.scatter_nd_update(unique_ids[:, None], new_mult)
        self.last.scatter_nd_update(unique_ids[:, None], tf.fill(tf.shape(unique_ids), t))

    def appearance_probability(self, ids: tf.Tensor) -> tf.Tensor:
        """Estimated probability that each id is in a batch, 1 / gap, float32 [len(ids)]."""
        return 1.0 / tf.maximum(tf.gather(self.gap, ids), 1e-6)

    def expected_count(self, ids: tf.Tensor) -> tf.Tensor:
        """Estimated appearances per batch of each id (B·p_j), float32 [len(ids)]."""
        return tf.gather(self.mult, ids) * self.appearance_probability(ids)


class InBatchSampler(tf.Module):
    """Sampler whose candidates are the batch labels (optionally plus a base sampler's candidates).

    __call__(labels int64 [B, 1], seed=None) → (candidates [B (+S)], true_expected_count [B, 1],
    sampled_expected_count [B (+S)]). `variables` (the streaming estimator's state) are checkpointed.
    """

    uses_batch_labels = True  # with several replicas, the task passes it the global batch's labels

    def __init__(self, item_counts: np.ndarray, base=None, streaming: bool = False, batch_size: int = 1024,
                 alpha: float = 0.01, logq_correction: bool = True, name: str = "in_batch"):
        super().__init__(name=name)
        counts = np.asarray(item_counts, dtype=np.float64)
        self.probs = tf.constant(counts / counts.sum(), tf.float32)  # p_j: training item frequency
        self.base = base
        self.logq_correction = logq_correction
        self.estimator = FrequencyEstimator(len(counts), batch_size, alpha) if streaming else None

    def batch_expected_count(self, ids: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
        """Expected count of each id among B in-batch draws: B·p_j (counted) or the streaming estimate."""
        if self.estimator is not None:
            return self.estimator.expected_count(ids)
        return batch * tf.gather(self.probs, ids)

    def __call__(self, labels: tf.Tensor, seed: tf.Tensor | None = None):
        labels = tf.cast(labels, tf.int64)
        flat = tf.reshape(labels, [-1])  # [B]
        if self.estimator is not None:
            self.estimator.update(flat)
        batch = tf.cast(tf.size(flat), tf.float32)
        in_batch = self.batch_expected_count(flat, batch)  # [B]
        if self.base is None:
            candidates, true_ec, sampled_ec = flat, in_batch[:, None], in_batch
        else:
            # The base sampler reports its expected count for the labels too: exactly E_base for the
            # in-batch columns, since those columns *are* the labels.
            extra, base_true, base_sampled = self.base(labels) if seed is None else self.base(labels, seed)
            extra = tf.cast(extra, tf.int64)
            in_batch_total = in_batch + tf.reshape(base_true, [-1])
            candidates = tf.concat([flat, extra], axis=0)
            sampled_ec = tf.concat([in_batch_total, self.batch_expected_count(extra, batch) + base_sampled], 0)
            true_ec = in_batch_total[:, None]
        if not self.logq_correction:
            true_ec, sampled_ec = tf.ones_like(true_ec), tf.ones_like(sampled_ec)
        return tf.stop_gradient(candidates), tf.stop_gradient(true_ec), tf.stop_gradient(sampled_ec)
