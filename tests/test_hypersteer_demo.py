"""HyperSteer demo (hooksteer.hypersteer.demo) on a tiny model with a stub judge."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from hooksteer.evaluate.base import JudgeScores
from hooksteer.hypersteer.demo import (
    DEMO_FILE,
    GENERATIONS_FILE,
    HYPER_DIR,
    add_arguments,
    load_demo_hypersteer,
    run_from_args,
    run_hypersteer_demo,
)
from hooksteer.testing import tiny_model


class AcceptAllJudge:
    """Stub judge for a random tiny model (its outputs are noise): accepts every candidate."""

    name = "accept-all (test stub)"

    def rate(self, concept, instruction, outputs):
        return [JudgeScores(concept=2.0, instruction=2.0, fluency=2.0) for _ in outputs]


SMALL = dict(train_concepts=3, held_out=2, train_prompts=2, eval_prompts=2, steps=2, batch_size=2,
             teacher_candidates=1, teacher_tokens=4, max_new_tokens=4, verbose=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    model = tiny_model("llama", seed=0)
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    report = run_hypersteer_demo(model, out_dir=out, judge=AcceptAllJudge(), print_fn=lines.append, **SMALL)
    return model, out, report, lines


def test_demo_trains_saves_and_prints_three_columns(trained):
    model, out, report, lines = trained
    assert report["trained_now"] is True
    assert (out / HYPER_DIR / "model.safetensors").is_file() and (out / HYPER_DIR / DEMO_FILE).is_file()
    assert len(report["rows"]) == 2
    text = "\n".join(lines)
    assert "unsteered" in text and "prompt-steered" in text and "HyperSteer" in text
    saved = json.loads((out / GENERATIONS_FILE).read_text())
    assert saved["rows"] == report["rows"]
    assert report["eval_loss_before"] is not None and report["eval_loss_after"] is not None
    assert -1.0 <= report["mean_vector_cosine"] <= 1.0 + 1e-6
    for row in report["rows"]:
        assert row["hypersteer_norm"] == pytest.approx(report["factor"] * report["residual_norm"], rel=1e-4)


def test_held_out_concepts_were_never_trained_on(trained):
    _, out, report, _ = trained
    meta = json.loads((out / HYPER_DIR / DEMO_FILE).read_text())
    held = {c["id"] for c in meta["held_out_concepts"]}
    assert held and not held & set(meta["train_concepts"])
    assert {row["concept_id"] for row in report["rows"]} == held


def test_second_run_loads_the_saved_hypersteer(trained):
    model, out, report, _ = trained
    again = run_hypersteer_demo(model, out_dir=out, judge=AcceptAllJudge(), print_fn=lambda s: None, **SMALL)
    assert again["trained_now"] is False
    # same H, same greedy decoding: identical HyperSteer outputs
    assert [r["hypersteer"] for r in again["rows"]] == [r["hypersteer"] for r in report["rows"]]
    assert [r["hypersteer_raw_norm"] for r in again["rows"]] == pytest.approx(
        [r["hypersteer_raw_norm"] for r in report["rows"]])


def test_hypersteer_column_differs_from_unsteered_at_large_factor(trained):
    model, out, _, _ = trained
    strong = run_hypersteer_demo(model, out_dir=out, print_fn=lambda s: None, **{**SMALL, "factor": 50.0})
    assert any(r["hypersteer"] != r["unsteered"] for r in strong["rows"])


def test_corrupt_demo_metadata_is_reported(tmp_path):
    model = tiny_model("llama", seed=0)
    (tmp_path / HYPER_DIR).mkdir()
    (tmp_path / HYPER_DIR / DEMO_FILE).write_text("{oops")
    (tmp_path / HYPER_DIR / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_demo_hypersteer(model, tmp_path / HYPER_DIR)
    assert load_demo_hypersteer(model, tmp_path / "missing") is None


def test_bad_factor_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="factor"):
        run_hypersteer_demo(tiny_model("llama"), out_dir=tmp_path, factor=0.0, verbose=False)


def test_cli_arguments_and_opt_out(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(tmp_path))
    add_arguments(parser)
    args = parser.parse_args(["--no-hypersteer", "--hypersteer-steps", "5"])
    assert args.hypersteer is False and args.hypersteer_steps == 5
    assert run_from_args(None, args) is None
    assert parser.parse_args([]).hypersteer is True
