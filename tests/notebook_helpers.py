"""Shared by the notebook tests: run a notebook in a fresh kernel and collect its errors."""

from pathlib import Path

import pytest
from pre_recipe import PRE_RECIPE

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("jupyter_client.kernelspec")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "python3"
SMALL = ["train.epochs=1", "model.dim=16", "model.hidden=[32]", "loss.num_sampled=100", "model.history=[{kind: mean}]",
         *PRE_RECIPE]  # the small tower the notebooks' checks were written for


def run_notebook(path: Path) -> nbformat.NotebookNode:
    """Execute `path` in a fresh python3 kernel whose cwd is the notebook's folder; raise on error."""
    if KERNEL not in kernelspec.find_kernel_specs():
        pytest.skip(f"no Jupyter kernel named {KERNEL!r} (install ipykernel)")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=KERNEL, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    return nb


def errors(nb) -> list[str]:
    return [
        f"{out.get('ename')}: {out.get('evalue')}"
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
