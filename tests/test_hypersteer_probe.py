"""The feature/ridge probe benchmark (``benchmarks/hypersteer_probe.py``): its ridge fit and spans, and the pipeline
end to end on a tiny model."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load_benchmark


def _probe():
    return load_benchmark("hypersteer_probe")


def test_title_span_finds_the_title_tokens(tiny_llama):
    probe = _probe()
    text = "Write about river delta. Every sentence must be about river delta."
    start, end = probe.title_span(tiny_llama, text, "river delta")
    tokens = tiny_llama.to_tokens(text)[0]
    assert tiny_llama.to_string(tokens[start:end]).strip() == "river delta"
    assert probe.title_span(tiny_llama, text, "volcano") is None


def test_bad_flags_stop_before_anything_runs(tmp_path, capsys):
    probe = _probe()
    with pytest.raises(SystemExit) as stop:
        probe.main(["--source", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "settings.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tiny_pipeline_writes_results(tmp_path):
    probe = _probe()
    report = probe.main(["--tiny", "--out", str(tmp_path / "probe"), "--curve", "4"])
    saved = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert saved["ridge"] and {"features", "alpha", "cv_r2", "held_out_r2", "cosine_with_oracle"} <= set(
        saved["ridge"][0])
    assert [c["train_concepts"] for c in report["curve"]] == [4, report["train_concepts"]]
    assert {"none", "oracle (held-out)", "training-oracle mean (floor)", "source floor"} == set(
        report["references_kl"])
    prior = {row["features"]: row for row in report["prior"]}
    assert set(prior) == {"prompt@-1", "title@-1"}
    assert all(set(row["held_out_kl"]) == {"10.0", "20.0", "30.0"} for row in prior.values())
    assert all(-1.0 <= row["cosine_with_oracle_specific"] <= 1.0 for row in prior.values())
    # a rerun reads the saved features and the saved training-concept oracle back instead of recomputing them
    again = probe.main(["--tiny", "--out", str(tmp_path / "probe"), "--curve", "4"])
    assert again["ridge"] == report["ridge"]
    assert any("held_out_kl" in row for row in report["ridge"])
    assert (tmp_path / "probe" / "oracle_train" / "model.safetensors").is_file()
    assert "Ridge map" in (tmp_path / "probe" / "results.md").read_text()
