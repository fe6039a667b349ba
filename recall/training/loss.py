"""The retrieval losses over the item table: sampled softmax (default), NCE / NEG, and the exact full softmax."""

from __future__ import annotations

import tensorflow as tf

from recall.training.samplers import Sampler


def sampled_logits(
    weights: tf.Tensor,
    biases: tf.Tensor,
    labels: tf.Tensor,
    queries: tf.Tensor,
    sampled_values,
    remove_accidental_hits: bool = True,
) -> tf.Tensor:
    """TF's `_compute_sampled_logits` (one true class, log Q subtracted), removing *every* accidental hit.

    weights [N, D], biases [N], labels int64 [B, 1], queries [B, D], sampled_values = (candidates [S],
    true_expected_count [B, 1], sampled_expected_count [S]) → logits [B, 1 + S]: column 0 is the row's
    label, q·w_y + b_y − log(true count); column 1 + c is candidate c, q·w_c + b_c − log(count of c).
    With `remove_accidental_hits`, every column whose candidate equals the row's label gets TF's mask
    value (the float32 minimum). TF's own `compute_accidental_hits` keeps one position per distinct
    candidate, so with duplicate candidates — in-batch labels, unique=False draws — it masked only the
    last copy and left the others in as negatives of their own positive.
    """
    candidates, true_expected, sampled_expected = (tf.stop_gradient(v) for v in sampled_values)
    candidates = tf.cast(candidates, tf.int64)
    labels_flat = tf.reshape(labels, [-1])
    dtype = queries.dtype
    true_w = tf.cast(tf.gather(weights, labels_flat), dtype)  # [B, D]
    sampled_w = tf.cast(tf.gather(weights, candidates), dtype)  # [S, D]
    true_logits = tf.reduce_sum(queries * true_w, axis=1, keepdims=True) + tf.cast(
        tf.gather(biases, labels_flat), dtype)[:, None]  # [B, 1]
    logits = tf.matmul(queries, sampled_w, transpose_b=True) + tf.cast(
        tf.gather(biases, candidates), dtype)[None, :]  # [B, S]
    true_logits -= tf.math.log(tf.cast(true_expected, dtype))
    logits -= tf.math.log(tf.cast(sampled_expected, dtype))[None, :]
    if remove_accidental_hits:
        hits = tf.equal(tf.reshape(labels_flat, [-1, 1]), candidates[None, :])  # [B, S]
        logits = tf.where(hits, tf.constant(dtype.min, dtype), logits)
    return tf.concat([true_logits, logits], axis=1)


def sampled_softmax(
    weights: tf.Tensor,
    biases: tf.Tensor,
    labels: tf.Tensor,
    queries: tf.Tensor,
    sampler: Sampler,
    remove_accidental_hits: bool = True,
    distinct_candidates: bool = False,
) -> tf.Tensor:
    """Mean sampled-softmax loss with one candidate set shared by the whole batch.

    weights [N, D], biases [N], labels int64 [B], queries [B, D] → scalar. The number of candidates
    is taken from the sampler's output (in-batch samplers return B or B + S of them).
    When the sampler guarantees distinct candidates (TF's samplers with unique=True) this is
    `tf.nn.sampled_softmax_loss(..., sampled_values=sampler(labels))` itself. Otherwise (in-batch
    labels, unique=False draws) the same logits come from `sampled_logits`, which removes the
    accidental hit in every duplicate column, not only the last one as TF does.
    """
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1, 1])
    sampled_values = sampler(labels)
    if distinct_candidates:
        return tf.reduce_mean(tf.nn.sampled_softmax_loss(
            weights=weights, biases=biases, labels=labels, inputs=queries,
            num_sampled=tf.size(sampled_values[0]), num_classes=weights.shape[0], num_true=1,
            sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits))
    logits = sampled_logits(weights, biases, labels, queries, sampled_values, remove_accidental_hits)
    per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.zeros(tf.shape(logits)[:1], tf.int64), logits=logits)  # the label is column 0
    return tf.reduce_mean(per_row)


def nce(
    weights: tf.Tensor,
    biases: tf.Tensor,
    labels: tf.Tensor,
    queries: tf.Tensor,
    sampler: Sampler,
    remove_accidental_hits: bool = False,
    distinct_candidates: bool = False,
) -> tf.Tensor:
    """Mean NCE loss (`tf.nn.nce_loss`): logistic loss on logit − log(expected count), target 1 for
    the label's column and 0 for each candidate's, summed over the columns of a row.

    With a sampler whose expected counts are 1 this is word2vec's negative sampling (NEG), which
    does not approach the softmax gradient as the number of samples grows. Shapes as above; hits are
    removed as in `sampled_logits` (a masked column contributes nothing). With distinct candidates
    this is `tf.nn.nce_loss` itself.
    """
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1, 1])
    sampled_values = sampler(labels)
    if distinct_candidates:
        return tf.reduce_mean(tf.nn.nce_loss(
            weights=weights, biases=biases, labels=labels, inputs=queries,
            num_sampled=tf.size(sampled_values[0]), num_classes=weights.shape[0], num_true=1,
            sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits))
    logits = sampled_logits(weights, biases, labels, queries, sampled_values, remove_accidental_hits)
    targets = tf.concat([tf.ones_like(logits[:, :1]), tf.zeros_like(logits[:, 1:])], axis=1)
    per_row = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits), axis=1)
    return tf.reduce_mean(per_row)


def full_softmax(weights: tf.Tensor, biases: tf.Tensor, labels: tf.Tensor, queries: tf.Tensor) -> tf.Tensor:
    """Exact softmax cross-entropy over all N items: the yardstick the sampled losses approximate.

    weights [N, D], biases [N], labels int [B], queries [B, D] → scalar.
    """
    logits = tf.matmul(queries, weights, transpose_b=True) + biases  # [B, N]
    per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int64), logits=logits)
    return tf.reduce_mean(per_row)
