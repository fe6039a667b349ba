"""End to end on a tiny learnable log: train → evaluate → export → query (Python API, CLI, outside client).

One module-scoped run (synthetic topics, 300 users × 100 items, 3 epochs) serves most tests; resume,
early stopping and string ids train their own even smaller runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pre_recipe import PRE_RECIPE

tf = pytest.importorskip("tensorflow")
pytest.importorskip("faiss")

import recall  # noqa: E402
from recall import cli  # noqa: E402
from recall.data.synthetic import synthesize  # noqa: E402
from recall.errors import RecallError  # noqa: E402
from recall.io import sha256_file  # noqa: E402
from recall.pipeline import load_run  # noqa: E402
from recall.serving import Recommender  # noqa: E402

pytestmark = pytest.mark.slow

KS = [10, 20, 50]  # the main run's catalogue has ~100 items: eval.ks may not exceed it
SMALL = ["model.dim=16", "model.hidden=[32]", "model.max_history=10", "loss.num_sampled=20",
         "model.history=[{kind: mean}]", *PRE_RECIPE,
         "train.batch_size=128", "train.learning_rate=0.01", "eval.batch_size=512",
         "eval.ks=[10,20]", "train.early_stopping.metric=hr@20"]  # the smallest logs have 40-50 items
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def _log(path: Path, users: int, items: int, per_user: float, string_ids: bool = False) -> Path:
    """A synthetic log with topic structure (the next item is predictable from recent ones)."""
    df = synthesize(num_users=users, num_items=items, interactions_per_user=per_user, num_topics=5, seed=3)
    if string_ids:
        df = df.assign(user_id="u" + df.user_id.astype(str), item_id="i" + df.item_id.astype(str))
    df.to_parquet(path)
    return path


def _config(log: Path, *overrides: str):
    return recall.load_config(None, ["data.source=file", f"data.path={log}", *SMALL, *overrides])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    cfg = _config(_log(root / "log.parquet", 300, 100, 20), "train.epochs=3", "eval.ks=[10,20,50]",
                  "train.early_stopping.metric=hr@50")
    run_dir = root / "run"
    metrics = recall.train(cfg, run_dir)
    return run_dir, metrics


@pytest.fixture(scope="module")
def rec(run):
    return Recommender.load(run[0] / "export")


def _histories(run_dir: Path, n: int, seed: int = 0) -> list[list[int]]:
    """Raw-id histories of `n` random users: their test queries (train items + validation item)."""
    _, data, _, _ = load_run(run_dir)
    rows = np.random.default_rng(seed).choice(len(data.test.history), n, replace=False)
    return [[data.split.item_ids[i].item() for i in h[h >= 0]] for h in data.test.history[rows]]


def _replay_early_stopping(history: dict, metric: str, patience: int) -> int | None:
    """The epoch (1-based) at which early stopping should have stopped, from history.json's validation
    scores (None: it should not have stopped in the epochs recorded)."""
    best, bad = -1.0, 0
    for epoch in history["epochs"]:
        score = epoch[f"valid_{metric}"]
        bad = 0 if score > best else bad + 1
        best = max(best, score)
        if bad >= patience:
            return epoch["epoch"]
    return None


# --- the run directory ------------------------------------------------------------------------


def test_run_directory_holds_every_artifact(run):
    run_dir, metrics = run
    for name in ("config.yaml", "metrics.json", "report.md", "history.json", "hr_at_k.png", "loss.png",
                 "valid_hr.png", "hr_by_popularity.png", "export/manifest.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "checkpoints" / "best").glob("ckpt-*.index"))
    assert list((run_dir / "checkpoints").glob("ckpt-*.index"))
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    for png in run_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "hr_at_k.png" in (run_dir / "report.md").read_text()
    assert recall.load_config(run_dir / "config.yaml").data.path == str(run_dir.parent / "log.parquet")

    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for split in ("test", "valid"):
        for variant in ("filtered", "unfiltered"):
            m = saved[split][variant]
            for k in KS:
                assert 0.0 <= m[f"ndcg@{k}"] <= m[f"hr@{k}"] <= 1.0
            assert [m[f"hr@{k}"] for k in KS] == sorted(m[f"hr@{k}"] for k in KS)
    for k in KS:
        assert saved["test"]["filtered"][f"recall@{k}"] == saved["test"]["filtered"][f"hr@{k}"]
        assert 0.0 < saved["test"]["filtered"][f"coverage@{k}"] <= 1.0
    by_pop = saved["test"]["by_popularity"]
    assert sum(b["count"] for b in by_pop.values()) == saved["test"]["filtered"]["count"]
    assert sum(b["items"] for b in by_pop.values()) == saved["data"]["items"]
    assert saved["index"]["factory"] == "Flat" and saved["index"]["exact"] is True
    assert saved["index"]["qps"] > 0 and "recall@10" not in saved["index"]
    t = saved["train"]
    assert t["epochs"] == 3 and t["seconds"] > 0 and t["examples_per_sec"] > 0
    batches = -(-saved["data"]["examples"] // 128)
    assert t["steps"] == 3 * batches


def test_tensorboard_holds_training_validation_and_test_scalars(run):
    import tensorflow as tf

    run_dir, _ = run
    tags = set()
    for events in Path(run_dir, "tensorboard").glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(events)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(v.tag for v in event.summary.value)
    assert "train/loss" in tags
    assert {"valid/hr@10", "test_filtered/hr@10", "test_unfiltered/ndcg@50", "valid_filtered/hr@50"} <= tags


def test_manifest_lists_sha256_of_every_file(run):
    export = run[0] / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    on_disk = {str(p.relative_to(export)) for p in export.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert {"items.faiss", "item_ids.npy", "item_vectors.npy", "user_tower/saved_model.pb"} <= on_disk
    for name, digest in manifest["files"].items():
        assert sha256_file(export / name) == digest, name
    assert manifest["format_version"] == 2 and manifest["bias_folded"] is True
    assert manifest["index_dim"] == manifest["dim"] + 1 == 17 and manifest["num_items"] == 100


def test_model_beats_most_popular(run):
    _, metrics = run
    model, popular = metrics["test"]["filtered"], metrics["most_popular"]["test"]["filtered"]
    for k in (10, 20):
        assert model[f"hr@{k}"] > popular[f"hr@{k}"] + 0.1, (k, model[f"hr@{k}"], popular[f"hr@{k}"])
    assert model["ndcg@10"] > popular["ndcg@10"]


def test_history_and_early_stopping_agree_with_metrics(run):
    run_dir, metrics = run
    history = json.loads((run_dir / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    t = metrics["train"]
    # 3 epochs with patience 2 can only stop at the last one: here only the flag is checked
    # (test_early_stopping_when_validation_does_not_improve sees a stop before the last epoch).
    assert t["stopped_early"] == (_replay_early_stopping(history, "hr@50", patience=2) is not None)
    assert t["best_valid"]["hr@50"] == max(e["valid_hr@50"] for e in history["epochs"])


def test_evaluate_reproduces_test_metrics(run):
    run_dir, metrics = run
    again = recall.evaluate(run_dir)
    for split in ("test", "valid"):
        for variant in ("filtered", "unfiltered"):
            for key, value in metrics[split][variant].items():
                assert again[split][variant][key] == pytest.approx(value, abs=1e-9), (split, variant, key)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["train"] == metrics["train"]  # evaluate keeps the training summary


def test_evaluate_with_an_approximate_index_reports_its_recall(run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)  # evaluate rewrites metrics.json; keep the shared run intact
    capsys.readouterr()
    assert cli.main(["evaluate", str(run_dir), "--index", "IVF4,Flat"]) == 0
    out = capsys.readouterr().out
    assert "index IVF4,Flat (nlist=4, nprobe=1): recall@10 " in out and "queries/s" in out
    index = json.loads((run_dir / "metrics.json").read_text())["index"]
    assert index["exact"] is False and index["qps"] > 0 and index["exact_qps"] > 0
    # nprobe=1 scans one of 4 lists (about a quarter of the 100 items), so the deepest cut-off
    # cannot find every item exact search ranks.
    assert 0.0 < index["recall@50"] < 1.0 and 0.0 < index["recall@10"] <= 1.0
    assert "| `IVF4,Flat` |" in (run_dir / "report.md").read_text()


def test_export_rewrites_the_bundle(run, tmp_path):
    run_dir, _ = run
    export = run_dir / "export"
    before = json.loads((export / "manifest.json").read_text())
    (export / "stale.txt").write_text("from an older bundle")
    assert recall.export(run_dir) == export
    after = json.loads((export / "manifest.json").read_text())
    assert not (export / "stale.txt").exists()  # the folder was replaced, not patched
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".export")]  # no temp folders left
    for name in ("items.faiss", "item_ids.npy", "item_vectors.npy"):
        assert after["files"][name] == before["files"][name], name
    assert after["config_hash"] == before["config_hash"]
    other = recall.export(run_dir, tmp_path / "elsewhere")
    assert json.loads((other / "manifest.json").read_text())["files"]["items.faiss"] == before["files"]["items.faiss"]


# --- scores: index == training logits --------------------------------------------------------


def test_faiss_scores_equal_training_logits(run, rec):
    run_dir, _ = run
    _, data, user, items = load_run(run_dir)
    rows = np.random.default_rng(1).choice(len(data.test.history), 12, replace=False)
    history = data.test.history[rows]  # int32 [12, M] internal ids, right-aligned
    u = user({"history": tf.constant(history), "age": tf.zeros([len(rows)]),
              "user_features": tf.zeros([len(rows), 0], tf.int32)}, training=False).numpy()
    w, b = (t.numpy() for t in items.weights_and_biases())
    logits = u @ w.T + b  # [12, N]: exactly what the softmax is trained on

    raw = [[data.split.item_ids[i].item() for i in h[h >= 0]] for h in history]
    query = rec.query_vectors(raw)  # served through the SavedModel from raw ids
    vectors = np.load(run_dir / "export" / "item_vectors.npy")
    np.testing.assert_allclose(vectors[:, :-1], w, rtol=1e-6)
    np.testing.assert_allclose(vectors[:, -1], b, rtol=1e-6)
    np.testing.assert_allclose(query @ vectors.T, logits, rtol=1e-4, atol=1e-4)

    k = 20
    scores, ids = rec.index.search(query.astype(np.float32), k)
    np.testing.assert_allclose(scores, np.take_along_axis(logits, ids, axis=1), rtol=1e-4, atol=1e-4)
    brute = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    brute_scores = np.take_along_axis(logits, brute, axis=1)
    np.testing.assert_allclose(scores, brute_scores, rtol=1e-4, atol=1e-4)
    # Ids agree except where two neighbours tie within float error (then either order is right).
    gaps = np.abs(np.diff(brute_scores, axis=1))
    ambiguous = np.zeros_like(brute, bool)
    ambiguous[:, :-1] |= gaps < 1e-4
    ambiguous[:, 1:] |= gaps < 1e-4
    assert (ids == brute)[~ambiguous].all()


# --- serving: outside client, Python API and CLI agree ---------------------------------------

CLIENT = textwrap.dedent("""
    import json
    import sys

    import faiss
    import numpy as np
    import tensorflow as tf

    export, histories, k = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    with open(export + "/manifest.json") as f:
        manifest = json.load(f)
    index = faiss.read_index(export + "/items.faiss")
    item_ids = np.load(export + "/item_ids.npy", allow_pickle=False)
    serve = tf.saved_model.load(export + "/user_tower").signatures[manifest["signature"]["name"]]
    row_of = {raw.item(): row for row, raw in enumerate(item_ids)}
    dtype = tf.string if manifest["item_id_dtype"] == "string" else tf.int64
    out = []
    for history in histories:
        query = serve(history=tf.constant([history], dtype))[manifest["signature"]["output"]].numpy()
        seen = {row_of[i] for i in history if i in row_of}
        _, rows = index.search(query.astype(np.float32), k + len(seen))  # over-fetch, then drop seen
        top = [int(r) for r in rows[0] if r >= 0 and int(r) not in seen][:k]
        out.append([item_ids[r].item() for r in top])
    print(json.dumps({"recommendations": out, "recall_imported": "recall" in sys.modules}))
""")


def test_outside_client_python_api_and_cli_agree(run, rec, tmp_path):
    export = run[0] / "export"
    histories = _histories(run[0], 4)
    histories[1] = histories[1][:2]  # a short history
    k = 15
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    # Both subprocesses at once: each spends most of its time importing TensorFlow.
    client = subprocess.Popen([sys.executable, str(script), str(export), json.dumps(histories), str(k)],
                              cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    query = subprocess.Popen([sys.executable, "-m", "recall", "query", str(export), "--history",
                              ",".join(map(str, histories[0])), "-k", str(k), "--json"],
                             cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = client.communicate(timeout=300)
    assert client.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    q_out, q_err = query.communicate(timeout=300)
    assert query.returncode == 0, q_err[-2000:]
    cli_result = json.loads(q_out.strip().splitlines()[-1])

    assert result["recall_imported"] is False
    expected = rec.recommend(histories, k=k)
    assert result["recommendations"] == expected
    assert cli_result["items"] == expected[0]
    assert len(cli_result["scores"]) == k and cli_result["scores"] == sorted(cli_result["scores"], reverse=True)
    for history, top in zip(histories, expected, strict=True):
        assert len(top) == k and not set(top) & set(history)


def test_unknown_ids_in_a_history_are_ignored(rec):
    history = [int(i) for i in rec.item_ids[[5, 40, 7, 63]]]
    unknown = [10**9, -5]  # not in the catalogue
    with_unknown = [unknown[0], *history[:2], unknown[1], *history[2:], 10**9 + 1]
    assert rec.recommend([with_unknown], k=10) == rec.recommend([history], k=10)
    np.testing.assert_array_equal(rec.query_vectors([with_unknown]), rec.query_vectors([history]))
    np.testing.assert_array_equal(rec.rows_of(with_unknown), [-1, 5, 40, -1, 7, 63, -1])


def test_string_item_ids_work_end_to_end(tmp_path, capsys):
    log = _log(tmp_path / "log.parquet", 120, 40, 10, string_ids=True)
    run_dir = tmp_path / "run"
    recall.train(_config(log, "train.epochs=1"), run_dir)
    export = run_dir / "export"
    rec = Recommender.load(export)
    assert rec.manifest["item_id_dtype"] == "string" and rec.item_ids.dtype.kind == "U"

    _, data, user, items = load_run(run_dir)
    internal = data.test.history[:3]
    histories = [[str(data.split.item_ids[i]) for i in h[h >= 0]] for h in internal]
    assert all(h and all(i.startswith("i") for i in h) for h in histories)
    # The served query (raw string ids → SavedModel) is the training tower's query for those items.
    u = user({"history": tf.constant(internal), "age": tf.zeros([3]), "user_features": tf.zeros([3, 0], tf.int32)})
    np.testing.assert_allclose(rec.query_vectors(histories)[:, :-1], u.numpy(), rtol=1e-4, atol=1e-5)

    top = rec.recommend(histories, k=5)
    assert all(len(t) == 5 and all(isinstance(i, str) and i.startswith("i") for i in t) for t in top)
    assert all(not set(t) & set(h) for t, h in zip(top, histories, strict=True))
    assert rec.recommend([histories[0] + ["no-such-item"]], k=5) == top[:1]

    capsys.readouterr()
    assert cli.main(["query", str(export), "--history", ",".join(histories[0]), "-k", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == top[0]


# --- damaged bundles --------------------------------------------------------------------------


def _cli_query_fails(export: Path, capsys, needle: str) -> None:
    capsys.readouterr()
    assert cli.main(["query", str(export), "--history", "1,2"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_tampered_index_is_refused(run, tmp_path, capsys):
    export = tmp_path / "export"
    shutil.copytree(run[0] / "export", export)
    data = bytearray((export / "items.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (export / "items.faiss").write_bytes(bytes(data))
    with pytest.raises(RecallError, match="items.faiss"):
        Recommender.load(export)
    _cli_query_fails(export, capsys, "items.faiss")


def test_wrong_format_version_is_refused(run, tmp_path, capsys):
    export = tmp_path / "export"
    shutil.copytree(run[0] / "export", export)
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["format_version"] = 99
    (export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecallError, match=r"manifest\.json.*format_version"):
        Recommender.load(export)
    _cli_query_fails(export, capsys, "manifest.json")


# --- resume and early stopping ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    return _log(tmp_path_factory.mktemp("small") / "log.parquet", 150, 50, 10)


def _steps_per_epoch(run_dir: Path) -> int:
    return -(-json.loads((run_dir / "metrics.json").read_text())["data"]["examples"] // 128)


def test_resume_continues_the_global_step(small_log, tmp_path):
    run_dir = tmp_path / "run"
    first = recall.train(_config(small_log, "train.epochs=1", "train.early_stopping=null"), run_dir)
    per_epoch = _steps_per_epoch(run_dir)
    assert first["train"]["steps"] == per_epoch and first["train"]["epochs"] == 1

    second = recall.train(_config(small_log, "train.epochs=2", "train.early_stopping=null"), run_dir)
    assert second["train"]["steps"] == 2 * per_epoch and second["train"]["epochs"] == 2
    history = json.loads((run_dir / "history.json").read_text())
    assert [(e["epoch"], e["step"]) for e in history["epochs"]] == [(1, per_epoch), (2, 2 * per_epoch)]
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith(f"ckpt-{2 * per_epoch}")


def test_resume_from_a_mid_epoch_checkpoint(small_log, tmp_path, monkeypatch):
    import recall.training.loop as loop

    run_dir = tmp_path / "run"
    cfg = _config(small_log, "train.epochs=1", "train.checkpoint_every_steps=3", "train.early_stopping=null",
                  "train.steps_per_execution=1")
    real = loop.make_train_block
    calls = []

    def interrupted_after(n):
        def make(*args, **kwargs):
            block = real(*args, **kwargs)

            def wrapped(idx, first_step):
                if n is not None and len(calls) == n:
                    raise KeyboardInterrupt  # as if the user pressed Ctrl-C before step n + 1
                calls.extend([int(first_step)] * int(idx.shape[0]))
                return block(idx, first_step)

            return wrapped

        return make

    monkeypatch.setattr(loop, "make_train_block", interrupted_after(5))
    with pytest.raises(KeyboardInterrupt):
        recall.train(cfg, run_dir)
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("ckpt-3")
    assert not (run_dir / "metrics.json").exists()

    calls.clear()
    monkeypatch.setattr(loop, "make_train_block", interrupted_after(None))
    metrics = recall.train(cfg, run_dir)
    per_epoch = _steps_per_epoch(run_dir)
    assert per_epoch > 5
    assert metrics["train"]["steps"] == per_epoch  # the same total as an uninterrupted epoch
    assert len(calls) == per_epoch - 3  # the 3 checkpointed batches are skipped, not replayed
    assert calls[0] == 3  # and the first step run is global step 3 (0-based), after the checkpoint
    history = json.loads((run_dir / "history.json").read_text())
    assert [(e["epoch"], e["step"]) for e in history["epochs"]] == [(1, per_epoch)]


def test_early_stopping_when_validation_does_not_improve(small_log, tmp_path):
    run_dir = tmp_path / "run"
    # A learning rate this small leaves every ranking unchanged, so no epoch can beat epoch 1: with
    # patience 2 the run must stop after epoch 3 of 5 (epochs 2 and 3 without improvement).
    overrides = ("train.epochs=5", "train.learning_rate=1e-9", "train.early_stopping.patience=2",
                 "train.early_stopping.metric=hr@20")
    metrics = recall.train(_config(small_log, *overrides), run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["train"] == metrics["train"]
    history = json.loads((run_dir / "history.json").read_text())
    t = metrics["train"]
    assert t["stopped_early"] is True and t["epochs"] == 3 == len(history["epochs"])
    assert _replay_early_stopping(history, "hr@20", patience=2) == 3
    assert t["steps"] == 3 * _steps_per_epoch(run_dir)
    assert t["best_valid"]["hr@20"] == history["epochs"][0]["valid_hr@20"]

    # Training the stopped run again does not train further.
    again = recall.train(_config(small_log, *overrides), run_dir)
    assert again["train"]["steps"] == t["steps"] and again["train"]["stopped_early"] is True
    assert len(json.loads((run_dir / "history.json").read_text())["epochs"]) == 3


def test_steps_per_execution_changes_nothing_but_speed(small_log, tmp_path):
    """K steps per compiled call draw the same negatives and apply the same updates as one per call
    (each step's negatives are keyed on its global step: K unrolled copies of a stateful TF sampler
    op would share one seed and draw the same negatives K times)."""
    common = ("train.epochs=1", "train.early_stopping=null", "loss.sampler=log_uniform")
    one = recall.train(_config(small_log, *common, "train.steps_per_execution=1"), tmp_path / "one")
    four = recall.train(_config(small_log, *common, "train.steps_per_execution=4"), tmp_path / "four")
    assert one["test"]["filtered"] == four["test"]["filtered"]
    np.testing.assert_allclose(np.load(tmp_path / "one" / "export" / "item_vectors.npy"),
                               np.load(tmp_path / "four" / "export" / "item_vectors.npy"), rtol=1e-5, atol=1e-6)
