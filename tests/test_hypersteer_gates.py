"""Per-token gates on HyperSteer's vectors (``HyperSteerConfig.gate``): Δ_t = ReLU(b + mean(w ⊙ ĥ_t))·z at every
site, the same in training (above the lowest site), in a full forward and in KV-cached generation."""

from __future__ import annotations

import pytest
import torch
from test_hypersteer_distill import BASE, STEER
from test_hypersteer_eval import CONCEPTS

from hooksteer.distill import DistillRecord, student_prompt, topk_teacher
from hooksteer.evaluate.methods import GenerationSettings
from hooksteer.generation import generate_texts
from hooksteer.hooks import PositionTracker, apply_steering_hooks
from hooksteer.hypersteer import HyperSteer, HyperSteerConfig, HyperSteerConfigError, HyperSteerTrainer
from hooksteer.hypersteer.bounds import ConceptVectors
from hooksteer.hypersteer.data import collate
from hooksteer.hypersteer.evaluation import HyperSteerMethod
from hooksteer.hypersteer.gating import (
    add_site_params,
    gate_values,
    initial_gate,
    site_steering_hooks,
    steer_with,
)
from hooksteer.hypersteer.loss import (
    distill_loss,
    steered_logits_full,
    steered_loss_above_site,
    steered_positions,
)
from hooksteer.hypersteer.model import HyperSteerFileError
from hooksteer.hypersteer.trainer import mean_loss

torch.set_num_threads(1)
SITES = [0, 2]
D = 32


def _gated(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows ``[z | w | b]`` of shape (n_sites, 2·d + 1)."""
    return torch.cat([z, w, b[:, None]], dim=-1)


def _teacher(seed: int = 5) -> dict[str, torch.Tensor]:
    """Two concepts, each a gated vector per site whose gate shuts steering off on part of the tokens."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for steering in STEER[:2]:
        z = torch.randn(len(SITES), D, generator=g) * 4
        w = torch.randn(len(SITES), D, generator=g) * 40
        out[steering] = _gated(z, w, torch.full((len(SITES),), 0.2))
    return out


def gated_records(model, params: dict[str, torch.Tensor], n_tokens: int = 4, k: int = 256) -> list[DistillRecord]:
    """Teacher = the model steered through the *inference* hooks by known gated parameters per steering prompt."""
    out = []
    names = [f"blocks.{site}.hook_resid_post" for site in SITES]
    for steering, rows in params.items():
        for i, base in enumerate(BASE):
            prompt = model.to_tokens(student_prompt(model, base))[0]
            response = torch.tensor([(7 * i + j * 13 + len(steering)) % 200 + 5 for j in range(n_tokens)])
            tokens = torch.cat([prompt, response])[None]
            tracker = PositionTracker()
            with torch.no_grad(), apply_steering_hooks(model, site_steering_hooks(names, rows[None], D,
                                                                                   tracker=tracker), tracker):
                logits = model(tokens)[0, len(prompt) - 1 : len(prompt) - 1 + n_tokens]
            ids, logprobs = topk_teacher(logits, k)
            out.append(DistillRecord(steering[:12], steering, base, f"p{i}", "", response, False, ids.to(torch.int32),
                                     logprobs))
    return out


# ---------------------------------------------------------------------------------------------- the gate itself
def test_the_gate_reads_each_token_and_starts_at_constant_steering():
    resid = torch.tensor([[[1.0, 2.0, 3.0], [-3.0, -2.0, -1.0]]])
    z = torch.tensor([[1.0, 0.0, 0.0]])
    opening = torch.cat([z, initial_gate((1,), 3)], dim=-1)
    torch.testing.assert_close(add_site_params(resid, opening, None), resid + z[:, None])  # λ = 1: constant
    reading = torch.cat([z, torch.tensor([[3.0, 3.0, 3.0, 0.0]])], dim=-1)  # λ = ReLU(mean(ĥ))
    steered = add_site_params(resid, reading, None)
    lam = gate_values(resid, reading[:, 3:])
    assert float(lam[0, 0]) > 0 and float(lam[0, 1]) == 0.0   # only the first token is steered
    torch.testing.assert_close(steered[0, 1], resid[0, 1])
    torch.testing.assert_close(steered[0, 0], resid[0, 0] + lam[0, 0] * z[0])
    only_second = add_site_params(resid, opening, torch.tensor([[False, True]]))
    torch.testing.assert_close(only_second[0, 0], resid[0, 0])
    with pytest.raises(ValueError, match="width 5"):
        add_site_params(resid, torch.zeros(1, 5), None)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"gate": "per_token"}, "gate must be one of"),
    ({"gate": "shared", "prior_gain": 1.0, "layer": 2}, "gates need prior_gain=None"),
])
def test_bad_gate_settings_are_refused(tiny_llama, overrides, message):
    with pytest.raises(HyperSteerConfigError, match=message):
        HyperSteerConfig(**overrides).resolved(tiny_llama)


# ---------------------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("positions", ["all", "prompt"])
def test_gated_fast_path_equals_full_forward_and_the_inference_hooks(tiny_llama, positions):
    params = _teacher()
    records = gated_records(tiny_llama, params)
    oracle = ConceptVectors(tiny_llama, STEER[:2], HyperSteerConfig(layers=SITES, positions=positions, gate="concept"))
    with torch.no_grad():  # the oracle holds the teacher's own parameters
        for row, steering in enumerate(STEER[:2]):
            oracle.table[row] = params[steering][:, :D]
            oracle.gate_table[row] = params[steering][:, D:]
    trainer = HyperSteerTrainer(oracle, records, progress=False)
    batch = collate(trainer.train_data[:4], pad_id=0)
    delta = oracle(oracle.indices(batch.keys))
    assert delta.shape == (4, 2, 2 * D + 1)
    resid = trainer.train_cache.get(batch)
    fast, n = steered_loss_above_site(tiny_llama, resid, SITES, delta, batch, "distill", positions)
    full, m = distill_loss(steered_logits_full(tiny_llama, batch.tokens, SITES, delta,
                                               steered_positions(batch, positions)), batch)
    assert int(n) == int(m)
    torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-4)
    if positions == "all":  # training's mechanism is the teacher's (inference hooks): the loss is ~0
        assert float(fast.detach() / n) < 1e-4
    shut = delta.detach().clone()
    shut[:, :, -1] = -1e3  # b → −∞ closes every gate: no steering at all
    closed, _ = steered_loss_above_site(tiny_llama, resid, SITES, shut, batch, "distill", positions)
    no_steering, _ = steered_loss_above_site(tiny_llama, resid, SITES, torch.zeros(4, 2, D), batch, "distill",
                                             positions)
    torch.testing.assert_close(closed, no_steering, rtol=1e-5, atol=1e-5)


def test_gates_start_at_the_constant_vector_and_their_gradient_reaches_w_and_b(tiny_llama):
    records = gated_records(tiny_llama, _teacher())
    plain = ConceptVectors(tiny_llama, STEER[:2], HyperSteerConfig(layers=SITES), init_std=2.0)
    for gate in ("shared", "concept"):
        gated = ConceptVectors(tiny_llama, STEER[:2], HyperSteerConfig(layers=SITES, gate=gate), init_std=2.0)
        torch.testing.assert_close(gated.vectors(STEER[:2]), plain.vectors(STEER[:2]))
        assert abs(mean_loss(gated, records) - mean_loss(plain, records)) < 1e-5
        trainer = HyperSteerTrainer(gated, records, progress=False)
        batch = collate(trainer.train_data[:4], pad_id=0)
        loss, n = steered_loss_above_site(tiny_llama, trainer.train_cache.get(batch), SITES,
                                          gated(gated.indices(batch.keys)), batch, "distill")
        (loss / n).backward()
        grad = gated.gate_table.grad
        assert grad is not None and float(grad[..., :D].abs().sum()) > 0 and float(grad[..., D].abs().sum()) > 0
        assert gated.gate_table.shape == ((1 if gate == "shared" else 2), 2, D + 1)


# ---------------------------------------------------------------------------------------------- bounds
def test_a_gated_oracle_fits_a_gated_teacher_better_than_constant_vectors(tiny_llama, tmp_path):
    params = _teacher()
    records = gated_records(tiny_llama, params)
    final = {}
    for gate in ("none", "concept"):
        config = HyperSteerConfig(layers=SITES, gate=gate, lr=0.1, batch_size=4, max_steps=200, eval_every=0,
                                  log_every=50)
        oracle = ConceptVectors.oracle(tiny_llama, STEER[:2], config)
        HyperSteerTrainer(oracle, records, progress=False).train()
        final[gate] = mean_loss(oracle, records)
        if gate == "concept":
            gated = oracle
    assert final["concept"] < 0.5 * final["none"]
    gated.save(tmp_path / "oracle")
    again = ConceptVectors.load(tmp_path / "oracle", tiny_llama)
    assert again.config.gate == "concept"
    torch.testing.assert_close(again.steering_params(STEER[:2]), gated.steering_params(STEER[:2]))
    assert abs(mean_loss(again, records) - final["concept"]) < 1e-5
    with pytest.raises(ValueError, match="gated"):
        gated.vector(STEER[0])
    # a gated table saved without its gates is refused with the reason
    plain = ConceptVectors.oracle(tiny_llama, STEER[:2], HyperSteerConfig(layers=SITES))
    plain.save(tmp_path / "plain")
    (tmp_path / "plain" / "config.json").write_text((tmp_path / "oracle" / "config.json").read_text())
    with pytest.raises(HyperSteerFileError):
        ConceptVectors.load(tmp_path / "plain", tiny_llama)


# ---------------------------------------------------------------------------------------------- H
@pytest.mark.parametrize("gate", ["shared", "concept"])
def test_hypersteer_writes_gates_and_learns_a_gated_teacher(tiny_llama, tmp_path, gate):
    records = gated_records(tiny_llama, _teacher())
    config = HyperSteerConfig(variant="no_context", n_blocks=1, layers=SITES, gate=gate, head_init_std=0.01,
                              lr=1e-3, head_lr=3e-2, head_bias_lr=3e-2, batch_size=4, max_steps=120, eval_every=0,
                              log_every=40)
    hyper = HyperSteer(tiny_llama, config)
    params = hyper.steering_params(STEER[:2])
    assert params.shape == (2, 2, 2 * D + 1) and hyper.vectors(STEER[:2]).shape == (2, 2, D)
    torch.testing.assert_close(params[..., D:], initial_gate((2, 2), D))  # λ = 1 at the start
    before = mean_loss(hyper, records)
    HyperSteerTrainer(hyper, records, progress=False).train()
    assert mean_loss(hyper, records) < 0.5 * before
    learned = hyper.steering_params(STEER[:2])
    assert not torch.allclose(learned[..., D:], initial_gate((2, 2), D))  # the gates trained
    same_gate = torch.allclose(learned[0, :, D:], learned[1, :, D:])
    assert same_gate == (gate == "shared")  # a shared gate is one for every prompt; a concept gate is H's output
    hyper.save(tmp_path / "hyper")
    again = HyperSteer.load(tmp_path / "hyper", tiny_llama)
    torch.testing.assert_close(again.steering_params(STEER[:2]), learned)
    with pytest.raises(ValueError, match="gated"):
        hyper.vector(STEER[0])


# ---------------------------------------------------------------------------------------------- evaluation
def test_the_evaluation_steers_with_the_gates_and_a_factor_scales_only_the_vector(tiny_llama):
    steering = CONCEPTS[0].steering_prompts[0]
    oracle = ConceptVectors(tiny_llama, [steering], HyperSteerConfig(layers=SITES, gate="concept"), init_std=3.0)
    with torch.no_grad():
        oracle.gate_table.normal_(generator=torch.Generator().manual_seed(0))
        oracle.gate_table[..., :D] *= 30
    steerer = HyperSteerMethod(oracle, magnitude="trained").prepare(tiny_llama, CONCEPTS[0], CONCEPTS[1:])
    prompts = ["Tell me a story.", "Describe a day at the sea."]
    settings = GenerationSettings(max_new_tokens=5, batch_size=4)
    outputs = steerer.generate(prompts, [2.0, 0.0], settings, seed=0)
    params = oracle.steering_params(steering)
    params[..., :D] *= 2.0  # factor 2: twice the vector, the same gate
    tracker = PositionTracker()
    hooks = site_steering_hooks(oracle.config.hook_names, params.expand(2, -1, -1), D, tracker=tracker)
    with apply_steering_hooks(tiny_llama, hooks, tracker):
        expected = generate_texts(tiny_llama, prompts, max_new_tokens=5, do_sample=False)
    assert outputs[0] == expected
    with steer_with(oracle, steering, scale=2.0):  # the user-facing context: the same steering
        assert generate_texts(tiny_llama, prompts, max_new_tokens=5, do_sample=False) == expected
    assert not any(hp._forward_hooks for hp in tiny_llama.hook_dict.values())  # removed on exit
    with pytest.raises(RuntimeError, match="inside"), steer_with(oracle, steering):
        raise RuntimeError("inside")
    assert not any(hp._forward_hooks for hp in tiny_llama.hook_dict.values())  # also after an exception
    assert outputs[1] == generate_texts(tiny_llama, prompts, max_new_tokens=5, do_sample=False)  # factor 0: none
    assert steerer.info["mean_delta_norm"] == pytest.approx(float(oracle.vectors(steering).flatten().norm()),
                                                            rel=1e-4)
    with pytest.raises(ValueError, match="magnitude='trained'"):
        HyperSteerMethod(oracle, magnitude=3.0).prepare(tiny_llama, CONCEPTS[0], CONCEPTS[1:])


def test_one_gated_site_keeps_the_one_site_vector_shape(tiny_llama):
    oracle = ConceptVectors(tiny_llama, STEER[:2], HyperSteerConfig(layer=2, gate="shared"), init_std=1.0)
    hyper = HyperSteer(tiny_llama, HyperSteerConfig(variant="no_context", n_blocks=1, layer=2, gate="concept"))
    for module in (oracle, hyper):
        assert module.vectors(STEER[:2]).shape == (2, D)  # like an ungated one-site module
        assert module.steering_params(STEER[:2]).shape == (2, 1, 2 * D + 1)
        with pytest.raises(ValueError, match="steer_with"):
            module.vector(STEER[0])
