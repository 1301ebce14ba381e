"""HyperSteer demo (hooksteer.hypersteer.demo) on a tiny model: distillation, save/reload, settings and flags."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from hooksteer.hypersteer import LEARNED_ALPHA
from hooksteer.hypersteer.demo import (
    DEMO_FILE,
    GENERATIONS_FILE,
    HYPER_DIR,
    SETTINGS_FILE,
    HyperSteerDemoSettings,
    add_arguments,
    load_demo_hypersteer,
    run_from_args,
    run_hypersteer_demo,
    settings_from_args,
)
from hooksteer.testing import tiny_model

SMALL = HyperSteerDemoSettings(train_concepts=3, held_out=2, train_prompts=2, eval_prompts=2, steps=2, batch_size=2,
                               teacher_tokens=4, top_k=8, max_new_tokens=4, fit_background_chars=0,
                               fit_positions="response")  # 4-token answers: steered from the first token


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    model = tiny_model("llama", seed=0)
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    report = run_hypersteer_demo(model, SMALL, out_dir=out, print_fn=lines.append, verbose=False)
    return model, out, report, lines


def test_demo_trains_saves_and_prints_three_columns(trained):
    model, out, report, lines = trained
    assert report["trained_now"] is True
    for name in ("model.safetensors", DEMO_FILE, SETTINGS_FILE, "teacher/index.jsonl"):
        assert (out / HYPER_DIR / name).is_file()
    assert json.loads((out / HYPER_DIR / SETTINGS_FILE).read_text())["train_concepts"] == 3
    assert len(report["rows"]) == 2
    text = "\n".join(lines)
    assert "unsteered" in text and "prompt-steered" in text and "HyperSteer" in text
    saved = json.loads((out / GENERATIONS_FILE).read_text())
    assert saved["rows"] == report["rows"]
    for key in ("eval_kl_unsteered", "eval_kl_before", "eval_kl_after"):
        assert report[key] is not None and report[key] >= 0
    assert -1.0 <= report["mean_vector_cosine"] <= 1.0 + 1e-6
    assert report["answer_words"]["unsteered"] >= 0


def test_held_out_concepts_were_never_trained_on(trained):
    _, out, report, _ = trained
    meta = json.loads((out / HYPER_DIR / DEMO_FILE).read_text())
    held = {c["id"] for c in meta["held_out_concepts"]}
    assert held and not held & set(meta["train_concepts"])
    assert {row["concept_id"] for row in report["rows"]} == held


def test_second_run_loads_the_saved_hypersteer(trained):
    model, out, report, _ = trained
    again = run_hypersteer_demo(model, SMALL, out_dir=out, print_fn=lambda s: None, verbose=False)
    assert again["trained_now"] is False
    assert [r["hypersteer"] for r in again["rows"]] == [r["hypersteer"] for r in report["rows"]]
    assert [r["hypersteer_norm"] for r in again["rows"]] == pytest.approx([r["hypersteer_norm"] for r in report["rows"]])


def test_factor_scales_the_trained_vector(trained):
    model, out, report, _ = trained
    strong = HyperSteerDemoSettings(**{**SMALL.__dict__, "factor": 200.0})
    result = run_hypersteer_demo(model, strong, out_dir=out, print_fn=lambda s: None, verbose=False)
    for weak, big in zip(report["rows"], result["rows"], strict=True):
        assert big["hypersteer_norm"] == pytest.approx(200.0 * weak["hypersteer_norm"], rel=1e-4)
    assert any(r["hypersteer"] != r["unsteered"] for r in result["rows"])


def test_corrupt_demo_metadata_is_reported(tmp_path):
    model = tiny_model("llama", seed=0)
    (tmp_path / HYPER_DIR).mkdir()
    (tmp_path / HYPER_DIR / DEMO_FILE).write_text("{oops")
    (tmp_path / HYPER_DIR / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_demo_hypersteer(model, tmp_path / HYPER_DIR)
    assert load_demo_hypersteer(model, tmp_path / "missing") is None


@pytest.mark.parametrize("bad", [{"factor": 0.0}, {"factor": float("nan")}, {"train_concepts": 0}, {"steps": 0}])
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        HyperSteerDemoSettings(**bad)


def test_cli_flags_build_the_same_settings_object(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(tmp_path))
    parser.add_argument("--max-new-tokens", type=int, default=40)
    add_arguments(parser)
    args = parser.parse_args(["--hypersteer-steps", "5", "--hypersteer-variant", "cross_attention",
                              "--retrain-hypersteer", "--max-new-tokens", "7"])
    settings = settings_from_args(args)
    assert settings == HyperSteerDemoSettings(steps=5, variant="cross_attention", retrain=True, max_new_tokens=7)
    assert settings_from_args(parser.parse_args([])) == HyperSteerDemoSettings()
    off = parser.parse_args(["--no-hypersteer"])
    assert off.hypersteer is False and run_from_args(None, off) is None


def test_fit_steer_column_steers_each_concept_with_its_own_fitted_psr(trained):
    """FitSteer's column: each held-out concept's A-PSR, fitted to the prompted model's answers to the training
    prompts, steers its answer (a strong α changes it); ``fit_steer=False`` leaves the column out."""
    model, out, report, lines = trained
    assert all("fit_steer" in row for row in report["rows"]) and "FitSteer" in "\n".join(lines)
    info = report["fit_steer"]
    assert info["layers"] == list(range(model.cfg.n_layers)) and info["alpha"] == LEARNED_ALPHA == 1.5  # the default
    assert -1.0 <= info["mean_direction_cosine"] <= 1.0 + 1e-6 and info["seconds_per_concept"] > 0
    strong = HyperSteerDemoSettings(**{**SMALL.__dict__, "fit_alpha": 50.0})
    pushed = run_hypersteer_demo(model, strong, out_dir=out, print_fn=lambda s: None, verbose=False)
    assert any(p["fit_steer"] != r["fit_steer"] for p, r in zip(pushed["rows"], report["rows"], strict=True))
    off = HyperSteerDemoSettings(**{**SMALL.__dict__, "fit_steer": False})
    printed: list[str] = []
    plain = run_hypersteer_demo(model, off, out_dir=out, print_fn=printed.append, verbose=False)
    assert plain["fit_steer"] is None and not any("fit_steer" in row for row in plain["rows"])
    assert "FitSteer" not in "\n".join(printed)


def test_fit_background_fits_each_concept_reading_its_own_reference_text(trained, monkeypatch):
    """``fit_background_chars=N``: FitSteer fits each held-out concept with that concept's reference text read first
    (the reference_text teacher), the default fits on the steering prompt alone."""
    from hooksteer.data.schema import Concept
    from hooksteer.hypersteer.fit_steer import FitSteer

    model, out, report, _ = trained
    seen: dict[str, str] = {}
    original = FitSteer.write_prompt

    def spy(self, steering_prompt, base_prompts, **kwargs):
        seen[steering_prompt] = kwargs.get("background", "")
        return original(self, steering_prompt, base_prompts, **kwargs)

    monkeypatch.setattr(FitSteer, "write_prompt", spy)
    on = run_hypersteer_demo(model, HyperSteerDemoSettings(**{**SMALL.__dict__, "fit_background_chars": 20}),
                             out_dir=out, print_fn=lambda s: None, verbose=False)
    meta = json.loads((out / "hypersteer" / "demo.json").read_text())
    texts = {Concept.from_dict(c).steering_prompt: Concept.from_dict(c).text for c in meta["held_out_concepts"]}
    assert on["fit_steer"]["background_chars"] == 20 and seen == texts and all(t.strip() for t in texts.values())
    assert report["fit_steer"]["background_chars"] == 0  # SMALL's: the steering prompt alone
    assert HyperSteerDemoSettings().fit_background_chars == 600  # the default: as the benchmarks' best HyperSteer
    with pytest.raises(ValueError, match="fit_background_chars must be >= 0"):
        HyperSteerDemoSettings(fit_background_chars=-1)


def test_fit_positions_delay_fitsteer_like_the_benchmarks_best_hypersteer(trained):
    """``fit_positions`` (default ``"generated+8:32"``): the answer's first 9 tokens are written unsteered, so a strong
    FitSteer leaves a 4-token answer exactly as the unsteered one, while steering from the first token changes it."""
    model, out, report, _ = trained
    assert HyperSteerDemoSettings().fit_positions == "generated+8:32" and report["fit_steer"]["positions"] == "response"
    strong = {**SMALL.__dict__, "fit_alpha": 50.0}
    delayed = run_hypersteer_demo(model, HyperSteerDemoSettings(**{**strong, "fit_positions": "generated+8:32"}),
                                  out_dir=out, print_fn=lambda s: None, verbose=False)
    first = run_hypersteer_demo(model, HyperSteerDemoSettings(**strong), out_dir=out, print_fn=lambda s: None,
                                verbose=False)
    assert all(row["fit_steer"] == row["unsteered"] for row in delayed["rows"])
    assert any(row["fit_steer"] != row["unsteered"] for row in first["rows"])
    for bad in ("later", "generated+8:8"):
        with pytest.raises(ValueError, match="generated\\+K"):
            HyperSteerDemoSettings(fit_positions=bad)
