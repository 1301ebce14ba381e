"""examples/multi_behaviour.ipynb runs top to bottom on the embedded model and saves its figure."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.real_model
def test_multi_behaviour_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOKSTEER_EXAMPLES_OUT", str(tmp_path))
    notebook = nbformat.read(EXAMPLES / "multi_behaviour.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    assert (tmp_path / "multi_behaviour_interactions.png").stat().st_size > 10_000
    assert (tmp_path / "multi_behaviour_result.json").exists()
