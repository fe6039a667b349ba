"""The retrieval task: the loss of R query rows against the item table, with explicit inputs.

    queries [R, D], labels [R], weights [R], the sampler and the step's seed → scalar loss

    loss = Σ_r w_r · ℓ_r / N,   N = the number of rows of the whole batch (its labelled positions)

Whatever produced the rows — positions of a batch, every labelled position of a causal pass, the
parts of a split batch (and, with several replicas, one replica's share) — feeds the same code: the
candidates are drawn once from all the batch's labels (one shared set; in-batch samplers take every
row's label) and each part's rows are scored against them (`part_losses`).
"""

from __future__ import annotations

import tensorflow as tf

from recall.training.loss import draw_candidates, full_softmax_per_row, sampled_loss_per_row
from recall.training.samplers import Sampler


class RetrievalTask:
    """`kind`: sampled_softmax | nce | neg | full_softmax; `sampler` for the sampled kinds."""

    def __init__(self, item_tower, kind: str, sampler: Sampler | None = None, remove_accidental_hits: bool = True,
                 global_rows=None):
        """`global_rows` (several replicas, distributed/replicas.py `gather_global_rows`): labels [r] →
        (the global batch's labels [R] int64, this replica's offset in them). Given, a sampler that draws
        from the batch's labels (in_batch, mixed) draws from the global batch's, with log Q for the global
        batch; samplers keyed on (seed, step) draw the same set on every replica without it."""
        if kind != "full_softmax" and sampler is None:
            raise ValueError(f"loss {kind!r} needs a sampler")
        self.items, self.kind, self.sampler = item_tower, kind, sampler
        self.remove_accidental_hits = remove_accidental_hits
        self.global_rows = global_rows if getattr(sampler, "uses_batch_labels", False) else None
        self.op = tf.nn.nce_loss if kind in ("nce", "neg") else tf.nn.sampled_softmax_loss

    def part_losses(self, parts: list, seed=None) -> list:
        """parts: [(queries [r_i, D], labels int [r_i])] of one batch → per-row losses [[r_i]] against
        one candidate set drawn for all Σ r_i rows (with `seed` [2]: the stateless samplers need one)."""
        weights, biases = self.items.weights_and_biases()  # [N, D], [N]
        if self.kind == "full_softmax":
            return [full_softmax_per_row(weights, biases, labels, queries) for queries, labels in parts]
        labels = tf.concat([tf.reshape(labels, [-1]) for _, labels in parts], axis=0) if len(parts) > 1 \
            else parts[0][1]
        if self.global_rows is None:
            all_labels, (sampled, true_expected, sampled_expected) = draw_candidates(self.sampler, labels, seed)
        else:  # candidates from the global batch's labels; this replica's rows of the true counts
            everyone, offset = self.global_rows(labels)
            all_labels, (sampled, true_expected, sampled_expected) = draw_candidates(self.sampler, everyone, seed)
            mine = slice(offset, offset + tf.size(labels, out_type=tf.int64))
            all_labels, true_expected = all_labels[mine], true_expected[mine]
        out, start = [], 0
        for queries, part_labels in parts:
            size = tf.size(part_labels)  # dynamic under sequence batching (labelled positions vary)
            rows = slice(start, start + size)
            out.append(sampled_loss_per_row(self.op, weights, biases, all_labels[rows], queries,
                                            (sampled, true_expected[rows], sampled_expected),
                                            self.remove_accidental_hits))
            start = start + size
        return out

    def loss(self, parts: list, seed=None, normalizer=None):
        """parts: [(queries [r_i, D], labels [r_i], weights [r_i] or None)] → Σ w·ℓ / normalizer (default Σ r_i)."""
        losses = self.part_losses([(q, lab) for q, lab, _ in parts], seed)
        total = 0.0
        for (_, _, w), per_row in zip(parts, losses):
            total += tf.reduce_sum(per_row if w is None else per_row * tf.cast(w, per_row.dtype))
        if normalizer is None:
            normalizer = tf.add_n([tf.size(lab) for _, lab, _ in parts])
        return total / tf.cast(normalizer, tf.float32)

    def __call__(self, queries, labels, weights=None, seed=None):
        """One part: the weighted mean over its R rows."""
        return self.loss([(queries, labels, weights)], seed)
