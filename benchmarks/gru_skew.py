"""How far a running GRU's training queries are from what serving computes (train.batching: sequences).

With sequence batching the GRU runs along each chunk, so the k-th labelled position of a chunk
(k = 0, 1, …) has seen `window + k` items where evaluation and the exported tower give it the latest
`window` (recall/model/encoders/gru.py). For a trained run this prints, per position in the chunk,
the relative L2 distance between the two queries and the overlap of their top-50 items.

    python benchmarks/gru_skew.py RUN_DIR [--chunks 500]

Every exact encoder gives 0 here (tests/test_encoders.py); only the GRU can differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--chunks", type=int, default=500, help="chunks to compare (a fixed random sample)")
    args = ap.parse_args()

    import tensorflow as tf

    from recall.data.sequences import make_chunks
    from recall.pipeline import load_run
    from recall.training.inputs import SequenceBatcher

    cfg, data, user, items = load_run(args.run_dir)
    length = cfg.train.sequence_length
    chunks = make_chunks(data.examples, length)
    batcher = SequenceBatcher(data.split.train_items, data.split.train_indptr, data.examples, chunks,
                              data.features.codes, user.context, length)
    pick = np.sort(np.random.default_rng(0).choice(len(chunks), min(args.chunks, len(chunks)), replace=False))
    features, _, _ = batcher(tf.constant(pick, tf.int64))
    features["age"] = tf.zeros_like(features["age"])  # served as 0
    trained = user.causal(features).numpy()  # [R, D] in row-major order of the labelled positions
    labelled = features["labelled"].numpy()
    offset = np.nonzero(labelled)[1]  # k: the position within its chunk
    items_ = features["items"].numpy()
    m = cfg.model.max_history
    histories = np.stack([items_[c, k:m + k] for c, k in np.argwhere(labelled)])
    served = user({"history": tf.constant(histories), "age": tf.zeros([len(histories)]),
                   "user_features": tf.gather(features["user_features"], np.nonzero(labelled)[0])}).numpy()
    weights, biases = (t.numpy() for t in items.weights_and_biases())
    top = lambda q: np.argsort(-(q @ weights.T + biases), axis=1)[:, :50]  # noqa: E731
    overlap = np.array([len(np.intersect1d(a, b)) / 50 for a, b in zip(top(trained), top(served))])
    rel = np.linalg.norm(trained - served, axis=1) / np.maximum(np.linalg.norm(served, axis=1), 1e-9)
    print(f"{args.run_dir}: {len(pick)} chunks, {len(rel)} positions, sequence_length {length}")
    print(f"{'k':>3}  {'rel. L2 (median)':>17}  {'top-50 overlap (mean)':>22}")
    for k in range(length):
        at = offset == k
        if at.any():
            print(f"{k:>3}  {np.median(rel[at]):>17.4f}  {overlap[at].mean():>22.3f}")
    print(f"all  {np.median(rel):>17.4f}  {overlap.mean():>22.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
