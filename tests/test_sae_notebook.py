"""examples/sae_comparison.ipynb runs top to bottom (real model, small SAE trained in a temp folder)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FIGURES = ("sae_cosines.png", "sae_feature_heatmap.png", "sae_retained.png")


@pytest.mark.real_model
def test_sae_notebook_runs_and_saves_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOKSTEER_EXAMPLES_OUT", str(tmp_path))
    monkeypatch.setenv("HOOKSTEER_SAE_DIR", str(tmp_path / "sae"))  # force the small-SAE training path
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(EXAMPLES / "sae_comparison.ipynb", as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    for name in FIGURES:
        assert (tmp_path / name).stat().st_size > 5_000, f"{name} missing or empty"
    assert (tmp_path / "sae" / "cfg.json").is_file() and (tmp_path / "sae" / "metrics.json").is_file()
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "explained variance" in outputs and "retained" in outputs
