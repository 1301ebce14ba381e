"""The HyperSteer evaluation benchmark end to end on a tiny model (``--tiny``), and its steering adapter."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from hooksteer.data.schema import Concept
from hooksteer.evaluate.methods import GenerationSettings, SteeringMethod
from hooksteer.hypersteer import HyperSteer, HyperSteerConfig
from hooksteer.hypersteer.evaluation import HyperSteerDirections, HyperSteerMethod

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _benchmark():
    return _script("hypersteer_eval")


CONCEPTS = [Concept(id=w, title=w, steering_prompts=[f"Write about {w}. Every sentence must be about {w}."],
                    text=f"The {w} is a thing people often talk about. Every {w} has a long history behind it.")
            for w in ("river", "castle", "garden")]


def test_tiny_pipeline_runs_and_saves(tmp_path):
    report = _benchmark().main(["--tiny", "--out", str(tmp_path), "--variants", "no_context", "cross_attention"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["verdict"] == report["verdict"]
    text = (tmp_path / "results.md").read_text()
    assert "Held-out concepts" in text and "Seconds per new steering vector" in text
    for role in ("held_out", "held_in"):
        methods = set(saved["scores"][role])
        assert methods == {"prompt", "diffmean", "hypersteer-no_context", "hypersteer-cross_attention"}
        for row in saved["scores"][role].values():
            assert 0.0 <= row["score"] <= 2.0
    # one evaluate() call: every method on every evaluated concept, same factors
    assert (tmp_path / "evaluation" / "results.json").is_file()
    assert saved["data"]["n_train_examples"] > 0
    assert set(saved["training"]) == {"no_context", "cross_attention"}
    assert all(math.isfinite(v["eval_loss_end"]) for v in saved["training"].values())
    for name in ("no_context", "cross_attention"):
        assert saved["timing"]["hypersteer"][name]["seconds_per_vector"] > 0
        assert (tmp_path / f"hyper-{name}" / "model.safetensors").is_file()
    assert saved["timing"]["diffmean"]["seconds_per_vector"] > 0
    # no leak: held-out concepts never among the training concepts
    split = json.loads((tmp_path / "split.json").read_text())
    assert not set(split["held_out_concepts"]) & set(split["train_concepts"])
    # H's vectors for the two held-out concepts are compared; the stand-alone script reproduces the figures
    separation = {name: saved["training"][name]["separation"] for name in ("no_context", "cross_attention")}
    assert separation["no_context"]["within_concept"] is None and separation["no_context"]["n_prompts"] == 1
    assert -1.0 <= separation["cross_attention"]["between_concepts"] <= 1.0
    assert "cos between concepts" in text
    recomputed = _script("hypersteer_separation").main([str(tmp_path), "--compare", str(tmp_path)])["variants"]
    assert all(row["agreement_with_compare"] == pytest.approx(1.0, abs=1e-5) for row in recomputed.values())
    for name, row in separation.items():
        assert recomputed[name]["between_concepts"] == pytest.approx(row["between_concepts"], abs=1e-5)
    assert (tmp_path / "separation.json").is_file()
    # teacher targets are cached: a rerun reuses all of them
    again = _benchmark().main(["--tiny", "--out", str(tmp_path), "--steps", "1"])
    assert again["data"]["teacher"]["n_reused_from_cache"] == again["data"]["teacher"]["n_pairs"]


def test_tiny_pipeline_with_a_bridge_writing_teacher_targets(tmp_path):
    report = _benchmark().main(["--tiny", "--out", str(tmp_path), "--teacher-model-class", "bridge", "--steps", "2",
                                "--no-held-in"])
    assert report["config"]["teacher_model_class"] == "bridge"
    assert report["data"]["n_train_examples"] > 0 and report["data"]["teacher"]["n_reused_from_cache"] == 0
    assert set(report["scores"]["held_out"]) == {"prompt", "diffmean", "hypersteer-cross_attention"}


@pytest.mark.parametrize("variant", ["no_context", "in_context", "cross_attention"])
def test_adapter_gives_one_unit_vector_per_prompt(tiny_llama, variant):
    hyper = HyperSteer(tiny_llama, HyperSteerConfig(variant=variant, n_blocks=1, head_init_std=0.1))
    method = HyperSteerMethod(hyper)
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
