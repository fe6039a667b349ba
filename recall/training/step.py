"""The compiled training step: batch → rows (queries, labels, weights) → the retrieval task's loss →
one optimizer update. Written as plain functions of the batch so a `tf.distribute.Strategy` can wrap
them with `strategy.run`."""

from __future__ import annotations

import tensorflow as tf

from recall.model import ItemTower, UserTower
from recall.training.task import RetrievalTask


def trainable_variables(user_tower: UserTower, item_tower: ItemTower) -> list:
    """Both towers' trainable variables, each once (a tied table belongs to both towers)."""
    seen, out = set(), []
    for v in user_tower.trainable_variables + item_tower.trainable_variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def make_loss_fn(user_tower, task: RetrievalTask, batching: str = "positions", splits: int = 1):
    """loss_fn(features, labels, weights=None, training=True, seed=None) → scalar: the batch's rows
    through `task` (training/task.py), normalised by the number of rows (labelled positions).

    positions: features are per-position inputs, labels [B], weights [B]; the tower runs per row.
    sequences: features are chunks (training/inputs.py SequenceBatcher), labels/weights [C, L]; the
    tower runs causally over each chunk and only its labelled positions become rows.

    `splits` > 1 (train.batch_splits): the user tower runs on `splits` parts of the batch (rows, or
    chunks), which TF executes concurrently on separate cores (the step's ops are too small for
    intra-op threads to keep two cores busy). The candidates are drawn once for the whole batch and
    shared by the parts: the same loss and gradient as one pass, up to float summation order — only
    dropout draws its masks per part. `seed` int64 [2] keys the stateless samplers' draws.
    `normalizer` (several replicas): the rows of the global batch, which this replica's loss is divided
    by instead of its own rows, so the replicas' losses (and gradients) sum to the global batch's.
    """

    def loss_fn(features, labels, weights=None, training=True, seed=None, normalizer=None):
        rows = []
        for part_features, part_labels, part_weights in _split_batch(features, labels, weights, splits):
            if batching == "sequences":
                where = tf.where(part_features["labelled"])  # [r, 2]
                queries = user_tower.causal(part_features, training=training)  # [r, D]
                part_labels = tf.gather_nd(part_labels, where)
                part_weights = None if part_weights is None else tf.gather_nd(part_weights, where)
            else:
                queries = user_tower(part_features, training=training)  # [b, D]
            rows.append((queries, part_labels, part_weights))
        return task.loss(rows, seed, normalizer)

    return loss_fn


def _split_batch(features: dict, labels, weights, splits: int) -> list:
    """[(features, labels, weights)] of `splits` consecutive near-equal parts of a batch (rows, or
    chunks) whose size is static (the training block's batches are); one part when it is not, or is
    smaller than `splits`."""
    size = labels.shape[0]
    if splits <= 1 or size is None or size < splits:
        return [(features, labels, weights)]
    bounds = [round(i * size / splits) for i in range(splits + 1)]
    return [({k: v[lo:hi] for k, v in features.items()}, labels[lo:hi], None if weights is None else weights[lo:hi])
            for lo, hi in zip(bounds, bounds[1:])]


def _update(loss_fn, variables: list, optimizer, features, labels, weights, seed, normalizer=None, reduce=None):
    """One optimizer update on one batch → the batch's loss (scalar). Inside `strategy.run` the
    replicas' gradients are summed before the mirrored variables are updated: by Keras' optimizers
    themselves (dense all-reduced, IndexedSlices all-gathered), or by `reduce` (distributed/replicas.py
    `sum_over_replicas`, for recall's row-wise optimizers)."""
    with tf.GradientTape() as tape:
        loss = loss_fn(features, labels, weights, training=True, seed=seed, normalizer=normalizer)
    grads = tape.gradient(loss, variables)
    if reduce is not None:
        grads = reduce(grads)
    optimizer.apply_gradients(zip(grads, variables))
    return loss


def make_train_block(batcher, loss_fn, variables: list, optimizer, seed: int, strategy=None, replica: int = 0,
                     sharded: bool = False):
    """train_block(idx int64 [K, B], first_step int64) → losses float32 [K]: K updates in one call.

    With a `strategy` (tf.distribute.MultiWorkerMirroredStrategy) `idx` is the GLOBAL batch on every
    worker: each step runs through `strategy.run`, where this worker's replica (`replica`: its index in
    the cluster, chief 0, distributed/cluster.py) takes its slice of the
    batch (distributed/replicas.py) and normalises its loss by the global batch's rows
    (`batcher.rows(idx[k])`); the returned losses are the global batch's (summed over replicas).

    `sharded` (data.shard_by_user: each worker holds only its users' examples): `idx` [K, b] is this
    worker's OWN part of each global batch, indices into its own examples; the global batch's rows are
    summed over the workers inside the step (one int64 all-reduce), and the block returns
    (losses [K], global rows [K]) — the rows so the loop can count the job's examples.

    Step k gathers its batch in-graph (`batcher(idx[k])`, training/inputs.py) and draws its negatives
    with seed [seed, first_step + k], so a step's randomness depends only on its global step number —
    the same whether the run was resumed or not, whatever K. Running K steps per call removes the
    Python round trip (and the host sync on the loss) between steps.

    The K steps are unrolled in the graph (one trace per block shape; the loop uses three), not a
    `tf.while_loop`: inside a while loop every gather from a table that has been updated row-wise
    (TF then keeps it in copy-on-read mode) costs a copy of the whole table — a scratch timing gave
    54 ms per step at 1M items against 21 ms unrolled (benchmarks/RESULTS.md).
    """

    if strategy is not None:
        return _make_replicated_block(batcher, loss_fn, variables, optimizer, seed, strategy, replica, sharded)

    @tf.function
    def train_block(idx, first_step):
        losses = []
        for k in range(idx.shape[0]):
            features, labels, weights = batcher(idx[k])
            step_seed = tf.stack([tf.constant(seed, tf.int64), first_step + k])
            losses.append(_update(loss_fn, variables, optimizer, features, labels, weights, step_seed))
        return tf.stack(losses)

    return train_block


def _make_replicated_block(batcher, loss_fn, variables: list, optimizer, seed: int, strategy, replica: int,
                           sharded: bool = False):
    """`make_train_block` under a strategy with one replica per worker (CPU workers)."""
    import keras

    from recall.distributed.replicas import global_sum, replica_slice, sum_over_replicas

    if len(strategy.extended.worker_devices) != 1:
        raise ValueError("recall's data-parallel step expects one replica (device) per worker")
    replicas = strategy.num_replicas_in_sync
    # Keras' optimizers sum the replicas' gradients in apply_gradients; recall's row-wise ones do not.
    reduce = None if isinstance(optimizer, keras.optimizers.Optimizer) else sum_over_replicas

    def replica_step(local_idx, step_seed, normalizer):
        features, labels, weights = batcher(local_idx)
        return _update(loss_fn, variables, optimizer, features, labels, weights, step_seed, normalizer, reduce)

    def sharded_step(local_idx, step_seed):
        rows = global_sum(batcher.rows(local_idx))  # the global batch's rows: every worker's part
        return replica_step(local_idx, step_seed, rows), rows

    @tf.function
    def train_block(idx, first_step):
        losses, rows = [], []
        for k in range(idx.shape[0]):
            step_seed = tf.stack([tf.constant(seed, tf.int64), first_step + k])
            if sharded:
                local, global_rows = strategy.run(sharded_step, args=(idx[k], step_seed))
                rows.append(strategy.experimental_local_results(global_rows)[0])
            else:
                normalizer = batcher.rows(idx[k])  # rows of the global batch
                local = strategy.run(replica_step, args=(replica_slice(idx[k], replicas, replica), step_seed,
                                                         normalizer))
            losses.append(strategy.reduce(tf.distribute.ReduceOp.SUM, local, axis=None))
        return (tf.stack(losses), tf.stack(rows)) if sharded else tf.stack(losses)

    return train_block
