"""report.md and its plots from a hand-made metrics dict (no training)."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from recall.evaluation.protocol import evaluate_popularity, evaluate_queries  # noqa: E402
from recall.index import build_index  # noqa: E402
from recall.report import index_summary, write_report  # noqa: E402

KS = [1, 2]
APPROX = {"factory": "IVF4,Flat", "exact": False, "nprobe": 1, "nlist": 4, "recall@1": 0.5,
          "recall@2": 0.75, "qps": 1234.5, "exact_qps": 600.0, "queries": 3}


def _metrics(index: dict) -> dict:
    # Item i scores i: the same hand case as tests/test_metrics.py.
    faiss_index = build_index(np.arange(5, dtype=np.float32)[:, None])
    targets, counts = np.array([2, 4, 0]), np.array([4, 3, 1, 1, 1])
    seen = (np.array([0, 2, 2, 3]), np.array([4, 3, 1]))
    test = evaluate_queries(faiss_index, np.ones((3, 1), np.float32), targets, seen, KS, item_counts=counts)
    return {"test": test, "valid": test,
            "most_popular": {"test": evaluate_popularity(targets, seen, KS, item_counts=counts)},
            "train": {"epochs": 1}, "data": {"items": 5}, "index": index}


def test_report_has_coverage_popularity_and_index_sections(tmp_path):
    write_report(tmp_path, _metrics(APPROX))
    text = (tmp_path / "report.md").read_text()
    for png in ("hr_at_k.png", "hr_by_popularity.png", "loss.png", "valid_hr.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"({png})" in text, png
    assert "| filtered | 0.4000 | 0.8000 |" in text  # coverage@1, coverage@2
    # head / torso / tail rows for both systems: model head is a miss, most popular's a hit.
    assert "| head | 1 | 1 | model | 0.0000 | 0.0000 |" in text
    assert "| head | 1 | 1 | most popular | 1.0000 | 1.0000 |" in text
    assert "| `IVF4,Flat` | 0.5000 | 0.7500 | 1,234 |" in text
    assert "nprobe = 1" in text


def test_index_summary_lines():
    assert index_summary(APPROX, KS) == (
        "index IVF4,Flat (nlist=4, nprobe=1): recall@1 0.5000, recall@2 0.7500 against exact search "
        "(filtered)\n1,234 queries/s (exact Flat: 600 queries/s) over 3 test queries")
    flat = {"factory": "Flat", "exact": True, "qps": 5000.0, "queries": 3}
    assert index_summary(flat, KS) == "index Flat: exact search, 5,000 queries/s"


def test_report_without_new_metrics_still_renders(tmp_path):
    # An older metrics.json (no coverage, no buckets, index = factory only) keeps working.
    old = _metrics({"factory": "Flat"})
    for variant in ("filtered", "unfiltered"):
        old["test"] = {**old["test"], variant: {k: v for k, v in old["test"][variant].items()
                                                 if not k.startswith("coverage@")}}
    old["test"].pop("by_popularity")
    old["most_popular"]["test"].pop("by_popularity")
    write_report(tmp_path, old)
    text = (tmp_path / "report.md").read_text()
    assert "hr_by_popularity.png" not in text and "coverage@" not in text
    assert "Index: `Flat`." in text


def test_report_of_a_run_that_recorded_only_the_sampler_name(tmp_path):
    # Older metrics.json files hold train.sampler as a plain string; `recall evaluate` rewrites
    # the report of such runs too.
    metrics = _metrics(APPROX)
    metrics["train"] = {"epochs": 10, "sampler": "log_uniform", "loss": "sampled_softmax"}
    write_report(tmp_path, metrics)
    assert "Sampler `log_uniform`." in (tmp_path / "report.md").read_text()
