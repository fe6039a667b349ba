"""The compiled training step. Written as a plain function of (features, labels) so a
`tf.distribute.Strategy` can wrap it with `strategy.run` later."""

from __future__ import annotations

import tensorflow as tf

from recall.model import ItemTower, UserTower
from recall.training.loss import (
    draw_candidates,
    full_softmax,
    nce,
    sampled_loss_per_row,
    sampled_softmax,
)
from recall.training.samplers import Sampler


def trainable_variables(user_tower: UserTower, item_tower: ItemTower) -> list:
    """Both towers' trainable variables, each once (a tied table belongs to both towers)."""
    seen, out = set(), []
    for v in user_tower.trainable_variables + item_tower.trainable_variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def make_loss_fn(user_tower, item_tower, loss_kind: str, sampler: Sampler | None,
                 remove_accidental_hits: bool = True, splits: int = 1):
    """loss_fn(features, labels int64 [B], training, seed) → scalar loss (sampled losses: TF's own ops).

    `seed` int64 [2] keys the stateless samplers' draws (train.deterministic); TF's samplers ignore it.

    `splits` > 1 (train.batch_splits): the user tower runs on `splits` parts of the batch, which TF
    executes concurrently on separate cores (the step's ops are too small for intra-op threads to
    keep two cores busy). The candidates are drawn once for the whole batch and shared by the parts,
    and the loss is the sum of the parts' per-row losses over B: the same loss and gradient as one
    pass, up to float summation order — only dropout draws its masks per part.
    """
    sampled_op = tf.nn.nce_loss if loss_kind in ("nce", "neg") else tf.nn.sampled_softmax_loss

    def loss_fn(features, labels, training=True, seed=None):
        weights, biases = item_tower.weights_and_biases()  # [N, D], [N]
        parts = _split_batch(features, labels, splits)
        if len(parts) == 1:
            queries = user_tower(features, training=training)  # [B, D]
            if loss_kind == "full_softmax":
                return full_softmax(weights, biases, labels, queries)
            if loss_kind in ("nce", "neg"):
                return nce(weights, biases, labels, queries, sampler, remove_accidental_hits, seed)
            return sampled_softmax(weights, biases, labels, queries, sampler, remove_accidental_hits, seed)
        total = 0.0
        if loss_kind == "full_softmax":
            for part_features, part_labels, _ in parts:
                queries = user_tower(part_features, training=training)
                total += full_softmax(weights, biases, part_labels, queries) * part_labels.shape[0]
            return total / labels.shape[0]
        all_labels, (sampled, true_expected, sampled_expected) = draw_candidates(sampler, labels, seed)
        for part_features, _, rows in parts:
            queries = user_tower(part_features, training=training)
            total += tf.reduce_sum(sampled_loss_per_row(
                sampled_op, weights, biases, all_labels[rows], queries,
                (sampled, true_expected[rows], sampled_expected), remove_accidental_hits))
        return total / labels.shape[0]

    return loss_fn


def _split_batch(features: dict, labels, splits: int) -> list:
    """[(features, labels, row slice)] of `splits` consecutive near-equal parts of a batch whose size
    is static (the training block's batches are); one part when it is not, or is smaller than `splits`."""
    size = labels.shape[0]
    if splits <= 1 or size is None or size < splits:
        return [(features, labels, slice(None))]
    bounds = [round(i * size / splits) for i in range(splits + 1)]
    return [({k: v[lo:hi] for k, v in features.items()}, labels[lo:hi], slice(lo, hi))
            for lo, hi in zip(bounds, bounds[1:])]


def _update(loss_fn, variables: list, optimizer, features, labels, seed):
    """One optimizer update on one batch → the batch's loss (scalar)."""
    with tf.GradientTape() as tape:
        loss = loss_fn(features, labels, training=True, seed=seed)
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(grads, variables))
    return loss


def make_train_step(loss_fn, variables: list, optimizer):
    """train_step(features, labels, seed=None) → loss, one optimizer update. Traced once per signature."""

    @tf.function(reduce_retracing=True)
    def train_step(features, labels, seed=None):
        return _update(loss_fn, variables, optimizer, features, labels, seed)

    return train_step


def make_train_block(batcher, loss_fn, variables: list, optimizer, seed: int):
    """train_block(idx int64 [K, B], first_step int64) → losses float32 [K]: K updates in one call.

    Step k gathers its batch in-graph (`batcher(idx[k])`, training/inputs.py) and draws its negatives
    with seed [seed, first_step + k], so a step's randomness depends only on its global step number —
    the same whether the run was resumed or not, whatever K. Running K steps per call removes the
    Python round trip (and the host sync on the loss) between steps.

    The K steps are unrolled in the graph (one trace per block shape; the loop uses three), not a
    `tf.while_loop`: inside a while loop every gather from a table that has been updated row-wise
    (TF then keeps it in copy-on-read mode) costs a copy of the whole table — a scratch timing gave
    54 ms per step at 1M items against 21 ms unrolled (benchmarks/RESULTS.md).
    """

    @tf.function
    def train_block(idx, first_step):
        losses = []
        for k in range(idx.shape[0]):
            features, labels = batcher(idx[k])
            step_seed = tf.stack([tf.constant(seed, tf.int64), first_step + k])
            losses.append(_update(loss_fn, variables, optimizer, features, labels, step_seed))
        return tf.stack(losses)

    return train_block
