"""Export parity: the bundle is published only when the test queries, replayed through it as a client
sends them, give the offline metrics; a bundle that serves something else is refused (exit 2) and
nothing is half-written.

Uses the run of tests/conftest.py `features_run` (user features with a zip-code prefix); tests that
export again work on a copy of its run directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("faiss")

import recall  # noqa: E402
from recall import bundle, cli  # noqa: E402
from recall.evaluation.parity import (  # noqa: E402
    ABS_TOLERANCE,
    ParityError,
    compare,
    default_tolerance,
)
from recall.io import sha256_file  # noqa: E402
from recall.pipeline import load_run  # noqa: E402
from recall.serving import Recommender  # noqa: E402

pytestmark = pytest.mark.slow

KS = [5, 10, 20]


@pytest.fixture
def run_copy(features_run, tmp_path) -> Path:
    """A private copy of the trained run directory (checkpoints, metrics.json, export/)."""
    dst = tmp_path / "run"
    shutil.copytree(features_run[0], dst, ignore=shutil.ignore_patterns("tensorboard", ".lock"))
    return dst


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".export")]


# --- a normal export -------------------------------------------------------------------------------


def test_train_records_parity_within_tolerance(features_run):
    run_dir, metrics = features_run
    parity = metrics["export_parity"]
    on_disk = json.loads((run_dir / "metrics.json").read_text())["export_parity"]
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert on_disk == parity == manifest["export_parity"]
    n = metrics["data"]["users"]
    assert parity["passed"] is True and parity["queries"] == n
    assert parity["tolerance"] == default_tolerance(n) == 2 / n
    assert parity["max_abs_diff"] <= parity["tolerance"]
    assert parity["feature_code_mismatches"] == 0 and not any(parity["unknown_feature_values"].values())
    assert parity["query_max_abs_diff"] < 1e-5
    for variant in ("filtered", "unfiltered"):
        for k in KS:
            for name in (f"hr@{k}", f"ndcg@{k}"):
                entry = parity[variant][name]
                # The offline side is the evaluation metrics.json reports (eval.query_age zero, Flat index).
                assert entry["offline"] == round(metrics["test"][variant][name], 6)
                assert abs(entry["served"] - entry["offline"]) <= parity["tolerance"]
    assert 0.3 < parity["filtered"]["hr@10"]["served"] < 1.0  # a model that learned something, not 0 = 0


def test_parity_served_figures_match_an_independent_client(features_run):
    """HR@10 recomputed from Recommender.recommend (raw ids in and out) is the parity's served figure."""
    run_dir, metrics = features_run
    _, data, _, _ = load_run(run_dir)
    rec = Recommender.load(run_dir / "export")
    indptr, seq = data.test.seen
    ids = data.split.item_ids
    histories = [[ids[i].item() for i in seq[a:b]] for a, b in zip(indptr[:-1], indptr[1:], strict=True)]
    features = [dict(zip(data.features.names, row, strict=True)) for row in data.features.raw]
    targets = [ids[t].item() if t >= 0 else None for t in data.test.targets]
    for variant, exclude in (("filtered", True), ("unfiltered", False)):
        top = rec.recommend(histories, k=10, exclude_seen=exclude, features=features)
        hr = np.mean([t is not None and t in row for t, row in zip(targets, top, strict=True)])
        assert hr == pytest.approx(metrics["export_parity"][variant]["hr@10"]["served"], abs=1e-6)


def test_recall_export_records_parity_in_manifest_and_metrics(run_copy, tmp_path):
    out = recall.export(run_copy, tmp_path / "elsewhere")
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert manifest["export_parity"]["passed"] is True
    assert metrics["export_parity"] == {**manifest["export_parity"], "bundle": str(out)}


def test_tolerance():
    assert default_tolerance(6035) == ABS_TOLERANCE == 0.0005  # ML-1M: 3 queries' worth
    assert default_tolerance(300) == pytest.approx(2 / 300)  # small test sets: two queries' worth
    offline = {v: {"hr@10": 0.5, "ndcg@10": 0.25} for v in ("filtered", "unfiltered")}
    served = {"filtered": {"hr@10": 0.5, "ndcg@10": 0.2}, "unfiltered": {"hr@10": 0.503, "ndcg@10": 0.25}}
    out = compare(offline, served, [10], 0.01)
    assert out["worst"] == "filtered ndcg@10" and out["max_abs_diff"] == pytest.approx(0.05)
    assert out["unfiltered"]["hr@10"] == {"offline": 0.5, "served": 0.503, "diff": 0.003}


# --- refused exports ---------------------------------------------------------------------------------


def _drop_prefixes(monkeypatch):
    """The bug this guards against: a tower that looks raw values up without cutting the prefix."""
    init = bundle.ServingTower.__init__

    def without_prefix(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.prefixes = [None] * self.num_features

    monkeypatch.setattr(bundle.ServingTower, "__init__", without_prefix)


def _skew_queries(monkeypatch):
    """A served query that is not the trained one (here: the history is ignored)."""
    query = bundle.ServingTower._query

    def skewed(self, history, codes):
        return query(self, tf.fill(tf.shape(history), tf.constant(-1, history.dtype)), codes)

    monkeypatch.setattr(bundle.ServingTower, "_query", skewed)


def test_export_refuses_a_tower_that_ignores_the_prefix(run_copy, monkeypatch, capsys):
    before = _tree(run_copy / "export")
    _drop_prefixes(monkeypatch)
    assert cli.main(["export", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {run_copy / 'export'}: export refused")
    assert "codes user features differently from training" in err and "zip_code=" in err
    assert "nothing was published" in err
    assert _tree(run_copy / "export") == before  # the old bundle, untouched
    assert _leftovers(run_copy) == []  # and no half-written one beside it
    parity = json.loads((run_copy / "metrics.json").read_text())["export_parity"]
    assert parity["passed"] is False and parity["feature_code_mismatches"] == parity["queries"]
    assert parity["unknown_feature_values"]["zip_code"] == parity["queries"]  # "48067" is not in {"48", ...}


def test_export_refuses_served_vectors_that_differ(run_copy, monkeypatch, tmp_path):
    _skew_queries(monkeypatch)
    with pytest.raises(ParityError, match=r"export refused.*served test .* vs offline .* > tolerance") as e:
        recall.export(run_copy, tmp_path / "new")
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []
    parity = e.value.parity
    assert parity["passed"] is False and parity["max_abs_diff"] > parity["tolerance"]
    assert parity["feature_code_mismatches"] == 0  # the features were fine; the queries were not
    assert parity["query_max_abs_diff"] > 1e-3


def test_train_refuses_to_publish_and_still_records_the_figures(run_copy, features_run, monkeypatch):
    """`recall train` on a finished run (resumes, trains nothing) evaluates and exports: refused here."""
    before = _tree(run_copy / "export")
    cfg, _, _, _ = load_run(run_copy)
    _skew_queries(monkeypatch)
    with pytest.raises(ParityError):
        recall.train(cfg, run_copy)
    assert _tree(run_copy / "export") == before and _leftovers(run_copy) == []
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert metrics["export_parity"]["passed"] is False
    for variant in ("filtered", "unfiltered"):  # the offline figures are written all the same
        assert metrics["test"][variant] == features_run[1]["test"][variant]
