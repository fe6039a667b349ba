"""The notebooks run top to bottom (on a small config) and leave a complete run directory."""

import json
from pathlib import Path

import pytest
from notebook_helpers import NOTEBOOKS, SMALL, errors, nbformat, run_notebook


def stored_outputs(path: Path) -> int:
    nb = nbformat.read(path, as_version=4)
    return sum(len(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code")


def test_quickstart_is_committed_without_outputs():
    path = NOTEBOOKS / "01_quickstart.ipynb"
    nbformat.validate(nbformat.read(path, as_version=4))
    assert stored_outputs(path) == 0, "clear the notebook's outputs before committing it"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    # The kernel is a subprocess: it inherits these from os.environ when it starts.
    monkeypatch.setenv("RECALL_NB_OVERRIDES", json.dumps(SMALL))
    monkeypatch.setenv("RECALL_NB_RUN_DIR", str(run_dir))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")

    nb = run_notebook(NOTEBOOKS / "01_quickstart.ipynb")

    assert errors(nb) == []
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["epochs"] == 1  # the overrides reached the notebook
    assert {"filtered", "unfiltered"} <= set(metrics["test"])
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert manifest["dim"] == 16
    # The plot cell drew a figure inline and the last cell shows the recommendations as a table.
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    last = [o for o in code[-1].outputs if o.output_type == "execute_result"]
    assert last and "title" in last[0]["data"]["text/html"]
