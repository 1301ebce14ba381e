"""examples/psr_token_heatmaps.ipynb runs top to bottom and saves its heatmap (tiny model by default; the
embedded model, in the default run)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOK = "psr_token_heatmaps.ipynb"


def _run(tmp_path: Path, monkeypatch, model: str | None) -> None:
    monkeypatch.setenv("HOOKSTEER_EXAMPLES_OUT", str(tmp_path))
    if model:
        monkeypatch.setenv("HOOKSTEER_NOTEBOOK_MODEL", model)
    else:
        monkeypatch.delenv("HOOKSTEER_NOTEBOOK_MODEL", raising=False)
    notebook = nbformat.read(EXAMPLES / NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    assert (tmp_path / "psr_token_heatmap.png").stat().st_size > 1000
    assert (tmp_path / "psr_volcano" / "psr.safetensors").is_file()


def test_psr_notebook_tiny(tmp_path, monkeypatch):
    _run(tmp_path, monkeypatch, "tiny")


@pytest.mark.real_model
def test_psr_notebook_real_model(tmp_path, monkeypatch):
    _run(tmp_path, monkeypatch, None)
