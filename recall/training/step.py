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
    """loss_fn(features, labels int64 [B], training) → scalar loss (sampled losses: TF's own ops)."""

    def loss_fn(features, labels, training=True):
        queries = user_tower(features, training=training)  # [B, D]
        weights, biases = item_tower.weights_and_biases()  # [N, D], [N]
        if loss_kind == "full_softmax":
            return full_softmax(weights, biases, labels, queries)
        if loss_kind in ("nce", "neg"):
            return nce(weights, biases, labels, queries, sampler, remove_accidental_hits)
        return sampled_softmax(weights, biases, labels, queries, sampler, remove_accidental_hits)

    return loss_fn


def make_train_step(loss_fn, variables: list, optimizer):
    """train_step(features, labels) → loss, one optimizer update. Traced once per input signature."""

    @tf.function(reduce_retracing=True)
    def train_step(features, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(features, labels, training=True)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    return train_step
