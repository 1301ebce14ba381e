"""The HyperSteer evaluation benchmark end to end on a tiny model (``--tiny``), and its steering adapter."""

from __future__ import annotations

import json
import math

import pytest
import torch
from benchmark_scripts import load_benchmark, record_evaluated_methods

from hooksteer.data.schema import Concept
from hooksteer.evaluate.methods import GenerationSettings, SteeringMethod
from hooksteer.hypersteer import HyperSteer, HyperSteerConfig
from hooksteer.hypersteer.evaluation import HyperSteerDirections, HyperSteerMethod


def _benchmark():
    return load_benchmark("hypersteer_eval")


CONCEPTS = [Concept(id=w, title=w, steering_prompts=[f"Write about {w}. Every sentence must be about {w}."],
                    text=f"The {w} is a thing people often talk about. Every {w} has a long history behind it.")
            for w in ("river", "castle", "garden")]


EXPECTED_METHODS = {"prompt", "none", "diffmean", *(f"{m}@{mag}" for m in (
    "hypersteer-no_context", "hypersteer-cross_attention", "oracle", "floor") for mag in ("resid", "trained"))}


def test_tiny_pipeline_runs_and_saves(tmp_path):
    report = _benchmark().main(["--tiny", "--out", str(tmp_path), "--variants", "no_context", "cross_attention"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["comparisons"] == report["comparisons"]
    text = (tmp_path / "results.md").read_text()
    assert "Held-out concepts" in text and "Paired differences" in text and "Answer length" in text
    assert json.loads((tmp_path / "settings.json").read_text())["variants"] == ["no_context", "cross_attention"]
    for role in ("held_out", "held_in"):
        assert set(saved["scores"][role]) == EXPECTED_METHODS
        for row in saved["scores"][role].values():
            score = row["score"]
            assert 0.0 <= score["low"] <= score["mean"] <= score["high"] <= 2.0
    # one evaluate() call: every method on every evaluated concept; trained-norm methods swept their own factors
    evaluation = json.loads((tmp_path / "evaluation" / "results.json").read_text())
    assert evaluation["config"]["factors"] == [0.5, 2.0]
    trained = [c for c in saved["per_concept"] if c["method"] == "oracle@trained"]
    assert trained and all(c["chosen_factor"] == 1.0 for c in trained)  # --tiny sweeps only factor 1 there
    # bounds and diagnostics beside H
    assert set(saved["eval_kl"]) == {"none", "hypersteer-no_context", "hypersteer-cross_attention", "oracle", "floor"}
    assert all(math.isfinite(v["held_out"]) and v["held_out"] >= 0 for v in saved["eval_kl"].values())
    assert saved["diagnostics"]["floor"]["collapsed"] and saved["diagnostics"]["oracle"]["cosine_with_oracle"] > 0.999
    for name in ("hypersteer-no_context", "hypersteer-cross_attention", "oracle", "floor"):
        assert 0.0 <= saved["diagnostics"][name]["shared_fraction"] <= 1.0 + 1e-6
    assert saved["answer_lengths"]["none"]["ratio"] == 1.0
    assert (tmp_path / "samples.md").read_text().startswith("# Generations to read")
    assert {p["variant"] for p in saved["curve"]} == {"no_context", "cross_attention"}
    assert all(p["concepts"] == 4 and 0 <= p["trained"]["mean"] <= 2 for p in saved["curve"])
    for name in ("no_context", "cross_attention"):
        assert saved["timing"][f"hypersteer-{name}"]["seconds_per_vector"] > 0
        assert (tmp_path / f"hyper-{name}" / "model.safetensors").is_file()
    assert (tmp_path / "oracle" / "model.safetensors").is_file() and (tmp_path / "floor" / "config.json").is_file()
    # no leak: held-out concepts never among the training concepts, and the oracle is the only one that saw them
    split = json.loads((tmp_path / "split.json").read_text())
    assert not set(split["held_out_concepts"]) & set(split["train_concepts"])
    # the stand-alone separation script reads the run back
    recomputed = load_benchmark("hypersteer_separation").main([str(tmp_path), "--compare", str(tmp_path)])["variants"]
    assert all(row["agreement_with_compare"] == pytest.approx(1.0, abs=1e-5) for row in recomputed.values())
    assert recomputed["no_context"]["between_concepts"] == pytest.approx(
        saved["diagnostics"]["hypersteer-no_context"]["between_concepts"], abs=1e-5)
    # distillation records are cached: a rerun makes none
    again = _benchmark().main(["--tiny", "--out", str(tmp_path), "--steps", "1", "--curve"])
    assert all(t["n_new"] == 0 for t in again["data"]["teacher"].values())
    assert all("reused_from" not in t for t in again["training"].values())  # other settings: retrained
    # the same settings again: every trained module is reloaded (an interrupted run resumes), with the same vectors,
    # and so is the evaluation those modules got (not generated again); a KL-only curve point trains but generates
    evaluated = (tmp_path / "evaluation" / "generations.json").stat().st_mtime_ns
    resumed = _benchmark().main(["--tiny", "--out", str(tmp_path), "--steps", "1", "--curve", "4",
                                 "--curve-metric", "kl"])
    assert (tmp_path / "evaluation" / "generations.json").stat().st_mtime_ns == evaluated
    assert resumed["per_concept"] == again["per_concept"]
    assert [set(p) >= {"eval_kl", "concepts"} and "resid" not in p for p in resumed["curve"]] == [True, True]
    assert "| no_context | 8 |" in (tmp_path / "results.md").read_text()  # the full-size H ends the curve
    assert all(t["reused_from"].startswith(str(tmp_path)) for t in resumed["training"].values())
    for name, by_role in again["eval_kl"].items():
        assert resumed["eval_kl"][name] == pytest.approx(by_role, rel=1e-5)


def test_ridge_variant_added_to_a_finished_run_evaluates_only_its_own_methods(tmp_path, monkeypatch):
    first = _benchmark().main(["--tiny", "--out", str(tmp_path), "--variants", "no_context", "--curve"])
    evaluated = record_evaluated_methods(monkeypatch)
    added = _benchmark().main(["--tiny", "--out", str(tmp_path), "--variants", "no_context", "no_context:1:ridge",
                               "--curve", "4", "--curve-variants", "no_context:1:ridge", "--curve-metric", "kl"])
    ridge = "hypersteer-no_context-ridge1"
    assert set(evaluated) == {f"{ridge}@resid", f"{ridge}@trained"}  # the rest came back from the saved evaluation
    old_rows = [r for r in added["per_concept"] if not r["method"].startswith(ridge)]
    assert old_rows == first["per_concept"]
    assert {r["method"] for r in added["per_concept"]} >= {f"{ridge}@resid", f"{ridge}@trained"}
    fit = added["training"][ridge]["head_fit"]
    assert fit["n_targets"] == 8 and fit["alpha"] > 0 and added["training"][ridge]["steps"] == 0
    assert "oracle-train" in added["training"] and (tmp_path / "oracle-train" / "model.safetensors").is_file()
    assert ridge in added["eval_kl"] and ridge in added["diagnostics"]
    assert [p["variant"] for p in added["curve"]] == ["no_context-ridge1"] and added["curve"][0]["concepts"] == 4
    with pytest.raises(SystemExit):
        _benchmark().main(["--tiny", "--out", str(tmp_path / "bad"), "--variants", "cross_attention:1:ridge"])


def test_estimate_only_prints_a_time_estimate_and_runs_nothing(tmp_path, capsys):
    report = _benchmark().main(["--estimate-only", "--out", str(tmp_path / "never")])
    assert set(report["estimate_seconds"]) == {"setup", "teacher", "train", "evaluate", "curve"}
    assert "estimated time" in capsys.readouterr().out and not (tmp_path / "never").exists()


def test_variant_specs_parse_their_flags():
    parse = _benchmark().parse_variant
    assert parse("no_context", 2) == ("no_context", 2, False, False, False, False)
    assert parse("no_context:0:frozen:prior", 2) == ("no_context", 0, True, False, True, False)
    assert parse("no_context:0:frozen:prior:noweight", 2).name == "no_context-prior-noweight0"
    assert parse("no_context:0:frozen:prior", 2).name == "no_context-prior0"
    assert parse("no_context:12:ridge", 2) == ("no_context", 12, True, True, False, False)  # ridge implies frozen
    assert parse("no_context:12:ridge", 2).name == "no_context-ridge12"
    for bad in ("no_context:2:frozen:frozen", "no_context:2:warm", "no_context:x", "cross_attention:1:ridge",
                "no_context:0:noweight"):
        with pytest.raises(ValueError, match="--variants"):
            parse(bad, 2)


def test_a_module_saved_before_a_config_field_existed_is_still_reused(tiny_llama, tmp_path):
    from hooksteer.hypersteer.bounds import ConceptVectors

    module = ConceptVectors.oracle(tiny_llama, ["a", "b"], HyperSteerConfig(max_steps=1))
    module.save(tmp_path)
    (tmp_path / "training.json").write_text(json.dumps({"steps": 1}))
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["config"]["prior_gain"]  # written by an older hooksteer
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert _benchmark().saved_training(module, tmp_path)["reused_from"] == str(tmp_path)
    other = ConceptVectors.oracle(tiny_llama, ["a", "b"], HyperSteerConfig(max_steps=2))
    assert _benchmark().saved_training(other, tmp_path) is None  # a real difference: retrained


@pytest.mark.parametrize("flags", [["--held-out", "1"], ["--variants", "sideways"], ["--curve", "500"],
                                   ["--factors", "0"], ["--eval-prompts", "1"], ["--delta-norm-factor", "-0.3"],
                                   ["--token-weights", "teacher_shift", "--loss", "ce"], ["--layers", "2-0"],
                                   ["--layers", "0-2", "--layer", "1"], ["--layers", "0-2", "--delta-norm-factor", "0.3"],
                                   ["--layers", "0+2", "--variants", "no_context:1:prior"],
                                   ["--gate", "shared", "--variants", "no_context:1:ridge"], ["--gate", "sometimes"]])
def test_bad_settings_stop_before_anything_runs(tmp_path, flags):
    with pytest.raises(SystemExit) as stop:
        _benchmark().main(["--tiny", "--out", str(tmp_path / "x"), *flags])
    assert stop.value.code == 2 and not (tmp_path / "x").exists()


@pytest.mark.parametrize("variant", ["no_context", "in_context", "cross_attention"])
def test_adapter_gives_one_unit_vector_per_prompt(tiny_llama, variant):
    hyper = HyperSteer(tiny_llama, HyperSteerConfig(variant=variant, n_blocks=1, head_init_std=0.1))
    method = HyperSteerMethod(hyper)
    assert method.factors is None
    assert isinstance(method, SteeringMethod) and method.name == f"hypersteer-{variant}"
    steerer = method.prepare(tiny_llama, CONCEPTS[0], CONCEPTS[1:])
    prompts = ["Tell me a story.", "What is the weather like today in the mountains?"]
    directions = steerer.directions(prompts)
    assert directions.shape == (2, tiny_llama.cfg.d_model)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(2))
    raw = hyper.vectors([CONCEPTS[0].steering_prompts[0]] * 2, prompts)
    torch.testing.assert_close(directions, raw / raw.norm(dim=-1, keepdim=True))
    if variant == "no_context":
        torch.testing.assert_close(directions[0], directions[1])
    else:  # conditioned on the base prompt
        assert not torch.allclose(directions[0], directions[1])
    outputs = steerer.generate(prompts, [0.5, 1.0], GenerationSettings(max_new_tokens=3, batch_size=3), seed=0)
    assert len(outputs) == 2 and all(len(row) == 2 for row in outputs)
    assert steerer.info["n_vectors"] == 2 and steerer.info["natural_factor"] > 0


def test_adapter_trained_magnitude_adds_raw_delta(tiny_llama):
    hyper = HyperSteer(tiny_llama, HyperSteerConfig(variant="cross_attention", n_blocks=1, head_init_std=0.1))
    steerer = HyperSteerMethod(hyper, magnitude="trained").prepare(tiny_llama, CONCEPTS[0], CONCEPTS[1:])
    assert steerer.magnitude == 1.0
    raw = hyper.vectors(CONCEPTS[0].steering_prompts[0], ["Hi there."])
    torch.testing.assert_close(steerer.directions(["Hi there."]), raw)


def test_adapter_rejects_wrong_model_and_bad_magnitude(tiny_llama, tiny_gpt2):
    hyper = HyperSteer(tiny_llama, HyperSteerConfig(variant="no_context", n_blocks=1))
    with pytest.raises(ValueError, match="another base model"):
        HyperSteerMethod(hyper).prepare(tiny_gpt2, CONCEPTS[0], CONCEPTS[1:])
    with pytest.raises(ValueError, match="magnitude"):
        HyperSteerMethod(hyper, magnitude="huge")
    with pytest.raises(TypeError):
        HyperSteerMethod("not a hypernetwork")  # type: ignore[arg-type]


def test_zero_vector_cannot_be_normalised(tiny_llama):
    hyper = HyperSteer(tiny_llama, HyperSteerConfig(variant="no_context", n_blocks=1, head_init_std=0.0))
    with pytest.raises(ValueError, match="all-zero"):
        HyperSteerDirections(hyper, "Write about rivers.")(["Hi."])


def test_prompt_positions_reach_training_and_evaluation(tmp_path):
    report = _benchmark().main(["--tiny", "--out", str(tmp_path), "--variants", "no_context", "--curve",
                                "--positions", "prompt", "--no-held-in"])
    for folder in ("hyper-no_context", "oracle", "floor"):
        assert json.loads((tmp_path / folder / "config.json").read_text())["config"]["positions"] == "prompt"
    methods = json.loads((tmp_path / "evaluation" / "results.json").read_text())["config"]["methods"]
    steered = [m for m in methods if m["class"] == "HyperSteerMethod"]
    assert steered and all(m["positions"] == "prompt" for m in steered)
    assert report["settings"]["positions"] == "prompt"


def test_fixed_length_and_token_weights_reach_h_and_both_bounds(tmp_path):
    from hooksteer.hypersteer.bounds import ConceptVectors
    from hooksteer.testing import tiny_model

    report = _benchmark().main(["--tiny", "--out", str(tmp_path), "--variants", "no_context", "--curve",
                                "--delta-norm-factor", "0.3", "--token-weights", "teacher_shift", "--no-held-in"])
    length = 0.3 * report["resid_norm"]
    assert report["resid_norm"] > 0
    for folder in ("hyper-no_context", "oracle", "floor"):
        config = json.loads((tmp_path / folder / "config.json").read_text())["config"]
        assert config["delta_norm"] == pytest.approx(length) and config["token_weights"] == "teacher_shift"
    oracle = ConceptVectors.load(tmp_path / "oracle", tiny_model("llama", seed=0))
    assert oracle.vectors(oracle.keys).norm(dim=-1).sub(length).abs().max() < 1e-3
    assert report["diagnostics"]["hypersteer-no_context"]["mean_norm"] == pytest.approx(length, rel=1e-4)


def test_several_sites_reach_h_and_both_bounds_scored_at_their_trained_norm(tmp_path):
    from hooksteer.hypersteer import HyperSteer
    from hooksteer.testing import tiny_model

    report = _benchmark().main(["--tiny", "--out", str(tmp_path), "--variants", "no_context", "no_context:1:ridge",
                                "--curve", "--layers", "0+2", "--no-held-in"])
    for folder in ("hyper-no_context", "oracle", "floor"):
        config = json.loads((tmp_path / folder / "config.json").read_text())["config"]
        assert config["layers"] == [0, 2] and config["layer"] == 0
    hyper = HyperSteer.load(tmp_path / "hyper-no_context", tiny_model("llama", seed=0))
    assert hyper.vectors("Write about rivers.").shape == (1, 2, hyper.signature["d_model"])
    ridge = HyperSteer.load(tmp_path / "hyper-no_context-ridge1", tiny_model("llama", seed=0))
    assert ridge.config.layers == [0, 2] and ridge.vectors("Write about rivers.").shape == (1, 2, 32)
    scored = set(report["scores"]["held_out"])
    assert {"hypersteer-no_context@trained", "hypersteer-no_context-ridge1@trained", "oracle@trained",
            "floor@trained"} <= scored
    assert not any(name.endswith("@resid") for name in scored)  # one site's residual norm means nothing for two
    assert report["diagnostics"]["oracle"]["cosine_with_oracle"] == pytest.approx(1.0, abs=1e-5)


def test_gates_reach_h_and_both_bounds(tmp_path):
    from hooksteer.hypersteer import HyperSteer
    from hooksteer.hypersteer.bounds import ConceptVectors
    from hooksteer.testing import tiny_model

    report = _benchmark().main(["--tiny", "--out", str(tmp_path), "--variants", "no_context", "--layers", "0+2",
                                "--gate", "concept", "--no-held-in"])
    model = tiny_model("llama", seed=0)
    hyper = HyperSteer.load(tmp_path / "hyper-no_context", model)
    assert hyper.config.gate == "concept" and hyper.steering_params("Write about rivers.").shape == (1, 2, 65)
    for folder in ("oracle", "floor"):
        assert ConceptVectors.load(tmp_path / folder, model).config.gate == "concept"
    scored = set(report["scores"]["held_out"])
    assert {"hypersteer-no_context@trained", "oracle@trained", "floor@trained"} <= scored
    assert not any(name.endswith("@resid") for name in scored)  # a gated vector's strength is λ·z


def test_on_policy_adds_a_second_round_of_h_on_its_own_answers(tmp_path):
    from hooksteer.hypersteer import HyperSteer
    from hooksteer.testing import tiny_model

    report = _benchmark().main(["--tiny", "--out", str(tmp_path), "--variants", "no_context", "no_context:1:ridge",
                                "--on-policy", "--no-held-in"])
    first, second = (report["training"][name] for name in ("hypersteer-no_context", "hypersteer-no_context-onpolicy"))
    assert second["n_train_examples"] == 2 * first["n_train_examples"]  # prompted + own answers
    assert second["on_policy"]["n_pairs"] == first["n_train_examples"] and second["steps"] == first["steps"]
    assert "hypersteer-no_context-ridge1-onpolicy" not in report["training"]  # a ridge head has no second round
    model = tiny_model("llama", seed=0)
    a, b = (HyperSteer.load(tmp_path / folder, model) for folder in ("hyper-no_context", "hyper-no_context-onpolicy"))
    assert not torch.allclose(a.vectors("Write about rivers."), b.vectors("Write about rivers."))
    assert "hypersteer-no_context-onpolicy@trained" in report["scores"]["held_out"]


def test_read_off_variant_reads_held_out_vectors_from_their_train_prompts_and_trains_gains(tmp_path):
    from hooksteer.hypersteer import ReadOffSteer
    from hooksteer.testing import tiny_model

    report = _benchmark().main(["--tiny", "--out", str(tmp_path), "--variants", "read_off", "--layers", "0+2",
                                "--no-held-in", "--curve", "2"])
    info = report["training"]["hypersteer-read_off"]
    assert info["steps"] > 0 and info["read_off_seconds_per_concept"] > 0 and info["read_off_pairs_per_concept"] >= 2
    hyper = ReadOffSteer.load(tmp_path / "hyper-read_off", tiny_model("llama", seed=0))
    assert not torch.allclose(hyper.site_gain.detach(), torch.ones(2))  # trained on the training concepts
    assert len(hyper.keys) == len(set(hyper.keys)) > report["data"]["n_held_out"]  # training + held-out concepts
    assert "hypersteer-read_off@trained" in report["scores"]["held_out"]
    assert report["diagnostics"]["hypersteer-read_off"]["between_concepts"] < 1.0
    assert [p["variant"] for p in report["curve"]] == ["read_off"]
    assert "reads a new concept's vectors off the model" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("flags", [["--gate", "shared"], ["--positions", "prompt"], ["--loss", "ce"],
                                   ["--delta-norm-factor", "0.3"]])
def test_read_off_variant_refuses_what_it_cannot_read(tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as stop:
        _benchmark().main(["--tiny", "--out", str(tmp_path / "x"), "--variants", "read_off", *flags])
    assert stop.value.code == 2 and not (tmp_path / "x").exists()
    assert "read_off" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no blocks and no flags"):
        _benchmark().parse_variant("read_off:2:frozen", 2)
