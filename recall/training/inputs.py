"""Model input: shuffled example indices → batches of (features, labels), gathered in-graph.

Examples are stored as (label position, history length) into the flat train sequence (see
data/examples.py); the `[batch, max_history]` history matrix is built per batch, so memory stays
O(interactions), not O(interactions × max_history). The gathering runs inside the compiled training
block (training/step.py `make_train_block`), so there is no separate input pipeline for the step to
wait on: it costs ~1 % of a step (benchmarks/throughput.py measures it).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from recall.data.examples import PAD, Examples


def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The example order of one epoch: a permutation fixed by (seed, epoch), so a resumed run replays it."""
    if not shuffle:
        return np.arange(num_examples, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int64)


def epoch_blocks(order: np.ndarray, batch_size: int, done: int, steps_per_block: int, step: int,
                 checkpoint_every: int = 0):
    """The epoch's remaining batches as blocks for `make_train_block`: int64 arrays [K, B].

    `order` [n] is the epoch's example order, `done` the batches already trained (a resumed epoch
    skips them), `step` the global step before the first block. A block holds exactly
    `steps_per_block` full batches, or a single batch where fewer remain before the epoch's end or
    the next multiple of `checkpoint_every` (the loop checkpoints between blocks at exactly those
    steps); the epoch's last, partial batch is a block [1, n mod B]. So the compiled block (unrolled
    over K) sees at most three shapes: [K, B], [1, B] and [1, n mod B].
    """
    full, partial = divmod(len(order), batch_size)
    while done < full:
        room = full - done
        if checkpoint_every:
            room = min(room, checkpoint_every - step % checkpoint_every)
        k = steps_per_block if room >= steps_per_block else 1
        yield order[done * batch_size:(done + k) * batch_size].reshape(k, batch_size)
        done, step = done + k, step + k
    if partial and done == full:
        yield order[full * batch_size:][None, :]


class ExampleBatcher:
    """Holds the example arrays as tensors and turns index batches into model inputs (batching: positions).

    __call__(idx int64 [B]) → ({"history": int32 [B, M], "age": float32 [B], "user_features": int32 [B, F]},
                               labels int64 [B], weights float32 [B])
    """

    def __init__(self, train_items: np.ndarray, examples: Examples, user_codes: np.ndarray, max_history: int):
        self.max_history = max_history
        self.seq = tf.constant(train_items, dtype=tf.int32)
        self.label_pos = tf.constant(examples.label_pos, dtype=tf.int64)
        self.hist_len = tf.constant(examples.hist_len.astype(np.int64))
        self.user = tf.constant(examples.user.astype(np.int64))
        self.age = tf.constant(examples.age, dtype=tf.float32)
        self.user_codes = tf.constant(user_codes, dtype=tf.int32)
        self.weight = tf.constant(_weights(examples))

    def __call__(self, idx):
        m = self.max_history
        pos = tf.gather(self.label_pos, idx)  # [B]
        length = tf.gather(self.hist_len, idx)  # [B]
        cols = tf.range(m, dtype=tf.int64)
        hist_idx = pos[:, None] - m + cols[None, :]  # [B, M]: rows before the label only
        valid = cols[None, :] >= (m - length[:, None])
        history = tf.where(valid, tf.gather(self.seq, tf.maximum(hist_idx, 0)), PAD)
        features = {
            "history": history,
            "age": tf.gather(self.age, idx),
            "user_features": tf.gather(self.user_codes, tf.gather(self.user, idx)),
        }
        return features, tf.cast(tf.gather(self.seq, pos), tf.int64), tf.gather(self.weight, idx)

    def rows(self, idx):
        """Loss rows of the batch idx [B]: its B examples (int64 scalar)."""
        return tf.size(idx, out_type=tf.int64)


def _weights(examples: Examples) -> np.ndarray:
    return np.ones(len(examples), np.float32) if examples.weight is None else examples.weight.astype(np.float32)


class SequenceBatcher:
    """Chunks (data/sequences.py) as tensors; turns a batch of chunk indices into causal-tower inputs
    (batching: sequences). A chunk's columns are the `context` train rows before its first example
    and its `length` label rows (recall/model/encoders/base.py), padded outside the user's sequence.

    __call__(idx int64 [C]) → ({"items": int32 [C, context + L], "age": float32 [C, L],
                                "user_features": int32 [C, F], "labelled": bool [C, L]},
                               labels int64 [C, L] (0 where not labelled), weights float32 [C, L] (0 there))
    """

    def __init__(self, train_items: np.ndarray, train_indptr: np.ndarray, examples: Examples, chunks,
                 user_codes: np.ndarray, context: int, length: int):
        self.context, self.length = context, length
        self.seq = tf.constant(train_items, dtype=tf.int32)
        self.first = tf.constant(chunks.first, dtype=tf.int64)
        self.count = tf.constant(chunks.count.astype(np.int64))
        self.label_pos = tf.constant(examples.label_pos, dtype=tf.int64)
        user = examples.user[chunks.first].astype(np.int64)
        self.user = tf.constant(user)
        self.user_start = tf.constant(np.asarray(train_indptr, np.int64)[user])
        self.age = tf.constant(examples.age, dtype=tf.float32)
        self.weight = tf.constant(_weights(examples))
        self.user_codes = tf.constant(user_codes, dtype=tf.int32)
        self.num_examples = len(examples)

    def rows(self, idx):
        """Loss rows of the batch of chunks idx [C]: its labelled positions (int64 scalar)."""
        return tf.reduce_sum(tf.gather(self.count, idx))

    def __call__(self, idx):
        first, count = tf.gather(self.first, idx), tf.gather(self.count, idx)  # [C]
        start = tf.gather(self.label_pos, first)  # train row of the first label
        cols = tf.range(self.context + self.length, dtype=tf.int64) - self.context
        rows = start[:, None] + cols[None, :]  # [C, S]
        real = (rows >= tf.gather(self.user_start, idx)[:, None]) & (cols[None, :] < count[:, None])
        items = tf.where(real, tf.gather(self.seq, tf.clip_by_value(rows, 0, tf.size(self.seq, tf.int64) - 1)), PAD)
        offset = tf.range(self.length, dtype=tf.int64)
        labelled = offset[None, :] < count[:, None]  # [C, L]
        example = tf.minimum(first[:, None] + offset[None, :], self.num_examples - 1)
        labels = tf.where(labelled, tf.cast(tf.gather(self.seq, tf.gather(self.label_pos, example)), tf.int64), 0)
        features = {
            "items": items,
            "age": tf.where(labelled, tf.gather(self.age, example), 0.0),
            "user_features": tf.gather(self.user_codes, tf.gather(self.user, idx)),
            "labelled": labelled,
        }
        return features, labels, tf.where(labelled, tf.gather(self.weight, example), 0.0)
