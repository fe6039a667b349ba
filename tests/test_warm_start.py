"""Warm start (recall/warm_start.py): every surviving id's row, bias and optimizer slots move to
its new row exactly; a warm start on the parent's own data continues where the parent left off; bad
parents are refused with one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from pre_recipe import PRE_RECIPE

tf = pytest.importorskip("tensorflow")

from recall.cli import main  # noqa: E402
from recall.config import config_from_dict, dump_config, load_config  # noqa: E402
from recall.data.features import UserFeatures  # noqa: E402
from recall.data.vocabulary import write_vocabulary  # noqa: E402
from recall.pipeline import build_model  # noqa: E402
from recall.training.samplers import make_sampler  # noqa: E402
from recall.training.schedule import make_optimizer  # noqa: E402
from recall.training.step import trainable_variables  # noqa: E402
from recall.warm_start import (  # noqa: E402
    optimizer_slots,
    prepare_warm_start,
    read_parent,
    row_map,
)

# --- a hand-made parent: rows filled with values that name their id ------------------------------------
#
# parent rows (by frequency):  0:10  1:20  2:30  3:40  4:50        gender: F M         (codes 1, 2)
# new rows (by new frequency): 0:30  1:50  2:10  3:60  4:70        gender: F M X       (codes 1, 2, 3)
# so 30 moves 2 → 0, 50 4 → 1, 10 0 → 2; 60 and 70 are new; 20 and 40 are dropped; F, M keep codes 1, 2.
OLD_IDS = np.array([10, 20, 30, 40, 50])
NEW_IDS = np.array([30, 50, 10, 60, 70])
EXPECTED = np.array([2, 4, 0, -1, -1])  # parent row of each new row
DIM = 4


def _features(values: list[str]) -> UserFeatures:
    return UserFeatures(names=["gender"], vocabs=[np.array(values)], codes=np.zeros((1, 1), np.int32))


def _config(optimizer: str, tied: bool):
    return load_config(None, [
        f"model.dim={DIM}", "model.hidden=[6]", "model.max_history=5", "model.feature_dim=3",
        "model.history=[{kind: mean}]", *PRE_RECIPE,
        f"model.tie_embeddings={str(tied).lower()}", "loss.sampler=in_batch", "loss.frequency=streaming",
        f"train.optimizer={optimizer}", "train.batch_size=8"])


def _named(shape, row_scale: float) -> np.ndarray:
    """[R, ...] array whose row r holds (r + 1)·row_scale + a small per-column pattern (every row distinct)."""
    rows = (np.arange(shape[0], dtype=np.float32) + 1)[(...,) + (None,) * (len(shape) - 1)] * row_scale
    return (rows + np.arange(int(np.prod(shape[1:])), dtype=np.float32).reshape(shape[1:]) * 0.01).astype(np.float32)


def _tables(user, items) -> dict:
    """name → variable of every row-shaped variable (the history table only when untied)."""
    out = {"items": items.embeddings, "bias": items.bias, "gender": user.feature_embeddings[0].embeddings}
    if user.shared_items is None:
        out["history"] = user.history_embeddings
    return out


def _write_parent(root: Path, cfg) -> dict:
    """A parent run directory whose tables and slots hold _named values; returns {name: array} written."""
    user, items = build_model(cfg, len(OLD_IDS), [2])
    variables = trainable_variables(user, items)
    opt = make_optimizer(cfg.train.optimizer, 1e-3)
    opt.build(variables)
    sampler = make_sampler("in_batch", 5, len(OLD_IDS), item_counts=np.array([5, 4, 3, 2, 1]), streaming=True,
                           batch_size=8)
    written = {}
    for k, (name, var) in enumerate(_tables(user, items).items()):
        written[name] = _named(var.shape, 10.0 ** (k + 1))
        var.assign(written[name])
    slots = optimizer_slots(opt)
    for s, (slot_name, slot_vars) in enumerate(slots.items()):
        for var, slot in zip(variables, slot_vars, strict=True):
            value = _named(slot.shape, 7.0 + s) + 1.0  # positive (Adam's v, Adagrad's accumulator)
            slot.assign(value)
            written[(slot_name, id(var))] = value
    opt.iterations.assign(123)
    est = sampler.estimator
    est.step.assign(40)
    est.last.assign(np.array([40, 31, 22, 13, 4]))
    est.gap.assign(np.array([1.5, 2.5, 3.5, 4.5, 5.5], np.float32))
    est.mult.assign(np.array([3.0, 2.0, 1.5, 1.2, 1.1], np.float32))
    written["dense"] = [v.numpy() for v in user.mlp[0].weights]
    ckpt = tf.train.Checkpoint(user=user, items=items, optimizer=opt, sampler=sampler)
    tf.train.CheckpointManager(ckpt, str(root / "checkpoints"), max_to_keep=1).save(checkpoint_number=9)
    best = tf.train.Checkpoint(user=user, items=items)
    tf.train.CheckpointManager(best, str(root / "checkpoints" / "best"), max_to_keep=1).save(checkpoint_number=9)
    (root / "config.yaml").write_text(dump_config(cfg))
    write_vocabulary(root / "vocabulary", OLD_IDS, _features(["F", "M"]))
    return written


def test_row_map_follows_raw_ids():
    assert row_map(OLD_IDS, NEW_IDS).tolist() == EXPECTED.tolist()
    assert row_map(np.array(["a", "b"]), np.array(["b", "c"], dtype=object)).tolist() == [1, -1]


@pytest.mark.parametrize("optimizer, tied", [("adam", False), ("lazy_adam", True), ("adagrad", True),
                                             ("lazy_adagrad", False)])
def test_every_surviving_row_bias_and_slot_arrives_at_its_new_row(tmp_path, optimizer, tied):
    cfg = _config(optimizer, tied)
    written = _write_parent(tmp_path / "parent", cfg)
    data = SimpleNamespace(split=SimpleNamespace(item_ids=NEW_IDS), features=_features(["F", "M", "X"]))
    warm = prepare_warm_start(cfg, data, read_parent(tmp_path / "parent"))
    # The new run, built as the pipeline builds it (after the parent), and a cold twin for the fresh rows.
    user, items = build_model(cfg, len(NEW_IDS), [3])
    variables = trainable_variables(user, items)
    opt = make_optimizer(optimizer, 1e-3)
    opt.build(variables)
    sampler = make_sampler("in_batch", 5, len(NEW_IDS), item_counts=np.array([5, 4, 3, 2, 1]), streaming=True,
                           batch_size=8)
    report = warm.apply(user, items, variables, opt, sampler)
    cold_user, cold_items = build_model(cfg, len(NEW_IDS), [3])
    cold_opt = make_optimizer(optimizer, 1e-3)
    cold_opt.build(trainable_variables(cold_user, cold_items))
    cold_tables = _tables(cold_user, cold_items)

    kept, new = EXPECTED >= 0, EXPECTED < 0
    gender_map = np.array([0, 1, 2, -1])  # unknown stays 0; F, M keep 1, 2; X is new
    for name, var in _tables(user, items).items():
        got, parent_rows = var.numpy(), written[name]
        rmap = gender_map if name == "gender" else EXPECTED
        np.testing.assert_array_equal(got[rmap >= 0], parent_rows[rmap[rmap >= 0]], err_msg=name)
        np.testing.assert_array_equal(got[rmap < 0], cold_tables[name].numpy()[rmap < 0], err_msg=name)
        if name != "gender":  # dropped ids (parent rows 1 and 3) are nowhere in the new table
            assert not np.isin(parent_rows[[1, 3]], got).any(), name
    cold_slots = optimizer_slots(cold_opt)
    for slot_name, slot_vars in optimizer_slots(opt).items():
        for j, (var, slot) in enumerate(zip(variables, slot_vars, strict=True)):
            name = next((n for n, v in _tables(user, items).items() if v is var), None)
            parent_slot = [value for key, value in written.items()
                           if isinstance(key, tuple) and key[0] == slot_name][j]
            got = slot.numpy()
            if name is None:  # a dense weight: copied whole
                np.testing.assert_array_equal(got, parent_slot, err_msg=f"{slot_name} {var.path}")
                continue
            rmap = gender_map if name == "gender" else EXPECTED
            np.testing.assert_array_equal(got[rmap >= 0], parent_slot[rmap[rmap >= 0]], err_msg=f"{slot_name} {name}")
            np.testing.assert_array_equal(got[rmap < 0], cold_slots[slot_name][j].numpy()[rmap < 0])
    assert int(opt.iterations.numpy()) == 123 and report["optimizer_iterations"] == 123
    for dense, parent_dense in zip(user.mlp[0].weights, written["dense"], strict=True):
        np.testing.assert_array_equal(dense.numpy(), parent_dense)
    est = sampler.estimator
    assert int(est.step.numpy()) == 40
    np.testing.assert_array_equal(est.last.numpy(), [22, 4, 40, 40, 40])  # new items: seen "now"
    np.testing.assert_array_equal(est.gap.numpy()[kept], np.array([3.5, 5.5, 1.5], np.float32))
    np.testing.assert_array_equal(est.gap.numpy()[new], [max(5 / 8, 1.0)] * 2)  # a fresh estimator's gap
    np.testing.assert_array_equal(est.mult.numpy(), np.array([1.5, 1.1, 3.0, 1.0, 1.0], np.float32))
    assert report["items"] == {"kept": 3, "new": 2, "dropped": 2}
    assert report["user_features"] == {"gender": {"kept": 2, "new": 1, "dropped": 0}}
    assert report["frequency_estimate_carried"] and report["optimizer_slots_carried"]


# --- real runs -----------------------------------------------------------------------------------------

CONFIG = """\
seed: 5
data: {source: file, path: PATH}
model: {dim: 8, hidden: [16], max_history: 8, history: [{kind: mean}, {kind: recent, window: 2}],
        tie_embeddings: false, dropout: 0.0, compute_dtype: float32}
loss: {sampler: log_uniform, num_sampled: 10}
train: {epochs: 2, batch_size: 64, learning_rate: 0.01, early_stopping: null, batching: positions,
        lr_schedule: constant}
eval: {ks: [5, 10, 20]}
"""


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """(config file, parent run dir, its metrics) of a tiny finished run on a synthetic log."""
    from recall.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("warm")
    log = root / "log.parquet"
    synthesize(num_users=120, num_items=60, interactions_per_user=10, seed=2).to_parquet(log)
    config = root / "exp.yaml"
    config.write_text(CONFIG.replace("PATH", str(log)))
    assert main(["train", str(config), "--run-dir", str(root / "parent")]) == 0
    return config, root / "parent", json.loads((root / "parent" / "metrics.json").read_text())


def test_a_warm_start_on_the_same_data_continues_where_the_parent_left_off(parent, tmp_path):
    config, parent_dir, parent_metrics = parent
    run = tmp_path / "child"
    assert main(["train", str(config), "--run-dir", str(run), "--warm-start", str(parent_dir),
                 "--set", "train.epochs=1"]) == 0
    epochs = json.loads((run / "history.json").read_text())["epochs"]
    parent_epochs = json.loads((parent_dir / "history.json").read_text())["epochs"]
    # Same data, same vocabulary: epoch 0 (before any step) is the parent's best model on the same queries.
    assert epochs[0]["epoch"] == 0
    assert epochs[0]["valid_hr@20"] == pytest.approx(parent_metrics["train"]["best_valid"]["hr@20"], abs=1e-6)
    assert epochs[0]["valid_ndcg@10"] == pytest.approx(max(e["valid_ndcg@10"] for e in parent_epochs
                                                           if e["valid_hr@20"] == epochs[0]["valid_hr@20"]), abs=1e-6)
    # It continues: its first epoch's loss is below the parent's first (a restart would repeat it).
    assert epochs[1]["loss"] < parent_epochs[0]["loss"]
    lineage = json.loads((run / "lineage.json").read_text())
    assert lineage["items"]["new"] == 0 and lineage["items"]["dropped"] == 0
    assert lineage["optimizer_iterations"] == parent_metrics["train"]["steps"]
    # Lineage everywhere, and the recorded config.yaml reloads (extra="forbid") and hashes the parent's config.
    parent_cfg = config_from_dict(yaml.safe_load((parent_dir / "config.yaml").read_text()))
    saved = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert saved.warm_start.run_dir == str(parent_dir)
    assert saved.warm_start.parent_config_hash == parent_cfg.hash()
    metrics = json.loads((run / "metrics.json").read_text())
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    for record in (metrics["lineage"], manifest["lineage"]):
        assert record["parent_run_dir"] == str(parent_dir) and record["parent_config_hash"] == parent_cfg.hash()
    # Running the same command again resumes the child from its own checkpoint (the lineage kept).
    assert main(["train", str(config), "--run-dir", str(run), "--warm-start", str(parent_dir),
                 "--set", "train.epochs=1"]) == 0


def _refused(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_a_missing_parent_is_refused(parent, tmp_path, capsys):
    config, _, _ = parent
    err = _refused(capsys, str(config), "--run-dir", str(tmp_path / "child"), "--warm-start", str(tmp_path / "nope"))
    assert "warm_start.run_dir" in err and "no such directory" in err
    assert not (tmp_path / "child").exists()  # nothing half-written


def test_a_parent_without_checkpoints_is_refused(parent, tmp_path, capsys):
    config, parent_dir, _ = parent
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "config.yaml").write_text((parent_dir / "config.yaml").read_text())
    err = _refused(capsys, str(config), "--run-dir", str(tmp_path / "child"), "--warm-start", str(stub))
    assert "no trained weights" in err


@pytest.mark.parametrize("change, field", [("model.dim=16", "model.dim"), ("model.hidden=[8]", "model.hidden"),
                                           ("model.history=[{kind: mean}]", "model.history"),
                                           ("model.item_bias=false", "model.item_bias")])
def test_an_incompatible_model_section_is_refused(parent, tmp_path, capsys, change, field):
    config, parent_dir, _ = parent
    err = _refused(capsys, str(config), "--run-dir", str(tmp_path / "child"), "--warm-start", str(parent_dir),
                   "--set", change)
    assert err.startswith(f"error: {field}: ") and "warm-start parent" in err
    assert not (tmp_path / "child").exists()


def test_a_parent_with_another_item_id_type_is_refused(parent, tmp_path, capsys):
    config, parent_dir, _ = parent
    log = pd.read_parquet(yaml.safe_load(config.read_text())["data"]["path"])
    log["item_id"] = "i" + log["item_id"].astype(str)  # the same items, now with string ids
    log.to_parquet(tmp_path / "str.parquet")
    err = _refused(capsys, str(config), "--run-dir", str(tmp_path / "child"), "--warm-start", str(parent_dir),
                   "--set", f"data.path={tmp_path / 'str.parquet'}")
    assert "item ids are integers, this data's are strings" in err


def test_a_pinned_parent_hash_must_still_match(parent, tmp_path, capsys):
    config, parent_dir, _ = parent
    err = _refused(capsys, str(config), "--run-dir", str(tmp_path / "child"),
                   "--set", f"warm_start={{run_dir: {parent_dir}, parent_config_hash: {'a' * 64}}}")
    assert err.startswith("error: warm_start.parent_config_hash: ")


def test_what_may_change_is_allowed(parent, tmp_path):
    """dropout and temperature may change (no weight depends on them): the parent is accepted."""
    from recall.warm_start import check_compatible

    config, parent_dir, _ = parent
    cfg = load_config(config, ["model.dropout=0.2", "model.temperature=0.5", "model.max_history=6"])
    no_features = UserFeatures(names=[], vocabs=[], codes=np.zeros((1, 0), np.int32))
    check_compatible(read_parent(parent_dir), cfg, np.array([1, 2]), no_features)


def test_user_feature_values_follow_their_values_in_a_real_run(features_run, tmp_path):
    """A warm start from the features fixture on part of its users (some feature values and items leave,
    the rest get new codes and rows), with a cosine schedule: it trains, exports, and counts what moved."""
    from tests.conftest import feature_config

    parent_dir, _ = features_run
    parent_cfg = config_from_dict(yaml.safe_load((parent_dir / "config.yaml").read_text()))
    log = pd.read_parquet(parent_cfg.data.path)
    later = log[(log["user_id"] > 150) & ~log["item_id"].isin([100, 101, 102])]  # 3 items leave the catalogue
    later.to_parquet(tmp_path / "later.parquet")
    cfg = feature_config(tmp_path / "later.parquet", Path(parent_cfg.data.user_features.path),
                         "train.epochs=1", "train.lr_schedule=cosine")
    cfg.warm_start = {"run_dir": str(parent_dir)}
    import recall

    metrics = recall.train(cfg, tmp_path / "child")
    carried = metrics["lineage"]
    assert carried["items"]["dropped"] >= 3 and carried["items"]["kept"] > 70
    zips = carried["user_features"]["zip_code"]
    assert zips == {"kept": 4, "new": 0, "dropped": 0}  # zip prefixes: the 4 regions, all seen before
    assert sum(carried["user_features"]["occupation"].values()) >= 1
    assert carried["optimizer_slots_carried"] and carried["optimizer_iterations"] > 0
    manifest = json.loads((tmp_path / "child" / "export" / "manifest.json").read_text())
    assert manifest["lineage"]["parent_run_dir"] == str(parent_dir) and manifest["num_items"] == 80 - \
        carried["items"]["dropped"] + carried["items"]["new"]
