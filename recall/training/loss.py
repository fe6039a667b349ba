"""The retrieval losses over the item table: sampled softmax (default), NCE / NEG, and the exact full softmax."""

from __future__ import annotations

import tensorflow as tf

from recall.training.samplers import Sampler


def sampled_softmax(
    weights: tf.Tensor,
    biases: tf.Tensor,
    labels: tf.Tensor,
    queries: tf.Tensor,
    sampler: Sampler,
    remove_accidental_hits: bool = True,
) -> tf.Tensor:
    """Mean sampled-softmax loss with one candidate set shared by the whole batch.

    weights [N, D], biases [N], labels int64 [B], queries [B, D] → scalar. The number of candidates
    is taken from the sampler's output (in-batch samplers return B or B + S of them).
    """
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1, 1])
    sampled_values = sampler(labels)
    per_row = tf.nn.sampled_softmax_loss(
        weights=weights,
        biases=biases,
        labels=labels,
        inputs=queries,
        num_sampled=tf.size(sampled_values[0]),
        num_classes=weights.shape[0],
        num_true=1,
        sampled_values=sampled_values,
        remove_accidental_hits=remove_accidental_hits,
    )
    return tf.reduce_mean(per_row)


def nce(
    weights: tf.Tensor,
    biases: tf.Tensor,
    labels: tf.Tensor,
    queries: tf.Tensor,
    sampler: Sampler,
    remove_accidental_hits: bool = False,
) -> tf.Tensor:
    """Mean NCE loss (`tf.nn.nce_loss`): logistic loss on logit − log(expected count).

    With a sampler whose expected counts are 1 this is word2vec's negative sampling (NEG), which
    does not approach the softmax gradient as the number of samples grows. Shapes as above.
    """
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1, 1])
    sampled_values = sampler(labels)
    per_row = tf.nn.nce_loss(
        weights=weights,
        biases=biases,
        labels=labels,
        inputs=queries,
        num_sampled=tf.size(sampled_values[0]),
        num_classes=weights.shape[0],
        num_true=1,
        sampled_values=sampled_values,
        remove_accidental_hits=remove_accidental_hits,
    )
    return tf.reduce_mean(per_row)


def full_softmax(weights: tf.Tensor, biases: tf.Tensor, labels: tf.Tensor, queries: tf.Tensor) -> tf.Tensor:
    """Exact softmax cross-entropy over all N items: the yardstick the sampled losses approximate.

    weights [N, D], biases [N], labels int [B], queries [B, D] → scalar.
    """
    logits = tf.matmul(queries, weights, transpose_b=True) + biases  # [B, N]
    per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int64), logits=logits)
    return tf.reduce_mean(per_row)
