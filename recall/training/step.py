"""The compiled training step. Written as a plain function of (features, labels) so a
`tf.distribute.Strategy` can wrap it with `strategy.run` later."""

from __future__ import annotations

import tensorflow as tf

from recall.model import ItemTower, UserTower
from recall.training.loss import full_softmax, nce, sampled_softmax
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
                 remove_accidental_hits: bool = True):
    """loss_fn(features, labels int64 [B], training, seed) → scalar loss (sampled losses: TF's own ops).

    `seed` int64 [2] keys the stateless samplers' draws (train.deterministic); TF's samplers ignore it."""

    def loss_fn(features, labels, training=True, seed=None):
        queries = user_tower(features, training=training)  # [B, D]
        weights, biases = item_tower.weights_and_biases()  # [N, D], [N]
        if loss_kind == "full_softmax":
            return full_softmax(weights, biases, labels, queries)
        if loss_kind in ("nce", "neg"):
            return nce(weights, biases, labels, queries, sampler, remove_accidental_hits, seed)
        return sampled_softmax(weights, biases, labels, queries, sampler, remove_accidental_hits, seed)

    return loss_fn


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
