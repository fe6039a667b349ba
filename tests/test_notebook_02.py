"""notebooks/02_sampled_softmax.ipynb runs top to bottom on tiny sizes and fills its sampler table."""

import json

import pytest
from notebook_helpers import NOTEBOOKS, SMALL, errors, nbformat, run_notebook

NOTEBOOK = NOTEBOOKS / "02_sampled_softmax.ipynb"
SAMPLERS = ["log_uniform", "in_batch"]


def test_sampled_softmax_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    outputs = sum(len(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code")
    assert outputs == 0, "clear the notebook's outputs before committing it"


@pytest.mark.slow
def test_sampled_softmax_notebook_runs(tmp_path, monkeypatch):
    base = tmp_path / "runs"
    # The kernel is a subprocess: it inherits these from os.environ when it starts.
    monkeypatch.setenv("RECALL_NB_SAMPLERS", json.dumps(SAMPLERS))
    monkeypatch.setenv("RECALL_NB_OVERRIDES", json.dumps(SMALL))
    monkeypatch.setenv("RECALL_NB_RUN_DIR", str(base))
    monkeypatch.setenv("RECALL_NB_GRAD_TRIALS", "200")
    monkeypatch.setenv("RECALL_NB_GRAD_SIZES", json.dumps([8, 64]))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")

    nb = run_notebook(NOTEBOOK)

    assert errors(nb) == []
    # Part (b): one row per requested sampler, each a run trained with the small overrides.
    table = (base / "samplers.csv").read_text().splitlines()
    header, rows = table[0].split(","), [line.split(",") for line in table[1:]]
    assert [r[0] for r in rows] == SAMPLERS
    hr50 = [float(r[header.index("HR@50")]) for r in rows]
    assert all(0.0 <= h <= 1.0 for h in hr50)
    for name in SAMPLERS:
        metrics = json.loads((base / name / "metrics.json").read_text())
        assert metrics["train"]["epochs"] == 1  # the overrides reached the notebook
        assert metrics["train"]["sampler"]["sampler"] == name
    # The HR table is displayed with one row per sampler, and both plots were drawn inline.
    code = [c for c in nb.cells if c.cell_type == "code"]
    html = [o["data"]["text/html"] for c in code for o in c.outputs
            if o.output_type == "execute_result" and "HR@50 s.e." in o.get("data", {}).get("text/html", "")]
    assert len(html) == 1 and html[0].split("<tbody>")[1].count("<tr>") == len(SAMPLERS)
    assert sum("image/png" in o.get("data", {}) for c in code for o in c.outputs) == 2
