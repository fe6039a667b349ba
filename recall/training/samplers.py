"""Candidate samplers: one small function per sampler, all returning TF's `sampled_values` triple.

A sampler is called once per batch with the labels `[batch, 1]` (int64) — and, for the stateless
samplers of `train.deterministic` (training/stateless.py), a seed `[2]` — and returns

    (sampled_candidates [S] int64, true_expected_count [batch, 1] float32, sampled_expected_count [S] float32)

The S candidates are shared by every row of the batch. `tf.nn.sampled_softmax_loss` subtracts
log(expected_count) from each logit — the importance-sampling (log Q) correction — so the
expected counts must be the sampler's true Q (times the number of tries), or the loss is biased.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

Sampler = Callable[..., tuple[tf.Tensor, tf.Tensor, tf.Tensor]]  # (labels[, seed]) → triple

TF_SAMPLERS = ("log_uniform", "uniform", "unigram", "learned_unigram")
SAMPLERS = TF_SAMPLERS + ("in_batch", "mixed")


def make_sampler(
    kind: str,
    num_sampled: int,
    num_classes: int,
    unique: bool = True,
    item_counts: np.ndarray | None = None,
    distortion: float = 1.0,
    logq_correction: bool = True,
    seed: int | None = None,
    mixed_base: str = "unigram",
    streaming: bool = False,
    batch_size: int = 1024,
    streaming_alpha: float = 0.01,
    stateless: bool = False,
) -> Sampler:
    """Build the sampler named `kind` over `num_classes` items.

    - `log_uniform`: Zipfian Q(id) = log((id+2)/(id+1)) / log(N+1). Only a popularity model because
      internal ids are sorted by training frequency (id 0 = most frequent, see data/split.py).
    - `uniform`: Q = 1/N.
    - `unigram`: Q ∝ count(id) ** distortion from `item_counts` [N] (training frequencies).
    - `learned_unigram`: Q ∝ counts of the labels seen so far in training (TF keeps them).
    - `in_batch`, `mixed`: see training/in_batch.py (the batch's labels, plus `mixed_base` draws).
    With `logq_correction=False` both expected counts are 1, so no correction is applied.
    `stateless=True` swaps TF's ops for training/stateless.py's twins, whose draws are a function of
    the seed passed with each call (so a resumed run replays them); learned_unigram has none.
    """
    if kind in ("in_batch", "mixed"):
        from recall.training.in_batch import InBatchSampler

        if item_counts is None or len(item_counts) != num_classes:
            raise ValueError(f"{kind} sampler needs item_counts of length num_classes")
        base = None
        if kind == "mixed":
            # The base keeps its true expected counts; the mixture applies (or skips) log Q at the end.
            base = make_sampler(mixed_base, num_sampled, num_classes, unique, item_counts, distortion,
                                logq_correction=True, seed=seed, stateless=stateless)
        return InBatchSampler(item_counts, base=base, streaming=streaming, batch_size=batch_size,
                              alpha=streaming_alpha, logq_correction=logq_correction)
    if stateless:
        from recall.training.stateless import StatelessSampler

        if kind == "learned_unigram":
            raise ValueError("learned_unigram keeps its counts inside TF's op and has no stateless twin")
        if kind not in TF_SAMPLERS:
            raise ValueError(f"unknown sampler {kind!r}; choose one of {SAMPLERS}")
        draw = StatelessSampler(kind, num_sampled, num_classes, unique, item_counts, distortion)
        return _with_logq(draw, logq_correction)
    if kind == "learned_unigram" and seed is None and tf.executing_eagerly():
        # TF keeps the learned counts inside the op's kernel. Called eagerly with seed=None, every call
        # gets a fresh kernel (new random op seed), so the counts were lost and Q stayed uniform; a
        # fixed op seed keeps one kernel. (In a tf.function each traced op keeps its own counts.)
        # Drawn from TF's generator so that tf.random.set_seed still makes a run reproducible.
        seed = int(tf.random.uniform([], 1, 2**31 - 1, dtype=tf.int64))
    common = dict(num_true=1, num_sampled=num_sampled, unique=unique, range_max=num_classes, seed=seed)
    if kind == "log_uniform":
        def draw(labels, seed=None):
            return tf.random.log_uniform_candidate_sampler(labels, **common)
    elif kind == "uniform":
        def draw(labels, seed=None):
            return tf.random.uniform_candidate_sampler(labels, **common)
    elif kind == "unigram":
        if item_counts is None or len(item_counts) != num_classes:
            raise ValueError("unigram sampler needs item_counts of length num_classes")
        # Items are in the vocabulary because they occur in train, so every count is ≥ 1.
        unigrams = [float(c) for c in item_counts]

        def draw(labels, seed=None):
            return tf.random.fixed_unigram_candidate_sampler(
                labels, distortion=distortion, unigrams=unigrams, **common
            )
    elif kind == "learned_unigram":
        def draw(labels, seed=None):
            return tf.random.learned_unigram_candidate_sampler(labels, **common)
    else:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {SAMPLERS}")

    return _with_logq(draw, logq_correction)


def _with_logq(draw, logq_correction: bool) -> Sampler:
    """sampler(labels, seed=None): `draw`'s triple, with both expected counts 1 when log Q is off.
    (TF's ops ignore `seed`: their op seed is fixed when the sampler is built.)"""

    def sampler(labels, seed=None):
        sampled, true_expected, sampled_expected = draw(labels, seed)
        if not logq_correction:
            true_expected = tf.ones_like(true_expected)
            sampled_expected = tf.ones_like(sampled_expected)
        return tf.stop_gradient(sampled), tf.stop_gradient(true_expected), tf.stop_gradient(sampled_expected)

    return sampler
