"""End to end with the sequence encoders: trained (per position, or with sequence batching), resumed,
exported — and the exported tower serves the queries training computed, for every encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pre_recipe import PRE_RECIPE

tf = pytest.importorskip("tensorflow")
pytest.importorskip("faiss")

import recall  # noqa: E402
from recall.data.synthetic import synthesize  # noqa: E402
from recall.pipeline import load_run  # noqa: E402
from recall.serving import Recommender  # noqa: E402

pytestmark = pytest.mark.slow

SMALL = ["model.dim=16", "model.hidden=[32]", "model.max_history=10", "loss.num_sampled=20", *PRE_RECIPE,
         "train.batch_size=128", "train.learning_rate=0.01", "eval.batch_size=512",
         "eval.ks=[10,20]", "train.early_stopping=null",
         "train.steps_per_execution=2"]  # a shorter compiled block: the same updates, a quarter of the tracing
SEQUENCE = ["model.history=[{kind: mean}, {kind: transformer, band: 3, blocks: 1, heads: 2}]",
            "model.tie_embeddings=true", "train.lr_schedule=cosine", "train.warmup_steps=3"]
# The shipped ML-1M shape: a GRU over the recent items, dropout, cosine schedule.
GRU = ["model.history=[{kind: mean}, {kind: recent, window: 3}, {kind: gru, window: 6}]",
       "model.tie_embeddings=true", "model.dropout=0.3", "train.lr_schedule=cosine"]
# The parallel minGRU in its place (the exported tower must take histories of any length).
MIN_GRU = ["model.history=[{kind: mean}, {kind: min_gru, window: 6}]", "model.tie_embeddings=true",
           "model.dropout=0.3", "train.lr_schedule=cosine"]
# The GRU shape with bfloat16 matmuls: the exported tower computes as the trained one did.
BF16 = [*GRU, "model.compute_dtype=bfloat16"]


@pytest.mark.parametrize("options", [SEQUENCE, GRU, MIN_GRU, BF16], ids=["transformer", "gru", "min_gru", "bf16"])
def test_sequence_towers_train_resume_export_and_serve(tmp_path, options):
    log = tmp_path / "log.parquet"
    synthesize(num_users=150, num_items=50, interactions_per_user=10, num_topics=5, seed=3).to_parquet(log)
    base = ["data.source=file", f"data.path={log}", *SMALL, *options]
    run_dir = tmp_path / "run"
    first = recall.train(recall.load_config(None, [*base, "train.epochs=1"]), run_dir)
    # Resuming re-plans the schedule over the new epochs; the restored step counter places the run on it.
    metrics = recall.train(recall.load_config(None, [*base, "train.epochs=2"]), run_dir)
    per_epoch = first["train"]["steps"]
    assert metrics["train"]["steps"] == 2 * per_epoch and metrics["train"]["epochs"] == 2
    assert np.isfinite(json.loads((run_dir / "history.json").read_text())["epochs"][-1]["loss"])

    cfg, data, user, items = load_run(run_dir)
    expected = {id(SEQUENCE): "transformer", id(GRU): "gru", id(MIN_GRU): "min_gru", id(BF16): "gru"}[id(options)]
    assert cfg.model.history[-1].kind == expected
    assert cfg.model.compute_dtype == ("bfloat16" if options is BF16 else "float32")
    history = data.test.history[:6]  # int32 [6, M] internal ids, right-aligned
    u = user({"history": tf.constant(history), "age": tf.zeros([len(history)]),
              "user_features": tf.zeros([len(history), 0], tf.int32)}, training=False).numpy()
    w, b = (t.numpy() for t in items.weights_and_biases())
    rec = Recommender.load(run_dir / "export")
    raw = [[data.split.item_ids[i].item() for i in h[h >= 0]] for h in history]
    vectors = np.load(run_dir / "export" / "item_vectors.npy")
    logits = u @ w.T + b
    # bfloat16: the exported (traced) graph lets oneDNN fuse a hidden layer's bias into its matmul (one
    # rounding to bfloat16) where the eager call rounds twice: they agree to bfloat16 precision.
    atol = 0.02 * np.abs(logits).max() if options is BF16 else 1e-4
    np.testing.assert_allclose(rec.query_vectors(raw) @ vectors.T, logits, rtol=1e-4, atol=atol)


def test_auto_dtype_is_decided_when_training_and_kept_by_the_run(tmp_path, monkeypatch):
    import yaml

    from recall import pipeline

    log = tmp_path / "log.parquet"
    synthesize(num_users=150, num_items=50, interactions_per_user=10, num_topics=5, seed=3).to_parquet(log)
    base = ["data.source=file", f"data.path={log}", *SMALL, *GRU]
    run_dir = tmp_path / "run"
    monkeypatch.setattr(pipeline, "native_bfloat16", lambda: True)  # a CPU with AVX512-BF16
    recall.train(recall.load_config(None, [*base, "model.compute_dtype=auto", "train.epochs=1"]), run_dir)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["compute_dtype"] == "bfloat16"  # what ran, not "auto"
    monkeypatch.setattr(pipeline, "native_bfloat16", lambda: False)  # evaluated or exported elsewhere
    _, _, user, _ = load_run(run_dir)
    assert [layer.compute_dtype for layer in user.mlp] == ["bfloat16"]  # computes as training did
    # The dtype is not part of what the checkpoint holds: resuming with another one is allowed.
    metrics = recall.train(recall.load_config(None, [*base, "model.compute_dtype=float32", "train.epochs=2"]),
                           run_dir)
    assert metrics["train"]["epochs"] == 2
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["compute_dtype"] == "float32"


# Every exact encoder, trained with sequence batching (chunks of 4 positions, history context 10).
EXACT_ENCODERS = {
    "means+slots": "[{kind: mean}, {kind: mean, window: 3}, {kind: recent, window: 2}, {kind: last_items, window: 2}]",
    "attention": "[{kind: attention, window: 8}]",
    "min_gru": "[{kind: min_gru, window: 6, heads: 4}]",
    "transformer": "[{kind: transformer, band: 4, blocks: 2, heads: 2}]",
}


@pytest.mark.parametrize("encoders", EXACT_ENCODERS.values(), ids=EXACT_ENCODERS.keys())
def test_exported_tower_serves_what_sequence_training_computed(tmp_path, encoders):
    """For any history — shorter than, as long as and longer than the training context — the bundle's
    query (raw ids in, through the SavedModel) is the query the causal training pass computed for the
    position after that history (example age 0, as served)."""
    from recall.data.sequences import make_chunks
    from recall.training.inputs import SequenceBatcher

    log = tmp_path / "log.parquet"
    synthesize(num_users=60, num_items=50, interactions_per_user=25, num_topics=5, seed=4).to_parquet(log)
    run_dir = tmp_path / "run"
    recall.train(recall.load_config(None, [
        "data.source=file", f"data.path={log}", *SMALL, f"model.history={encoders}", "model.tie_embeddings=true",
        "train.batching=sequences", "train.sequence_length=4", "train.epochs=1", "train.batch_splits=2"]), run_dir)
    cfg, data, user, _ = load_run(run_dir)
    chunks = make_chunks(data.examples, 4)
    batcher = SequenceBatcher(data.split.train_items, data.split.train_indptr, data.examples, chunks,
                              data.features.codes, user.context, 4)
    features, labels, _ = batcher(tf.range(len(chunks), dtype=tf.int64))
    features["age"] = tf.zeros_like(features["age"])
    trained = user.causal(features).numpy()  # [R, D], the labelled positions in chunk order
    # The raw history before each of those positions: the user's whole train sequence up to it.
    split, ex = data.split, data.examples
    rows = np.concatenate([np.arange(f, f + c) for f, c in zip(chunks.first, chunks.count)])
    histories = [split.item_ids[split.train_items[split.train_indptr[ex.user[e]]:ex.label_pos[e]]].tolist()
                 for e in rows]
    lengths = np.array([len(h) for h in histories])
    assert lengths.min() < 4 and (lengths == cfg.model.max_history).any() and lengths.max() > 2 * cfg.model.max_history
    served = Recommender.load(run_dir / "export").query_vectors(histories)[:, :cfg.model.dim]
    np.testing.assert_allclose(served, trained, rtol=1e-4, atol=1e-5)
