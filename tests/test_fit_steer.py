"""FitSteer (tiny models): the HyperSteer that fits each steering prompt's A-PSR to the model's activations in closed
form — it fits the prompt it is given, better than another prompt's fit does, trains nothing, and its bounds (floor,
centred directions) and separation diagnostics compute what they name."""

from __future__ import annotations

import pytest
import torch

from hooksteer.data.schema import SteeringExample
from hooksteer.hypersteer import FitSteer
from hooksteer.hypersteer.fit_steer import (
    centred,
    direction_separation,
    directions,
    fit_config,
    leave_one_out_centred,
)
from hooksteer.psr import PSR, PSRConfig, compute_teacher, encode_examples
from hooksteer.psr.teacher import template_suffix_length
from hooksteer.psr.trainer import steered_pass

torch.set_num_threads(1)

LAYERS = [0, 1, 2]
TOPICS = {"river": ("Write about rivers. Every sentence must be about rivers.",
                    "The river flows past castle {i} while the water runs by the bank."),
          "number": ("Answer only with numbers. Every answer must be numbers.",
                     "Seven {i} twelve nine 42 100 3 1 17 {i} 8 5 2 6 0 11 13.")}


def _records(model, concept: str, n: int = 8):
    steering, answer = TOPICS[concept]
    examples = [SteeringExample(concept, steering, f"Tell me something about day {i}.", answer.format(i=i))
                for i in range(n)]
    return compute_teacher(model, encode_examples(model, examples), LAYERS,
                           prefix_tokens=template_suffix_length(model))


def _top_error(model, psr, records) -> float:
    """√(Σ‖A_top^PSR − A_top(x'y')‖² / Σ‖Δ_top‖²) on the records' span (1 = no better than not steering)."""
    return steered_pass(model, psr, records).layers[LAYERS[-1]]["rel_error_train"]


def test_a_fit_reproduces_its_own_prompt_better_than_another_prompts_fit(tiny_llama):
    fit = FitSteer(tiny_llama, LAYERS)
    river, number = _records(tiny_llama, "river"), _records(tiny_llama, "number")
    before = [p.detach().clone() for p in tiny_llama.parameters()]
    psr_river = fit.write(river, steering_prompt=TOPICS["river"][0], concept_id="river")
    psr_number = fit.write(number, concept_id="number")
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_llama.parameters(), strict=True))  # model untouched
    assert psr_river.config.steps == 0 and psr_river.config.local_steps == 0 and psr_river.config.init == "fit"
    assert psr_river.config.steering_prompt == TOPICS["river"][0] and psr_river.config.concept_id == "river"
    assert not any(p.requires_grad for p in psr_river.parameters())
    own, other = _top_error(tiny_llama, psr_river, river), _top_error(tiny_llama, psr_number, river)
    assert own < 0.9 and own < other
    assert _top_error(tiny_llama, psr_number, number) < _top_error(tiny_llama, psr_river, number)


def test_the_floor_is_one_fit_to_every_prompt_and_sits_between_the_two(tiny_llama):
    fit = FitSteer(tiny_llama, LAYERS)
    records = {"river": _records(tiny_llama, "river"), "number": _records(tiny_llama, "number")}
    floor = fit.floor(records)
    assert floor.config.concept_id == "shared"
    own = {key: fit.write(value) for key, value in records.items()}
    for key, value in records.items():  # shared: worse than a concept's own fit, better than not steering
        assert _top_error(tiny_llama, own[key], value) < _top_error(tiny_llama, floor, value) < 1.0
    with pytest.raises(ValueError, match="at least two"):
        fit.floor({"river": records["river"]})


def test_centring_subtracts_the_other_prompts_mean_direction_and_keeps_the_gates():
    psrs = {}
    for key, seed in (("a", 0), ("b", 1), ("c", 2)):
        torch.manual_seed(seed)
        psr = PSR(PSRConfig(layers=[0, 2], d_model=4, variant="adaptive"))
        for layer in (0, 2):
            psr.set_layer(layer, weight=torch.randn(4), bias=0.3, z=torch.randn(4))
        psrs[key] = psr
    out = leave_one_out_centred(psrs)
    for key, psr in psrs.items():
        others = torch.stack([directions(p) for k, p in psrs.items() if k != key]).mean(dim=0)
        assert torch.allclose(directions(out[key]), directions(psr) - others)
        for layer in (0, 2):
            assert torch.equal(out[key].gate(layer).weight, psr.gate(layer).weight)
        assert not torch.equal(directions(psr), directions(out[key]))  # the original is not modified
    with pytest.raises(ValueError, match="shape"):
        centred(psrs["a"], torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least two"):
        leave_one_out_centred({"a": psrs["a"]})


def test_separation_flags_identical_directions_and_reads_orthogonal_ones_as_distinct():
    def psr_with(z):
        psr = PSR(PSRConfig(layers=[1], d_model=3))
        psr.set_layer(1, z=torch.tensor(z))
        return psr

    same = direction_separation({"a": psr_with([1.0, 2.0, 0.0]), "b": psr_with([2.0, 4.0, 0.0])})
    assert same["between_concepts"] == pytest.approx(1.0) and same["collapsed"]
    assert same["shared_fraction"] == pytest.approx(0.9)  # ‖mean‖² / mean ‖z‖² = 11.25 / 12.5
    apart = direction_separation({"a": psr_with([1.0, 0.0, 0.0]), "b": psr_with([0.0, 1.0, 0.0])})
    assert apart["between_concepts"] == pytest.approx(0.0) and not apart["collapsed"]
    with pytest.raises(ValueError, match="at least two"):
        direction_separation({"a": psr_with([1.0, 0.0, 0.0])})


def test_a_new_steering_prompt_gets_its_psr_from_the_prompted_models_own_answers(tiny_llama):
    fit = FitSteer(tiny_llama, LAYERS, positions="after_sink")
    prompts = ["Tell me about your day.", "What is a good name for a cat?"]
    records = fit.teacher_records(TOPICS["river"][0], prompts, max_new_tokens=6)
    assert [r.pair.base_prompt for r in records] == prompts
    assert all(0 < r.n_tokens <= 6 and set(r.delta) == set(LAYERS) for r in records)
    psr = fit.write_prompt(TOPICS["river"][0], prompts, max_new_tokens=6)
    assert psr.config.positions == "after_sink" and psr.config.steering_prompt == TOPICS["river"][0]
    assert float(directions(psr).norm()) > 0
    with pytest.raises(ValueError, match="steering_prompt"):
        fit.write_prompt("  ", prompts)
    with pytest.raises(ValueError, match="base prompt"):
        fit.write_prompt(TOPICS["river"][0], [])


def test_settings_are_checked(tiny_llama):
    with pytest.raises(ValueError, match="not both or neither"):
        FitSteer(tiny_llama)
    with pytest.raises(ValueError, match="d_model"):
        FitSteer(tiny_llama, config=PSRConfig(layers=[0], d_model=7))
    assert fit_config(tiny_llama, [2, 0], fit_ridge=0.1).layers == [0, 2]


def test_a_background_text_is_read_before_the_steering_prompt_as_the_reference_teacher_reads_it(tiny_llama):
    """``FitSteer.teacher_records(..., background=)``: the prompted model reads the background (cut to
    ``background_chars``) before the steering prompt — the very ``x'`` of the ``reference_text`` distillation teacher —
    while the plain prompt ``x`` stays the same."""
    from hooksteer.data.schema import BasePrompt, Concept
    from hooksteer.distill import DistillConfig, teacher_prompt

    fit = FitSteer(tiny_llama, LAYERS)
    steering, prompt = TOPICS["river"][0], "Tell me about your day."
    background = "Rivers carry water from the hills down to the sea."
    plain = fit.teacher_records(steering, [prompt], max_new_tokens=4)[0]
    read = fit.teacher_records(steering, [prompt], max_new_tokens=4, background=background, background_chars=30)[0]
    concept = Concept(id="river", title="River", steering_prompts=[steering], text=background)
    config = DistillConfig(teacher_context="reference_text", max_reference_chars=30)
    expected = tiny_llama.to_tokens(teacher_prompt(tiny_llama, concept, BasePrompt(id="b", text=prompt), config))[0]
    assert torch.equal(read.pair.steered_prompt, expected.cpu())
    assert len(read.pair.steered_prompt) > len(plain.pair.steered_prompt)
    assert torch.equal(read.pair.plain_prompt, plain.pair.plain_prompt)
    with pytest.raises(TypeError, match="background must be a string"):
        fit.teacher_records(steering, [prompt], background=None)  # type: ignore[arg-type]
