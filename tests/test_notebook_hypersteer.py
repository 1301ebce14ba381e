"""examples/hypersteer.ipynb runs top to bottom on the embedded model and saves its figure and H."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.real_model
def test_hypersteer_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOKSTEER_EXAMPLES_OUT", str(tmp_path))
    monkeypatch.setenv("HOOKSTEER_HYPERSTEER_STEPS", "8")
    notebook = nbformat.read(EXAMPLES / "hypersteer.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    assert (tmp_path / "hypersteer_training.png").stat().st_size > 10_000
    assert (tmp_path / "hypersteer" / "model.safetensors").is_file()
