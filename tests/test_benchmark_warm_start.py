"""benchmarks/warm_start.py on a tiny generated log: parent before the cut-off, cold and warm on the full log."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("faiss")

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("warm_start_benchmark", ROOT / "benchmarks" / "warm_start.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_the_benchmark_runs_and_reports_the_warm_curve(tmp_path, capsys):
    out = tmp_path / "warm_start.json"
    assert bench.main(["--synthetic", "--work-dir", str(tmp_path / "work"), "--out", str(out),
                       "--warm-epochs", "2", "--cutoff-quantile", "0.8"]) == 0
    result = json.loads(out.read_text())
    assert 0 < result["interactions_before"] < result["interactions_full"]
    curve = result["warm"]["curve"]
    assert [e["epoch"] for e in curve] == [0, 1, 2]  # epoch 0: the parent's weights on the full log
    assert curve[0]["train_seconds"] == 0.0 and curve[-1]["train_seconds"] > 0
    assert result["warm"]["test_hr@50"] == pytest.approx(max(e["test_hr@50"] for e in curve[1:]), abs=0.2)
    assert len(result["cold"]["curve"]) == 3 and result["cold"]["curve"][0]["epoch"] == 1
    assert result["warm"]["lineage"]["parent_run_dir"] == str(tmp_path / "work" / "parent")
    assert result["warm"]["lineage"]["items"]["new"] == result["items_full"] - result["warm"]["lineage"]["items"]["kept"]
    printed = capsys.readouterr().out
    assert "| warm epoch | train s | wall s | test hr@50 | vs cold final |" in printed and "target (within" in printed
