"""Every notebook under notebooks/ runs top to bottom in a real Jupyter kernel (nbclient and
ipykernel) against the smoke-profile reports (tests/conftest.py), found through NUMERICS_REPORTS
alone (the kernel starts in an empty directory). Committed notebooks carry no outputs."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
#: seconds one cell may take: a hang guard, not a speed test. A plot of the smoke data takes about
#: one; your_tensor's audit cell compiles every float32 specialization when the kernel cache is
#: cold, which took over 120 s on a 2-core machine busy with the other test worker
CELL_TIMEOUT = 600


def test_there_are_notebooks():
    assert {"atlas_explorer.ipynb", "frameworks_comparison.ipynb", "your_tensor.ipynb"} <= {path.name for path in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs_in_a_kernel(path, smoke_reports, tmp_path, monkeypatch):
    monkeypatch.setenv("NUMERICS_REPORTS", str(smoke_reports))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on an error
