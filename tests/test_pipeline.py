"""recall/pipeline.py without training: what a resumed run may change (RESUME_RULES, `_check_run_dir`).

Every case writes the run directory's config.yaml as a first run would, then checks the resumed
config against it: a refused change is a one-line RecallError naming the dotted field and the fix,
an allowed one passes. A test keeps the table complete: every config field has a row.
"""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from recall.config import Config, TrainConfig, best_metric, dump_config, load_config
from recall.errors import RecallError
from recall.pipeline import RESUME_RULES, _check_run_dir, resume_rule

SEQUENCES = "batching" in TrainConfig.model_fields  # train.batching / sequence_length, where this recall has them

# (settings of the first run, the resumed run's change): refused, then allowed. The first run is the
# default config plus its settings (early stopping on hr@50, eval.ks 10…200).
REFUSED = [
    ((), "seed=7"),
    ((), "data.min_rating=4"),
    ((), "model.dim=32"),
    ((), "loss.num_sampled=50"),
    ((), "train.batch_size=256"),
    ((), "train.learning_rate=0.01"),
    ((), "train.optimizer=lazy_adam"),
    ((), "train.min_history=3"),
    ((), "train.max_examples_per_user=5"),
    ((), "train.shuffle=false"),
    ((), "train.early_stopping.metric=hr@20"),
    ((), "train.lr_schedule=constant"),
    ((), "train.warmup_steps=10"),
    ((), "eval.query_age=last_event"),
    # Early stopping off: "best" is then HR at the largest K ≤ 50, so a new eval.ks can move it.
    (("train.early_stopping=null", "eval.ks=[10,20,50]"), "eval.ks=[10,20]"),
    ((), "warm_start=runs/parent"),  # a cold run's directory cannot become a warm run's
    (("warm_start.run_dir=runs/parent",), "warm_start.run_dir=runs/other"),
    *([((), "train.batching=positions"),
       (("train.batching=sequences",), "train.sequence_length=128")] if SEQUENCES else []),
]
ALLOWED = [
    ((), "run_dir=elsewhere"),
    ((), "model.compute_dtype=bfloat16"),
    ((), "train.epochs=20"),
    (("train.lr_schedule=cosine",), "train.epochs=20"),  # allowed, with a warning (re-planned decay)
    ((), "train.early_stopping=null"),  # "best" stays hr@50: the largest K ≤ 50
    ((), "train.early_stopping.patience=5"),
    ((), "train.checkpoint_every_steps=100"),
    ((), "train.batch_splits=2"),
    ((), "train.steps_per_execution=1"),
    ((), "train.deterministic=true"),
    ((), "train.intra_op_threads=1"),
    ((), "train.inter_op_threads=1"),
    ((), "eval.ks=[10,50]"),
    ((), "eval.batch_size=64"),
    ((), "eval.index_recall_queries=100"),
    ((), "index.factory=HNSW32"),
    *([(("train.batching=positions",), "train.sequence_length=128")] if SEQUENCES else []),  # not read there
    # The hash a warm run recorded when it started; the resumed command does not repeat it.
    (("warm_start.run_dir=runs/parent",), "warm_start.parent_config_hash=" + "ab" * 32),
]


def _resume(tmp_path: Path, first: tuple[str, ...], *changes: str) -> Path:
    """Write the first run's config.yaml, then check the resumed config (first + changes) against it."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(load_config(None, list(first))))
    _check_run_dir(load_config(None, [*first, *changes]), run)
    return run


@pytest.mark.parametrize("first, change", REFUSED, ids=[c for _, c in REFUSED])
def test_a_change_that_alters_examples_order_weights_or_best_is_refused(tmp_path, first, change):
    with pytest.raises(RecallError) as err:
        _resume(tmp_path, first, change)
    message = str(err.value)
    path = change.split("=")[0] if change != "eval.ks=[10,20]" else "train.early_stopping.metric"
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'run'}: was trained with {path}="), message
    assert "--run-dir" in message and "set it back" in message


@pytest.mark.parametrize("first, change", ALLOWED, ids=[c for _, c in ALLOWED])
def test_a_change_that_keeps_them_resumes(tmp_path, first, change):
    _resume(tmp_path, first, change)


def test_the_message_names_the_values_and_counts_the_other_fields(tmp_path):
    with pytest.raises(RecallError, match=r"train\.batch_size=512, not 256 — a mid-epoch"):
        _resume(tmp_path / "one", (), "train.batch_size=256")
    with pytest.raises(RecallError, match=r"seed=42, not 7 \(and 1 more field\(s\)\) — the epoch order"):
        _resume(tmp_path / "two", (), "seed=7", "train.shuffle=false")


def test_a_changed_resolved_best_metric_names_it(tmp_path):
    with pytest.raises(RecallError, match=r"train\.early_stopping\.metric=hr@50, not hr@20 "):
        _resume(tmp_path, ("train.early_stopping=null", "eval.ks=[10,20,50]"), "eval.ks=[10,20]")


def test_user_features_added_is_refused(tmp_path):
    with pytest.raises(RecallError, match=r"data\.user_features=null, not \{\"path\": \"users\.csv\""):
        _resume(tmp_path, (), "data.user_features={path: users.csv}")


def test_cosine_epochs_change_warns(tmp_path, caplog):
    _resume(tmp_path, ("train.lr_schedule=cosine",), "train.epochs=20")
    assert "re-planned" in caplog.text and "12 → 20" in caplog.text


def test_best_metric():
    assert best_metric(load_config(None)) == "hr@50"
    assert best_metric(load_config(None, ["train.early_stopping.metric=ndcg@10"])) == "ndcg@10"
    assert best_metric(load_config(None, ["train.early_stopping=null", "eval.ks=[10,20,100]"])) == "hr@20"
    assert best_metric(load_config(None, ["train.early_stopping=null", "eval.ks=[100,200]"])) == "hr@100"


def _field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every field of a config class by dotted path, through optional sections (early_stopping, …)."""
    out = []
    for name, field in model.model_fields.items():
        section = [t for t in (field.annotation, *typing.get_args(field.annotation))
                   if isinstance(t, type) and issubclass(t, BaseModel)]
        out += _field_paths(section[0], f"{prefix}{name}.") if section else [f"{prefix}{name}"]
    return out


def test_every_config_field_has_a_resume_rule():
    paths = _field_paths(Config)
    assert "train.early_stopping.patience" in paths and "data.user_features.path" in paths
    assert [p for p in paths if resume_rule(p) is None] == []  # a new field: add its row to RESUME_RULES


def test_every_rule_is_exercised_by_a_case():
    decided = {resume_rule(change.split("=")[0])[0] for _, change in REFUSED + ALLOWED}
    paths = _field_paths(Config)
    # (rows for fields this recall does not have yet, such as train.batching on an older branch, wait for them)
    present = {row[0] for row in RESUME_RULES if any(p == row[0] or p.startswith(row[0] + ".") for p in paths)}
    assert decided == present


def test_the_cli_refuses_with_exit_code_2_and_one_line(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("data: {source: synthetic}\ntrain: {batch_size: 64}\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(load_config(config)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "RECALL_HUGE_PAGES": "0"}
    proc = subprocess.run([sys.executable, "-m", "recall", "train", str(config), "--set", "train.shuffle=false",
                           "--run-dir", str(run)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {run}: was trained with train.shuffle=true, not false — the epoch order: a mid-epoch resume "
        "would skip other examples; set it back to resume, or use a new --run-dir (or delete the old one) to "
        "start over"]
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
