"""The example notebooks run top to bottom (small settings) and save their figures."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
REAL_MODEL_NOTEBOOKS = ["quickstart.ipynb"]


def run_notebook(name: str, out_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOOKSTEER_EXAMPLES_OUT", str(out_dir))
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}).execute()


@pytest.mark.real_model
@pytest.mark.parametrize("name", REAL_MODEL_NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    run_notebook(name, tmp_path, monkeypatch)
    assert any(tmp_path.glob("*.png")), "the notebook should save its figure"
