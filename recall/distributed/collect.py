"""The job's collectives on numpy arrays, outside the training step: sums and all-gathers over workers.

What a job sharded by user (`data.shard_by_user`, data/shards.py) must agree on travels here, over
the strategy's own collective ops (no side channel, nothing on disk): the item counts and raw ids that
make the vocabulary, the train time span, the epoch's step count, and the evaluation counts
(evaluation/protocol.py `EvalCounts`). Every call is a collective: every worker must make the same
calls in the same order, and a call waits at most the collective timeout for the others
(distributed/cluster.py).

Everything travels as int64 (TF 2.21's CPU collectives fail on int32 with "destinations can not be
empty"); text ids travel as their UTF-8 bytes packed 8 to an int64.
"""

from __future__ import annotations

import numpy as np


class Exchange:
    """What a worker can ask of the others (W = num_workers, this one is `index`). Subclasses give
    sum and gather; the rest is built on them (tests run W in-process workers on threads)."""

    index: int
    num_workers: int

    def sum(self, values) -> np.ndarray:
        """int64 [n] → [n], summed over the workers."""
        raise NotImplementedError

    def gather(self, values) -> np.ndarray:
        """int64 [n_w] → [Σ n_w], every worker's in worker order (sizes may differ)."""
        raise NotImplementedError

    def per_worker(self, values) -> np.ndarray:
        """int64 [k] from every worker (the same k) → [W, k] (row w = worker w's)."""
        values = np.asarray(values, np.int64).reshape(-1)
        return self.gather(values).reshape(self.num_workers, len(values))

    def gather_ids(self, ids) -> np.ndarray:
        """Raw ids [n_w] → every worker's concatenated (see `gather_ids`)."""
        return gather_ids(self, ids)


class Collective(Exchange):
    """The collectives of a MultiWorkerMirroredStrategy (one replica per worker) on numpy arrays."""

    def __init__(self, strategy, index: int):
        import tensorflow as tf

        self.index = index
        self.num_workers = strategy.num_replicas_in_sync
        device = strategy.extended.worker_devices[0]
        spec = tf.TensorSpec([None], tf.int64)

        def on_device(values):  # a tensor without a device: "destinations can not be empty"
            with tf.device(device):
                return tf.identity(values)

        def reduce(values):
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, on_device(values))

        def gather(values):
            return tf.distribute.get_replica_context().all_gather(on_device(values), axis=0)

        # One trace each, whatever the length (input_signature): these run every validation.
        self._sum = tf.function(lambda v: strategy.run(reduce, args=(v,)), input_signature=[spec])
        self._gather = tf.function(lambda v: strategy.run(gather, args=(v,)), input_signature=[spec])

    def sum(self, values) -> np.ndarray:
        return self._sum(np.asarray(values, np.int64).reshape(-1)).numpy()

    def gather(self, values) -> np.ndarray:
        # Each worker's values go behind their length: an all-gather in which every worker sends nothing
        # crashes TF 2.21's CPU collective (SIGSEGV), and the lengths split the result anyway.
        values = np.asarray(values, np.int64).reshape(-1)
        out = self._gather(np.r_[np.int64(len(values)), values]).numpy()
        parts, at = [], 0
        while at < len(out):
            size = int(out[at])
            parts.append(out[at + 1:at + 1 + size])
            at += 1 + size
        return np.concatenate(parts)


def gather_ids(collective, ids) -> np.ndarray:
    """Every worker's raw ids [n_w], concatenated in worker order. Integer ids stay int64; when any
    worker's ids are text, all come back as str (as one process reading the whole column would)."""
    ids = np.asarray(ids)
    text = ids.dtype.kind in "USO"
    any_text = bool(collective.sum([int(text)])[0])
    if not any_text:
        return collective.gather(ids.astype(np.int64))
    blob, lengths = encode_text(ids.astype(str))
    sizes = collective.per_worker([len(ids), len(blob)])  # [W, 2]: ids, packed int64s
    all_lengths = collective.gather(lengths)
    all_blobs = collective.gather(blob)
    out, at_len, at_blob = [], 0, 0
    for count, words in sizes:
        out.append(decode_text(all_blobs[at_blob:at_blob + words], all_lengths[at_len:at_len + count]))
        at_len, at_blob = at_len + count, at_blob + words
    return np.concatenate(out) if out else np.zeros(0, str)


def encode_text(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """str [n] → (their UTF-8 bytes concatenated, zero-padded to a multiple of 8, viewed as int64 [m];
    byte lengths int64 [n])."""
    encoded = [v.encode("utf-8") for v in values.tolist()]
    raw = b"".join(encoded)
    raw += b"\0" * (-len(raw) % 8)
    return np.frombuffer(raw, dtype="<i8").copy(), np.array([len(e) for e in encoded], np.int64)


def decode_text(blob: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Inverse of `encode_text`: (int64 [m], lengths [n]) → str [n]."""
    raw = np.asarray(blob, "<i8").tobytes()
    ends = np.cumsum(lengths)
    starts = ends - lengths
    return np.array([raw[a:b].decode("utf-8") for a, b in zip(starts.tolist(), ends.tolist())], dtype=str)
