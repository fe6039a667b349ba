"""Cost of each history encoder in both forms: the user tower's forward + backward for 512 examples,
per position (512 histories of 50) and causally (8 chunks of 64 labelled positions + 50 context).

    python benchmarks/encoder_cost.py [--threads 1] [--repeats 30]

Prints a table (ms per 512 examples, and per example µs); the tower is ML-1M's shape (3,525 items,
dim 64, MLP [512], tied tables, no features). Timing only: no quality.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENCODERS = {
    "mean": [{"kind": "mean"}],
    "mean + recent 5": [{"kind": "mean"}, {"kind": "recent", "window": 5}],
    "+ GRU 20": [{"kind": "mean"}, {"kind": "recent", "window": 5}, {"kind": "gru", "window": 20}],
    "+ minGRU 20 (8 heads)": [{"kind": "mean"}, {"kind": "recent", "window": 5},
                              {"kind": "min_gru", "window": 20, "heads": 8}],
    "+ transformer (band 8, 2 blocks)": [{"kind": "mean"}, {"kind": "recent", "window": 5},
                                         {"kind": "transformer", "band": 8, "blocks": 2, "dropout": 0.0}],
    "+ attention 50": [{"kind": "mean"}, {"kind": "recent", "window": 5}, {"kind": "attention"}],
}


def timed(forward, variables, inputs, repeats: int) -> float:
    """ms per call of forward(inputs) + the gradient of Σ q² wrt `variables`, compiled, after one warm-up."""
    import tensorflow as tf

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            q = forward(x)
            loss = tf.reduce_sum(q * q)
        return [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables) if g is not None]

    step(inputs)
    t0 = time.perf_counter()
    for _ in range(repeats):
        step(inputs)
    return 1000 * (time.perf_counter() - t0) / repeats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="TF intra-op threads (default 1)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--chunk", type=int, default=64, help="labelled positions per chunk (default 64)")
    args = ap.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    from recall.model import ItemTower, UserTower

    num_items, m, rows = 3525, 50, 512
    chunks = rows // args.chunk
    rng = np.random.default_rng(0)
    per_position = {"history": tf.constant(rng.integers(0, num_items, (rows, m)), tf.int32),
                    "age": tf.zeros([rows]), "user_features": tf.zeros([rows, 0], tf.int32)}
    causal = {"items": tf.constant(rng.integers(0, num_items, (chunks, m + args.chunk)), tf.int32),
              "labelled": tf.ones([chunks, args.chunk], tf.bool), "age": tf.zeros([chunks, args.chunk]),
              "user_features": tf.zeros([chunks, 0], tf.int32)}
    print(f"{'encoders':<36} {'per position ms':>16} {'causal ms':>10} {'causal µs/example':>18}")
    for name, history in ENCODERS.items():
        items = ItemTower(num_items, 64, name="items")
        user = UserTower(num_items, 64, [512], m, history=history, shared_items=items, name="user")
        user(per_position)
        a = timed(lambda x, u=user: u(x, training=True), user.trainable_variables, per_position, args.repeats)
        b = timed(lambda x, u=user: u.causal(x, training=True), user.trainable_variables, causal, args.repeats)
        print(f"{name:<36} {a:>16.2f} {b:>10.2f} {1000 * b / rows:>18.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
