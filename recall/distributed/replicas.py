"""Per-replica pieces of a data-parallel step (inside `strategy.run`).

Every worker gets the same global batch of example (or chunk) indices, a pure function of (seed,
epoch, step); replica r of R takes the r-th of R consecutive near-equal slices (`replica_slice`).
The loss of a replica is normalised by the rows of the GLOBAL batch, so the gradients summed over
replicas (the strategy's all-reduce) are the single-process gradients.

With data.shard_by_user a worker holds only its users' examples and its batch is its own part of the
global batch (training/loop.py `shard_epoch_order`): no slicing, and the global batch's rows are the
sum of every replica's (`global_sum`).
"""

from __future__ import annotations

import tensorflow as tf


def slice_bounds(size: int, parts: int, part: int) -> tuple[int, int]:
    """[lo, hi) of part `part` of `parts` consecutive near-equal slices of `size` rows (sizes differ by ≤ 1)."""
    return (part * size) // parts, ((part + 1) * size) // parts


def replica_slice(idx, num_replicas: int, replica: int):
    """idx [B] (static B) → this replica's slice [hi - lo] of it."""
    lo, hi = slice_bounds(int(idx.shape[0]), num_replicas, replica)
    return idx[lo:hi]


def _on_device(ctx, values):
    """`values` as an int64 tensor placed on this replica's device (collectives need a device)."""
    extended = ctx.strategy.extended
    device = extended.worker_devices[0] if len(extended.worker_devices) == 1 else None
    with tf.device(device):
        return tf.identity(tf.cast(values, tf.int64))


def global_sum(value):
    """Inside `strategy.run`: an int64 scalar (this replica's rows) → its sum over every replica."""
    ctx = tf.distribute.get_replica_context()
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, _on_device(ctx, value))


def gather_global_rows(values):
    """Inside `strategy.run`: this replica's rows `values` [r] → (every replica's rows concatenated in
    replica order [R_global] int64, offset of this replica's first row int64 scalar).

    Sizes may differ between replicas (TF pads them). Both tensors are int64: CPU collectives of int32
    fail in TF 2.21, and the input is placed on the replica's device first — a tensor without a device
    makes the all-gather fail with "destinations can not be empty".
    """
    ctx = tf.distribute.get_replica_context()
    extended = ctx.strategy.extended
    device = extended.worker_devices[0] if len(extended.worker_devices) == 1 else None
    with tf.device(device):
        local = tf.identity(tf.cast(tf.reshape(values, [-1]), tf.int64))  # [r]
        size = tf.reshape(tf.size(local, out_type=tf.int64), [1])  # [1]
    everyone = ctx.all_gather(local, axis=0)  # [R_global]
    sizes = ctx.all_gather(size, axis=0)  # [num_replicas]
    offset = tf.reduce_sum(sizes[:ctx.replica_id_in_sync_group])
    return everyone, offset


def sum_over_replicas(grads: list) -> list:
    """Inside `strategy.run`: this replica's gradients → every replica's, summed, for an optimizer
    that does not reduce them itself (recall's row-wise `lazy_adam` / `lazy_adagrad`; Keras' optimizers
    do this inside `apply_gradients`).

    Dense gradients are all-reduced in one batched call; a `tf.IndexedSlices` gradient is all-gathered
    as it is — ids (int64) and rows, repeated ids included — and the optimizer sums repeated rows as
    it does on one process. Every replica then holds the same gradients and makes the same update to
    its copy of the (ON_WRITE, aggregation NONE) mirrored variables and slots, so the copies stay equal.
    """
    ctx = tf.distribute.get_replica_context()
    extended = ctx.strategy.extended
    device = extended.worker_devices[0] if len(extended.worker_devices) == 1 else None
    out = list(grads)
    dense = [i for i, g in enumerate(grads) if g is not None and not isinstance(g, tf.IndexedSlices)]
    if dense:
        with tf.device(device):
            local = [tf.identity(grads[i]) for i in dense]
        for i, total in zip(dense, ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)):
            out[i] = total
    for i, g in enumerate(grads):
        if isinstance(g, tf.IndexedSlices):
            ids, _ = gather_global_rows(g.indices)
            with tf.device(device):
                rows = tf.identity(g.values)
            out[i] = tf.IndexedSlices(ctx.all_gather(rows, axis=0), ids, g.dense_shape)
    return out
