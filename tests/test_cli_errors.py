"""Bad input through the CLI: exit code 2, one `error:` line naming the field or file, no traceback,
and nothing half-written in the run directory. Every case fails before training starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recall.cli import main
from recall.config import dump_config, load_config


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    """~20 users × 10 items, 8 interactions each, as CSV (',' and ';'), Parquet, and broken variants."""
    rng = np.random.default_rng(0)
    rows = [(u, int(i), 1000 + t, 4.0) for u in range(20) for t, i in enumerate(rng.choice(10, 8, replace=False))]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    d = tmp_path / "data"
    d.mkdir()
    paths = {
        "csv": d / "ratings.csv",
        "semicolon": d / "semicolon.csv",
        "noitem": d / "noitem.csv",
        "parquet": d / "ratings.parquet",
        "norating": d / "norating.csv",
    }
    df.to_csv(paths["csv"], index=False)
    df.to_csv(paths["semicolon"], index=False, sep=";")
    df.drop(columns="item_id").to_csv(paths["noitem"], index=False)
    df.drop(columns="rating").to_csv(paths["norating"], index=False)
    df.to_parquet(paths["parquet"])
    return paths


def write_config(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def file_config(tmp_path: Path, data_path: Path, extra: str = "") -> Path:
    return write_config(tmp_path, f"data:\n  source: file\n  path: {data_path}\n{extra}")


def assert_user_error(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_untouched(run: Path) -> None:
    """A refused run leaves no run directory behind (so a corrected rerun is not refused as a mismatch)."""
    assert not run.exists(), sorted(p.name for p in run.iterdir())


# --- in-process ---------------------------------------------------------------------------------------


def test_missing_config_file(tmp_path, capsys):
    run = tmp_path / "run"
    missing = tmp_path / "nope.yaml"
    assert_user_error(capsys, ["train", str(missing), "--run-dir", str(run)], str(missing), "not found")
    assert_untouched(run)


def test_typo_in_config(tmp_path, capsys, data):
    run = tmp_path / "run"
    cfg = file_config(tmp_path, data["csv"], "train:\n  num_sampeld: 5\n")
    assert_user_error(capsys, ["train", str(cfg), "--run-dir", str(run)], "train.num_sampeld", "unknown key", str(cfg))
    assert_untouched(run)


def test_invalid_yaml(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = write_config(tmp_path, "train: {epochs: 2\n")
    assert_user_error(capsys, ["train", str(cfg), "--run-dir", str(run)], str(cfg), "YAML")
    assert_untouched(run)


def test_data_file_given_as_config(tmp_path, capsys, data):
    run = tmp_path / "run"
    assert_user_error(capsys, ["train", str(data["parquet"]), "--run-dir", str(run)], str(data["parquet"]))
    assert_untouched(run)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.batch_size=abc", "train.batch_size"),
        ("train.learning_rate=-1", "train.learning_rate"),
        ("loss.sampler=bogus", "loss.sampler"),
        ("model.dimm=3", "model.dimm"),
        ("train.epochs", "--set"),
        ("seed.x=1", "seed"),
    ],
)
def test_bad_set_override(tmp_path, capsys, data, override, needle):
    run = tmp_path / "run"
    cfg = file_config(tmp_path, data["csv"])
    assert_user_error(capsys, ["train", str(cfg), "--set", override, "--run-dir", str(run)], needle)
    assert_untouched(run)


def test_data_path_missing_file(tmp_path, capsys):
    run = tmp_path / "run"
    missing = tmp_path / "data" / "missing.csv"
    cfg = file_config(tmp_path, missing)
    assert_user_error(capsys, ["train", str(cfg), "--run-dir", str(run)], str(missing), "data.path")
    assert_untouched(run)


def test_data_source_file_without_path(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = write_config(tmp_path, "data:\n  source: file\n")
    assert_user_error(capsys, ["train", str(cfg), "--run-dir", str(run)], "data.path")
    assert_untouched(run)


def test_csv_missing_item_column(tmp_path, capsys, data):
    run = tmp_path / "run"
    cfg = file_config(tmp_path, data["noitem"])
    assert_user_error(capsys, ["train", str(cfg), "--run-dir", str(run)], str(data["noitem"]), "data.columns.item")
    assert_untouched(run)


def test_configured_item_column_absent(tmp_path, capsys, data):
    run = tmp_path / "run"
    cfg = file_config(tmp_path, data["parquet"], "  columns:\n    item: product\n")
    assert_user_error(capsys, ["train", str(cfg), "--run-dir", str(run)], "'product'", "data.columns.item")
    assert_untouched(run)


def test_wrong_csv_delimiter(tmp_path, capsys, data):
    run = tmp_path / "run"
    cfg = file_config(tmp_path, data["semicolon"], "  delimiter: ','\n")
    assert_user_error(capsys, ["train", str(cfg), "--run-dir", str(run)], str(data["semicolon"]), "data.delimiter")
    assert_untouched(run)


def test_min_rating_without_rating_column(tmp_path, capsys, data):
    run = tmp_path / "run"
    cfg = file_config(tmp_path, data["norating"], "  min_rating: 4\n")
    assert_user_error(capsys, ["train", str(cfg), "--run-dir", str(run)], str(data["norating"]), "min_rating")
    assert_untouched(run)


def test_min_rating_drops_everything(tmp_path, capsys, data):
    run = tmp_path / "run"
    cfg = file_config(tmp_path, data["csv"], "  min_rating: 4.5\n")
    assert_user_error(capsys, ["train", str(cfg), "--run-dir", str(run)], "min_rating")
    assert_untouched(run)


def test_user_features_file_missing(tmp_path, capsys, data):
    run = tmp_path / "run"
    missing = tmp_path / "users.parquet"
    cfg = file_config(tmp_path, data["csv"], f"  user_features:\n    path: {missing}\n    columns: [gender]\n")
    assert_user_error(capsys, ["train", str(cfg), "--run-dir", str(run)], str(missing),
                      "data.user_features.path")
    assert_untouched(run)


def test_num_sampled_not_smaller_than_catalogue(tmp_path, capsys, data):
    run = tmp_path / "run"
    cfg = file_config(tmp_path, data["parquet"], "loss:\n  num_sampled: 10\n")  # the catalogue has 10 items
    assert_user_error(capsys, ["train", str(cfg), "--run-dir", str(run)], "loss.num_sampled=10", "10 items")
    assert_untouched(run)


def test_no_training_examples(tmp_path, capsys, data):
    run = tmp_path / "run"
    cfg = file_config(tmp_path, data["csv"], "train:\n  min_history: 50\n")
    assert_user_error(capsys, ["train", str(cfg), "--run-dir", str(run)], "train.min_history")
    assert_untouched(run)


def test_run_dir_of_a_different_experiment(tmp_path, capsys, data):
    run = tmp_path / "run"
    run.mkdir()
    cfg = file_config(tmp_path, data["csv"])
    old = dump_config(load_config(cfg, ["model.dim=8"]))
    (run / "config.yaml").write_text(old)
    assert_user_error(capsys, ["train", str(cfg), "--run-dir", str(run)], str(run), "model.dim=8, not 64",
                      "--run-dir")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    assert (run / "config.yaml").read_text() == old


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["frobnicate"], "frobnicate"),
        (["train"], "config"),
        (["query", "somewhere"], "--history"),
        (["query", "somewhere", "--history", "1", "-k", "ten"], "-k"),
        (["data"], "data_command"),
        ([], "command"),
    ],
)
def test_bad_arguments(capsys, argv, needle):
    assert_user_error(capsys, argv, needle)


def test_evaluate_on_a_folder_that_is_not_a_run_dir(tmp_path, capsys):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    assert_user_error(capsys, ["evaluate", str(folder)], str(folder), "not a run directory")
    assert list(folder.iterdir()) == []


def test_export_on_a_folder_that_is_not_a_run_dir(tmp_path, capsys):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    assert_user_error(capsys, ["export", str(folder)], str(folder), "not a run directory")
    assert list(folder.iterdir()) == []


def test_query_on_a_folder_without_manifest(tmp_path, capsys):
    folder = tmp_path / "no_bundle"
    folder.mkdir()
    assert_user_error(capsys, ["query", str(folder), "--history", "1,2"], "manifest.json", str(folder))


# --- subprocess: the real entry point prints no traceback (and no TensorFlow start-up noise) ----------


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "recall", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def assert_subprocess_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_subprocess_missing_config(tmp_path):
    proc = run_cli(["train", "missing.yaml", "--run-dir", str(tmp_path / "run")], tmp_path)
    assert_subprocess_error(proc, "missing.yaml")
    assert_untouched(tmp_path / "run")


def test_subprocess_typo_via_set(tmp_path, data):
    cfg = file_config(tmp_path, data["csv"])
    proc = run_cli(["train", str(cfg), "--set", "loss.num_sampeld=5", "--run-dir", str(tmp_path / "run")], tmp_path)
    assert_subprocess_error(proc, "loss.num_sampeld", "unknown key")
    assert_untouched(tmp_path / "run")


def test_subprocess_data_error_after_tensorflow_import(tmp_path, data):
    # `train` imports TensorFlow once the config is valid; its C++ start-up lines must not reach stderr.
    cfg = file_config(tmp_path, data["noitem"])
    proc = run_cli(["train", str(cfg), "--run-dir", str(tmp_path / "run")], tmp_path)
    assert_subprocess_error(proc, "data.columns.item")
    assert_untouched(tmp_path / "run")


def test_subprocess_query_without_manifest(tmp_path):
    proc = run_cli(["query", str(tmp_path), "--history", "1"], tmp_path)
    assert_subprocess_error(proc, "manifest.json")


@pytest.mark.parametrize("change", [("  - kind: mean\n    window: null\n",
                                     "  - kind: mean\n    window: null\n  - kind: gru\n    window: 2\n"),
                                    ("dim: 8", "dim: 6")], ids=["missing-weights", "shapes"])
def test_evaluate_a_checkpoint_that_does_not_fit(tmp_path, capsys, data, change):
    # A checkpoint written for another model (config.yaml edited since: a GRU the run never had, or
    # another width) must not load with freshly initialised weights in place of the missing ones.
    run = tmp_path / "run"
    cfg = file_config(tmp_path, data["csv"], "model:\n  dim: 8\n  hidden: [8]\nloss:\n  num_sampled: 4\n"
                                             "train:\n  epochs: 1\n  early_stopping: null\neval:\n  ks: [5]\n")
    assert main(["train", str(cfg), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    text = (run / "config.yaml").read_text()
    assert change[0] in text
    (run / "config.yaml").write_text(text.replace(*change, 1))
    metrics = (run / "metrics.json").read_text()
    assert_user_error(capsys, ["evaluate", str(run)], "checkpoints", "does not fit", "retrain")
    assert (run / "metrics.json").read_text() == metrics
