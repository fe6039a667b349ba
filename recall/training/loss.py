"""The retrieval losses over the item table: sampled softmax (default), NCE / NEG, and the exact full softmax.

Every sampled loss is TensorFlow's own op — `tf.nn.sampled_softmax_loss` or `tf.nn.nce_loss` — fed
with the sampler's `sampled_values` triple, whatever the sampler (TF's, in-batch or mixed).

Accidental hits with duplicate candidates. In-batch labels and unique=False draws can hold the same
item several times. TF's `compute_accidental_hits` flags one candidate column per distinct id, so
`remove_accidental_hits` masks exactly one copy of the row's label (all copies have the same logit
and count, so which one does not matter). For in-batch negatives this is Yi et al. (2019)'s batch
softmax: the row's own column is the positive, and the other rows' copies of the same item stay in
the denominator as legitimate draws from p, so Σ_candidates e^{o_c}/E_c keeps estimating the whole
partition function Z, the positive's own mass included, and the gradient bias shrinks as the batch
grows. Masking *every* copy instead estimates Z − e^{o_y}: a bias of the order of the model's
probability for the positive that does not shrink with the batch (measured on in-batch negatives:
relative gradient bias 0.091 at B=500 with every copy masked, against 0.019 for Yi et al.'s form;
TF's removal matches Yi et al.'s gradient to 2e-7). tests/test_sampler_math.py checks that recall's
in-batch loss is Yi et al.'s batch softmax and that its gradient bias shrinks with B.
"""

from __future__ import annotations

import tensorflow as tf

from recall.training.samplers import Sampler


def draw_candidates(sampler: Sampler, labels, seed=None):
    """labels int [B] → (labels int64 [B, 1], the sampler's (sampled [S], true_expected [B, 1],
    sampled_expected [S]) triple): one candidate set for the whole batch (drawn with `seed` [2] when
    given: the stateless samplers need one)."""
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1, 1])
    return labels, (sampler(labels) if seed is None else sampler(labels, seed))


def sampled_loss_per_row(op, weights, biases, labels, queries, sampled_values, remove_accidental_hits):
    """TF's sampled loss `op` (`tf.nn.sampled_softmax_loss` or `tf.nn.nce_loss`) per row, `[b]`, for
    labels int64 [b, 1] and queries [b, D] against a drawn candidate set (`draw_candidates`; its
    true_expected holds these b rows). A batch split into parts shares one candidate set this way."""
    return op(weights=weights, biases=biases, labels=labels, inputs=queries,
              num_sampled=tf.size(sampled_values[0]), num_classes=weights.shape[0], num_true=1,
              sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits)


def _mean_sampled_loss(op, weights, biases, labels, queries, sampler, remove_accidental_hits, seed=None):
    """Mean over the batch of a TF sampled loss `op`, one candidate set from `sampler` for all rows."""
    labels, sampled_values = draw_candidates(sampler, labels, seed)
    return tf.reduce_mean(sampled_loss_per_row(op, weights, biases, labels, queries, sampled_values,
                                               remove_accidental_hits))


def sampled_softmax(
    weights: tf.Tensor,
    biases: tf.Tensor,
    labels: tf.Tensor,
    queries: tf.Tensor,
    sampler: Sampler,
    remove_accidental_hits: bool = True,
    seed: tf.Tensor | None = None,
) -> tf.Tensor:
    """Mean of `tf.nn.sampled_softmax_loss` with one candidate set shared by the whole batch.

    weights [N, D], biases [N], labels int64 [B], queries [B, D] → scalar. The number of candidates
    is taken from the sampler's output (in-batch samplers return B or B + S of them). Row r's logits
    are [o_{r,y_r} − log E_{y_r}] ++ [o_{r,c} − log E_c for each candidate c]; with
    `remove_accidental_hits` one column per id equal to y_r is masked — for in-batch negatives,
    exactly Yi et al.'s form (see the module docstring for why one copy, not all).
    """
    return _mean_sampled_loss(tf.nn.sampled_softmax_loss, weights, biases, labels, queries, sampler,
                              remove_accidental_hits, seed)


def nce(
    weights: tf.Tensor,
    biases: tf.Tensor,
    labels: tf.Tensor,
    queries: tf.Tensor,
    sampler: Sampler,
    remove_accidental_hits: bool = False,
    seed: tf.Tensor | None = None,
) -> tf.Tensor:
    """Mean of `tf.nn.nce_loss`: logistic loss on logit − log(expected count), target 1 for the
    label's column and 0 for each candidate's, summed over the columns of a row.

    With a sampler whose expected counts are 1 this is word2vec's negative sampling (NEG), which
    does not approach the softmax gradient as the number of samples grows. Shapes as in
    `sampled_softmax`. `remove_accidental_hits` defaults to False, as in TF (textbook NCE); when on,
    TF masks one candidate column per id equal to the label (a masked column contributes nothing).
    """
    return _mean_sampled_loss(tf.nn.nce_loss, weights, biases, labels, queries, sampler, remove_accidental_hits, seed)


def full_softmax_per_row(weights, biases, labels, queries):
    """Exact softmax cross-entropy over all N items, per row: weights [N, D], biases [N], labels int [R],
    queries [R, D] → [R]. The yardstick the sampled losses approximate."""
    logits = tf.matmul(queries, weights, transpose_b=True) + biases  # [R, N]
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(tf.reshape(labels, [-1]), tf.int64),
                                                          logits=logits)


def full_softmax(weights: tf.Tensor, biases: tf.Tensor, labels: tf.Tensor, queries: tf.Tensor) -> tf.Tensor:
    """Mean of `full_softmax_per_row`: weights [N, D], biases [N], labels int [B], queries [B, D] → scalar."""
    return tf.reduce_mean(full_softmax_per_row(weights, biases, labels, queries))
