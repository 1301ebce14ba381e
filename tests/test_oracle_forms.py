"""The steering-form ceiling benchmark (``benchmarks/oracle_forms.py``): flags, and the pipeline end to end on a tiny
model."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load_benchmark, record_evaluated_methods


def _bench():
    return load_benchmark("oracle_forms")


def test_form_specs_parse_or_name_the_problem():
    bench = _bench()
    assert bench.parse_form("10:prompt") == bench.Form(10, "prompt")
    assert bench.Form(10, "prompt").name == "oracle-L10-prompt"
    for bad in ("10", "x:all", "10:generated", "10:all:more"):
        with pytest.raises(ValueError, match="LAYER:POSITIONS"):
            bench.parse_form(bad)


@pytest.mark.parametrize(("flags", "message"), [
    (["--forms", "2:sideways"], "LAYER:POSITIONS"),
    (["--forms", "2:all", "2:all"], "each form once"),
    (["--trained-factors", "0"], "--trained-factors"),
    (["--held-out", "1"], "--held-out"),
    (["--resid-forms", "5:all"], "--resid-forms must be among --forms"),
])
def test_bad_flags_stop_before_anything_is_written(tmp_path, capsys, flags, message):
    bench = _bench()
    with pytest.raises(SystemExit) as stop:
        bench.main(["--tiny", "--out", str(tmp_path / "out"), *flags])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_layer_past_the_model_is_refused_before_writing(tmp_path):
    bench = _bench()
    with pytest.raises(SystemExit, match="outside the model's"):
        bench.main(["--tiny", "--out", str(tmp_path / "out"), "--forms", "9:all"])
    assert not (tmp_path / "out").exists()


def test_tiny_pipeline_scores_every_form_and_resumes(tmp_path, monkeypatch):
    bench = _bench()
    out = tmp_path / "forms"
    report = bench.main(["--tiny", "--out", str(out), "--diffmean-layers", "1"])
    saved = json.loads((out / "results.json").read_text())
    held_out = saved["scores"]["held_out"]
    assert {"prompt", "none", "diffmean-L1", "oracle-L2-all", "oracle-L1-prompt"} == set(held_out)
    assert {c["b"] for c in saved["comparisons"]} == {"prompt", "0.9×prompt"}
    assert set(saved["eval_kl"]) == {"none", "oracle-L2-all", "oracle-L1-prompt"}
    assert saved["diagnostics"]["oracle-L1-prompt"]["between_concepts"] < 1.0
    configs = {m["name"]: m for m in json.loads((out / "evaluation" / "results.json").read_text())["config"]["methods"]}
    assert configs["oracle-L1-prompt"]["positions"] == "prompt" and configs["oracle-L2-all"]["positions"] == "all"
    assert (out / "oracle-L1-prompt" / "model.safetensors").is_file()
    # a rerun reloads the trained oracles instead of retraining them, and evaluates only what it adds
    evaluated = record_evaluated_methods(monkeypatch)
    again = bench.main(["--tiny", "--out", str(out), "--diffmean-layers", "1", "--resid-forms", "1:prompt"])
    assert all("reused_from" in info for info in again["training"].values())
    assert set(evaluated) == {"oracle-L1-prompt@resid"}
    assert {k: v for k, v in again["scores"]["held_out"].items() if not k.endswith("@resid")} == report["scores"][
        "held_out"]
    resid = [m for m in json.loads((out / "evaluation" / "results.json").read_text())["config"]["methods"]
             if m["name"] == "oracle-L1-prompt@resid"]
    assert resid and resid[0]["magnitude"] == "resid_norm" and resid[0]["positions"] == "prompt"
    assert "ceiling of each steering form" in (out / "results.md").read_text()
