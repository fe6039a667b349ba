"""End to end with the new options on: a transformer user tower (tied) trained with a cosine schedule
and warmup resumes, exports and serves the same query vectors as the trained tower."""

from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("faiss")

import recall  # noqa: E402
from recall.data.synthetic import synthesize  # noqa: E402
from recall.pipeline import load_run  # noqa: E402
from recall.serving import Recommender  # noqa: E402

pytestmark = pytest.mark.slow

SMALL = ["model.dim=16", "model.hidden=[32]", "model.max_history=10", "loss.num_sampled=20",
         "train.batch_size=128", "train.learning_rate=0.01", "eval.batch_size=512",
         "eval.ks=[10,20]", "train.early_stopping=null"]
SEQUENCE = ["model.transformer=6", "model.transformer_heads=2", "model.tie_embeddings=true",
            "train.lr_schedule=cosine", "train.warmup_steps=3"]
# The shipped ML-1M shape: a GRU over the recent items, dropout, cosine schedule.
GRU = ["model.gru=6", "model.tie_embeddings=true", "model.dropout=0.3", "train.lr_schedule=cosine"]
# The parallel minGRU in its place (the exported tower must take histories of any length).
MIN_GRU = ["model.min_gru=6", "model.tie_embeddings=true", "model.dropout=0.3", "train.lr_schedule=cosine"]
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
    expected = {id(SEQUENCE): (6, 0, 0), id(GRU): (0, 6, 0), id(MIN_GRU): (0, 0, 6), id(BF16): (0, 6, 0)}[id(options)]
    assert (cfg.model.transformer, cfg.model.gru, cfg.model.min_gru) == expected
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
