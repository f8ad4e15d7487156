"""The notebooks run headless from top to bottom (their own asserts included), and are committed clean."""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
# Per cell; the notebooks take about a minute of CPU each, more on a loaded machine.
CELL_TIMEOUT_S = 600


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"wkv_numerics.ipynb", "ablation_families.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_headless(path, monkeypatch):
    """Runs in the repository root (``rwkv_jax`` imports without installing), with a non-GUI plot backend."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    )
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO_ROOT)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any exception or failed assert
    errors = [o for cell in notebook.cells for o in cell.get("outputs", ()) if o.output_type == "error"]
    assert not errors
