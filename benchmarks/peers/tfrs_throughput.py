"""TensorFlow Recommenders (TFRS) two-tower on the ML-1M positives: training examples/s, optionally test HR@K.

Runs in the TFRS virtualenv made by setup_tfrs.sh (TFRS is Keras 2), never in recall's:

    ~/.cache/recall-peers/tfrs/bin/python benchmarks/peers/tfrs_throughput.py \
        ../shared/data/ml-1m/ratings_pos4.parquet --epochs 3 [--eval]

Prints one JSON line on stdout (progress goes to stderr). Self-contained: numpy, pandas, TF, TFRS.

Data and examples follow recall's DESIGN.md protocol: per user, order by (timestamp, item id), drop
users with < 3 positives, last → test, second-to-last → validation, the rest → train; vocabulary =
train items; one example per train position t ≥ 1: (the up to 50 items before t → item t).

Model (a reconstruction of the run behind the 2026-12-05 reference figures; README.md says why):
the TFRS retrieval-tutorial two-tower with the tutorial's user-id tower replaced by a pooled history
(the YouTube-DNN query): query = masked mean of the history's item embeddings (dim 32) → Dense 64
ReLU → Dense 32; candidate = an item embedding (dim 32, separate table). tfrs.tasks.Retrieval with
in-batch negatives, the log Q correction (candidate_sampling_probability = the label item's share
of the training examples) and accidental-hit removal; the tutorial's summed softmax cross-entropy
and Adagrad(0.1); batch 1024, Keras model.fit.

examples/s is measured as recall's benchmarks/throughput.py does: per epoch, the examples of the
epoch over its wall time inside model.fit (on_epoch_begin → on_epoch_end; no evaluation in
between); the figure is the median of epochs 2.. (epoch 1, which includes tracing, is reported
apart as first_epoch_examples_per_sec; with --epochs 1 it is the only figure).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFRS needs tf.keras = Keras 2 (tf-keras)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import importlib.metadata as md  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

BATCH, HISTORY, DIM, HIDDEN = 1024, 50, 32, 64


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --- data: split, vocabulary, examples --------------------------------------------------------------

def load_split(path: Path):
    """Leave-last-out split per DESIGN.md. Returns sorted frame arrays and per-user row ranges."""
    df = pd.read_parquet(path, columns=["user_id", "item_id", "timestamp"])
    df = df.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    df = df[df.groupby("user_id")["item_id"].transform("size").to_numpy() >= 3]
    users, items = df["user_id"].to_numpy(), df["item_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    is_train = np.ones(len(users), bool)
    is_train[ends - 1] = is_train[ends - 2] = False
    # Vocabulary: train items, most frequent first; internal index 1..N (0 = padding / unknown).
    raw, counts = np.unique(items[is_train], return_counts=True)
    vocab = raw[np.lexsort((raw, -counts))]
    index = pd.Series(np.arange(1, len(vocab) + 1), index=vocab)
    coded = index.reindex(items).fillna(0).to_numpy(np.int32)  # valid/test items may be unknown
    return dict(user=users[starts], items=items, coded=coded, starts=starts, ends=ends, vocab=vocab)


def history_matrix(coded: np.ndarray, ends: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """[R, HISTORY] int32: coded[starts[r]:ends[r]]'s last HISTORY items, left-padded with 0."""
    offs = np.arange(-HISTORY, 0)
    idx = ends[:, None] + offs[None, :]
    return np.where(idx >= starts[:, None], coded[np.maximum(idx, 0)], 0).astype(np.int32)


def make_examples(s):
    """One example per train position t ≥ 1 of each user: (history before t, item t)."""
    train_len = s["ends"] - s["starts"] - 2
    pos = np.concatenate([np.arange(1, n) for n in train_len])
    start = np.repeat(s["starts"], train_len - 1)
    rows = start + pos
    return history_matrix(s["coded"], rows, start), s["coded"][rows]


# --- model --------------------------------------------------------------------------------------------

class TwoTower(tfrs.Model):
    def __init__(self, num_items: int):
        super().__init__()
        self.query_tower = tf.keras.Sequential([
            tf.keras.layers.Embedding(num_items + 1, DIM, mask_zero=True),
            tf.keras.layers.GlobalAveragePooling1D(),  # masked mean of the history
            tf.keras.layers.Dense(HIDDEN, activation="relu"),
            tf.keras.layers.Dense(DIM),
        ])
        self.candidate_tower = tf.keras.layers.Embedding(num_items + 1, DIM)
        # No FactorizedTopK metric: it would rank the whole catalogue every step (the TFRS guide
        # itself says to leave it out of training); --eval ranks after training instead.
        self.task = tfrs.tasks.Retrieval(remove_accidental_hits=True)

    def compute_loss(self, features, training=False):
        query = self.query_tower(features["history"])
        candidate = self.candidate_tower(features["item"])
        return self.task(query, candidate, candidate_sampling_probability=features["q"],
                         candidate_ids=features["item"], compute_metrics=not training)


class EpochTimer(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.t0)
        log(f"epoch {epoch + 1}: {self.seconds[-1]:.1f} s, loss {logs.get('loss', float('nan')):.1f}")


# --- evaluation (DESIGN.md: full ranking over the vocabulary, query history filtered) -----------------

def evaluate(model: TwoTower, s, ks=(10, 20, 50, 100, 200)) -> dict:
    ends, starts, coded = s["ends"], s["starts"], s["coded"]
    hist = history_matrix(coded, ends - 1, starts)  # test query: everything before the test item
    query = model.query_tower.predict(hist, batch_size=4096, verbose=0)
    cands = model.candidate_tower(tf.range(1, len(s["vocab"]) + 1)).numpy()
    scores = query @ cands.T  # [users, N]; column j is internal index j + 1
    for u in range(len(ends)):  # remove the whole query history (not only its last 50)
        seen = coded[starts[u]:ends[u] - 1]
        scores[u, seen[seen > 0] - 1] = -np.inf
    target = coded[ends - 1]
    known = target > 0
    t_score = np.where(known, scores[np.arange(len(target)), np.maximum(target, 1) - 1], np.nan)
    rank = np.where(known, (scores > t_score[:, None]).sum(1), np.iinfo(np.int64).max)
    out = {}
    for k in ks:
        hit = rank < k
        out[f"test_hr@{k}"] = round(float(hit.mean()), 4)
        out[f"test_ndcg@{k}"] = round(float(np.where(hit, 1 / np.log2(np.minimum(rank, k) + 2), 0).mean()), 4)
    return out


def check_reference(s, path: Path) -> str:
    """Compare the split with split_reference.parquet (valid/test item, train length per user)."""
    ref = pd.read_parquet(path).set_index("user_id").loc[s["user"]]
    ok = (np.array_equal(ref["valid_item_id"], s["items"][s["ends"] - 2])
          and np.array_equal(ref["test_item_id"], s["items"][s["ends"] - 1])
          and np.array_equal(ref["n_train"], s["ends"] - s["starts"] - 2) and len(ref) == len(s["ends"]))
    return "identical" if ok else "DIFFERENT"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="ML-1M positives (ratings_pos4.parquet: user_id, item_id, timestamp)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--eval", action="store_true", help="also test HR@K / NDCG@K (filtered, full ranking)")
    ap.add_argument("--lr", type=float, default=0.1, help="Adagrad learning rate (the TFRS tutorial's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tf.keras.utils.set_random_seed(args.seed)

    t0 = time.perf_counter()
    s = load_split(args.data)
    hist, label = make_examples(s)
    counts = np.bincount(label, minlength=len(s["vocab"]) + 1)
    q = (counts / len(label)).astype(np.float32)  # P(item is a batch's candidate) per example
    n = len(label)
    ref = args.data.with_name("split_reference.parquet")
    split_check = check_reference(s, ref) if ref.exists() else "no split_reference.parquet beside the data"
    log(f"{len(s['ends'])} users, {len(s['vocab'])} items, {n} examples; split vs reference: {split_check}"
        f" ({time.perf_counter() - t0:.1f} s)")

    # Shuffle example indices each epoch and gather whole batches (cheaper than per-example tf.data work).
    hist_t, label_t, q_t = tf.constant(hist), tf.constant(label), tf.constant(q)
    ds = (tf.data.Dataset.range(n).shuffle(n, seed=args.seed, reshuffle_each_iteration=True).batch(BATCH)
          .map(lambda i: {"history": tf.gather(hist_t, i), "item": tf.gather(label_t, i),
                          "q": tf.gather(q_t, tf.gather(label_t, i))}).prefetch(tf.data.AUTOTUNE))
    model = TwoTower(len(s["vocab"]))
    model.compile(optimizer=tf.keras.optimizers.Adagrad(args.lr))
    timer = EpochTimer()
    model.fit(ds, epochs=args.epochs, callbacks=[timer], verbose=0)

    rates = [n / sec for sec in timer.seconds]
    steady = statistics.median(rates[1:]) if len(rates) > 1 else rates[0]
    out = {"system": f"TFRS {md.version('tensorflow-recommenders')} two-tower",
           "examples_per_sec": round(steady, 1), "epochs": args.epochs, "batch": BATCH,
           "seconds": round(sum(timer.seconds), 2),
           "first_epoch_examples_per_sec": round(rates[0], 1),
           "epoch_examples_per_sec": [round(r, 1) for r in rates],
           "rate_of": "median of epochs 2.." if len(rates) > 1 else "epoch 1 (includes tracing)",
           "examples": n, "items": len(s["vocab"]), "split_vs_reference": split_check,
           "versions": {p: md.version(p) for p in ("tensorflow", "tensorflow-cpu", "tf-keras", "tensorflow-recommenders")
                        if _installed(p)},
           "model": f"mean-pooled history {HISTORY} → Dense {HIDDEN} ReLU → {DIM} | item embedding {DIM}; "
                    f"in-batch softmax + log Q + accidental hits removed; Adagrad {args.lr}",
           "load_avg": [round(x, 2) for x in os.getloadavg()]}
    if args.eval:
        t1 = time.perf_counter()
        out.update(evaluate(model, s))
        log(f"evaluation {time.perf_counter() - t1:.1f} s")
    print(json.dumps(out), flush=True)


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
