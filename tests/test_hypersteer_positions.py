"""Where a HyperSteer / oracle vector acts (``HyperSteerConfig.positions``): every token, the base prompt's tokens
only, or the positions predicting answer tokens. Training, eval loss and the evaluation's steering hook must all add
Δ at the same positions."""

from __future__ import annotations

import pytest
import torch

import hooksteer as hs
from hooksteer.data.schema import SteeringExample
from hooksteer.hypersteer import HyperSteerConfig, HyperSteerConfigError, HyperSteerTrainer
from hooksteer.hypersteer.bounds import ConceptVectors
from hooksteer.hypersteer.data import ResidCache, collate, encode_examples
from hooksteer.hypersteer.evaluation import HyperSteerMethod
from hooksteer.hypersteer.loss import (
    steered_logits_above_site,
    steered_logits_full,
    steered_loss_above_site,
    steered_positions,
    target_loss,
)
from hooksteer.hypersteer.trainer import mean_loss

torch.set_num_threads(1)

STEER = ["Talk about cats.", "Mention the sea in every answer."]
BASE = ["Tell me about your day.", "What is the capital of France? Answer briefly please."]
LAYER = 1


def batch_of(model, config: HyperSteerConfig, targets=("The cat sat on the mat.", "Paris")):
    data = [SteeringExample(f"c{i}", STEER[i], BASE[i], targets[i]) for i in range(2)]
    encoded = encode_examples(model, data, config)
    batch = collate(encoded, pad_id=0)
    resid = ResidCache(model, LAYER, "off").get(batch)
    return data, batch, resid


def test_prompt_positions_mask_each_rows_base_prompt(tiny_llama):
    config = HyperSteerConfig(layer=LAYER, loss="ce")
    _, batch, _ = batch_of(tiny_llama, config)
    assert steered_positions(batch, "all") is None
    mask = steered_positions(batch, "prompt")
    assert mask.shape == batch.tokens.shape
    for row, n_prompt in enumerate(batch.prompt_lengths.tolist()):
        assert mask[row, :n_prompt].all() and not mask[row, n_prompt:].any()
    with pytest.raises(ValueError, match="positions"):
        steered_positions(batch, "generated")


def test_answer_positions_mask_starts_at_each_rows_last_prompt_token(tiny_llama):
    config = HyperSteerConfig(layer=LAYER, loss="ce")
    _, batch, _ = batch_of(tiny_llama, config)
    mask = steered_positions(batch, "answer")
    assert mask.shape == batch.tokens.shape
    for row, n_prompt in enumerate(batch.prompt_lengths.tolist()):
        assert not mask[row, : n_prompt - 1].any() and mask[row, n_prompt - 1 :].all()


def test_answer_positions_leave_the_instruction_unsteered(tiny_llama):
    """Training at ``positions="answer"``: the prompt's predictions (all but its last token) are the unsteered model's,
    every answer prediction moves (the fast path equals a full forward:
    :func:`test_fast_path_equals_full_forward_for_partial_positions`; and ``hs.steer`` at the same absolute positions:
    :func:`test_hooksteer_steer_at_the_same_absolute_positions_matches_training`)."""
    config = HyperSteerConfig(layer=LAYER, loss="ce", positions="answer")
    _, batch, resid = batch_of(tiny_llama, config)
    delta = torch.randn(2, tiny_llama.cfg.d_model, generator=torch.Generator().manual_seed(5)) * 5
    fast = steered_logits_above_site(tiny_llama, resid, LAYER, delta, steered_positions(batch, "answer"))
    unsteered = tiny_llama(batch.tokens, padding_side="right")
    for row, (n_prompt, length) in enumerate(zip(batch.prompt_lengths.tolist(), batch.lengths.tolist(), strict=True)):
        assert torch.allclose(fast[row, : n_prompt - 1], unsteered[row, : n_prompt - 1], atol=1e-5)
        moved = (fast[row, n_prompt - 1 : length] - unsteered[row, n_prompt - 1 : length]).abs().amax(-1)
        assert (moved > 1e-3).all()


def test_prompt_positions_leave_the_answers_residual_unchanged_at_the_site(tiny_llama):
    config = HyperSteerConfig(layer=LAYER, loss="ce")
    _, batch, resid = batch_of(tiny_llama, config)
    delta = torch.randn(2, tiny_llama.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 5
    mask = steered_positions(batch, "prompt")
    steered = {}
    tiny_llama.add_hook(f"blocks.{LAYER + 1}.hook_resid_pre", lambda a, hook: steered.__setitem__("x", a.detach()))
    try:
        steered_logits_full(tiny_llama, batch.tokens, LAYER, delta, mask)
    finally:
        tiny_llama.reset_hooks()
    added = steered["x"] - resid
    for row, (n_prompt, length) in enumerate(zip(batch.prompt_lengths.tolist(), batch.lengths.tolist(), strict=True)):
        assert torch.allclose(added[row, :n_prompt], delta[row].expand(n_prompt, -1), atol=1e-4)
        assert added[row, n_prompt:length].abs().max() < 1e-4  # the answer is not steered ...
    unsteered = tiny_llama(batch.tokens, padding_side="right")
    logits = steered_logits_full(tiny_llama, batch.tokens, LAYER, delta, mask)
    n_prompt = int(batch.prompt_lengths[0])
    # ... but reads the steered prompt through attention: its predictions change
    assert (logits[0, n_prompt:int(batch.lengths[0])] - unsteered[0, n_prompt:int(batch.lengths[0])]).abs().max() > 1e-3


@pytest.mark.parametrize(("positions", "seed"), [("prompt", 1), ("answer", 5)])
def test_fast_path_equals_full_forward_for_partial_positions(tiny_llama, positions, seed):
    config = HyperSteerConfig(layer=LAYER, loss="ce", positions=positions)
    _, batch, resid = batch_of(tiny_llama, config)
    delta = torch.randn(2, tiny_llama.cfg.d_model, generator=torch.Generator().manual_seed(seed)) * 5
    mask = steered_positions(batch, positions)
    fast = steered_logits_above_site(tiny_llama, resid, LAYER, delta, mask)
    full = steered_logits_full(tiny_llama, batch.tokens, LAYER, delta, mask)
    for row, length in enumerate(batch.lengths.tolist()):
        assert torch.allclose(fast[row, :length], full[row, :length], atol=1e-5)
    full_loss, n_full = target_loss(full, batch)
    picked, n_picked = steered_loss_above_site(tiny_llama, resid, LAYER, delta, batch, "ce", positions)
    assert n_picked == n_full and torch.allclose(picked, full_loss, rtol=1e-5)
    everywhere, _ = steered_loss_above_site(tiny_llama, resid, LAYER, delta, batch, "ce", "all")
    assert not torch.allclose(everywhere, picked)


@pytest.mark.parametrize(("positions", "first_steered", "seed"), [("prompt", None, 2), ("answer", -1, 5)])
def test_hooksteer_steer_at_the_same_absolute_positions_matches_training(tiny_llama, positions, first_steered, seed):
    """The training forward equals ``hs.steer`` at the absolute positions the mode names: the prompt's tokens
    (``"prompt"``), or the prompt's last token and the answer (``"answer"``, what it steers while generating)."""
    config = HyperSteerConfig(layer=LAYER, loss="ce", positions=positions)
    data, batch, resid = batch_of(tiny_llama, config)
    delta = torch.randn(2, tiny_llama.cfg.d_model, generator=torch.Generator().manual_seed(seed)) * 5
    fast = steered_logits_above_site(tiny_llama, resid, LAYER, delta, steered_positions(batch, positions))
    single = collate(encode_examples(tiny_llama, data[:1], config), pad_id=0)
    n_prompt, length = int(single.prompt_lengths[0]), int(single.lengths[0])
    steered_range = range(n_prompt) if first_steered is None else range(n_prompt + first_steered, length)
    vector = hs.SteeringVector(f"blocks.{LAYER}.hook_resid_post", delta[0])
    with hs.steer(tiny_llama, vector, positions=list(steered_range)):
        steered = tiny_llama(single.tokens)
    assert torch.allclose(steered[0], fast[0, :length], atol=1e-5)


@pytest.mark.parametrize("positions", ["prompt", "answer"])
def test_oracle_trained_on_restricted_positions_lowers_its_loss_and_generates_there(tiny_llama, positions):
    from test_hypersteer_eval import CONCEPTS

    from hooksteer.evaluate.methods import GenerationSettings
    from hooksteer.generation import generate_texts

    config = HyperSteerConfig(layer=LAYER, loss="ce", positions=positions, lr=0.05, batch_size=2, max_steps=40,
                              eval_every=0, log_every=10)
    data = [SteeringExample(f"c{i}", STEER[i], b, "river river river river") for i in range(2) for b in BASE]
    oracle = ConceptVectors.oracle(tiny_llama, STEER, config)
    before = mean_loss(oracle, data)
    HyperSteerTrainer(oracle, data, progress=False).train()
    assert mean_loss(oracle, data) < before - 0.1
    assert oracle.vector(STEER[0]).source["positions"] == positions
    method = HyperSteerMethod(oracle, magnitude="trained")
    assert method.positions == positions and method.config()["positions"] == positions
    assert HyperSteerMethod(oracle, positions="all").positions == "all"  # an explicit choice wins
    concept = CONCEPTS[0]  # the evaluation's generations steer the same positions as hs.steer with that mode
    table = ConceptVectors(tiny_llama, [concept.steering_prompts[0]], config, init_std=3.0)
    steerer = HyperSteerMethod(table, magnitude="trained").prepare(tiny_llama, concept, CONCEPTS[1:])
    prompts = ["Tell me a story.", "Describe a day at the sea."]
    outputs = steerer.generate(prompts, [1.0], GenerationSettings(max_new_tokens=5, batch_size=4), seed=0)
    with hs.steer(tiny_llama, table.vector(concept.steering_prompts[0]), positions=positions):
        expected = generate_texts(tiny_llama, prompts, max_new_tokens=5, do_sample=False)
    assert outputs[0] == expected


def test_unknown_positions_is_refused(tiny_llama):
    with pytest.raises(HyperSteerConfigError, match="positions must be one of"):
        ConceptVectors.oracle(tiny_llama, STEER, HyperSteerConfig(layer=LAYER, positions="generated"))
    assert HyperSteerConfig.from_dict(HyperSteerConfig(positions="prompt").to_dict()).positions == "prompt"
