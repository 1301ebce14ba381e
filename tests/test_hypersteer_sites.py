"""HyperSteer and its bounds at several injection sites (``HyperSteerConfig.layers``): one vector per layer, all added
at once, trained above the lowest site and steered the same way at inference."""

from __future__ import annotations

import pytest
import torch
from test_hypersteer_distill import BASE, STEER, records_from_vectors
from test_hypersteer_eval import CONCEPTS

import hooksteer as hs
from hooksteer.distill import DistillRecord
from hooksteer.evaluate.methods import GenerationSettings
from hooksteer.generation import generate_texts
from hooksteer.hypersteer import HyperSteer, HyperSteerConfig, HyperSteerConfigError, HyperSteerTrainer
from hooksteer.hypersteer.bounds import ConceptVectors
from hooksteer.hypersteer.data import collate
from hooksteer.hypersteer.diagnostics import vector_separation
from hooksteer.hypersteer.evaluation import HyperSteerMethod
from hooksteer.hypersteer.loss import distill_loss, steered_logits_full, steered_loss_above_site
from hooksteer.hypersteer.trainer import mean_loss

torch.set_num_threads(1)
SITES = [0, 2]


def _set(vectors: torch.Tensor, sites=SITES) -> hs.SteeringSet:
    return hs.SteeringSet(hs.SteeringVector(f"blocks.{layer}.hook_resid_post", v) for layer, v in zip(sites, vectors, strict=True))


def records_from_site_vectors(model, vectors: dict[str, torch.Tensor]) -> list[DistillRecord]:
    """Teacher = the model steered by a known vector at each of ``SITES`` per steering prompt."""
    return records_from_vectors(model, vectors, SITES)


def _truth(seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {STEER[0]: torch.randn(2, 32, generator=g) * 4, STEER[1]: torch.randn(2, 32, generator=g) * 4}


# ---------------------------------------------------------------------------------------------- settings
def test_sites_default_to_the_one_layer_and_follow_layers(tiny_llama):
    one = HyperSteerConfig(layer=1).resolved(tiny_llama)
    assert one.sites == [1] and one.n_sites == 1 and one.hook_names == ["blocks.1.hook_resid_post"]
    several = HyperSteerConfig(layers=[0, 2]).resolved(tiny_llama)
    assert several.layer == 0 and several.sites == [0, 2] and several.n_sites == 2
    assert several.hook_names == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    assert HyperSteerConfig.from_dict(several.to_dict()) == several


@pytest.mark.parametrize(("overrides", "message"), [
    ({"layers": []}, "non-empty list"),
    ({"layers": [2, 1]}, "strictly increasing"),
    ({"layers": [1, 1]}, "strictly increasing"),
    ({"layers": [0, True]}, "non-empty list"),
    ({"layers": [0, 2], "layer": 2}, "must be the lowest"),
    ({"layers": [0, 3]}, "out of range"),
    ({"layers": [0, 2], "prior_gain": 1.0}, "prior_gain works with one site"),
])
def test_bad_site_settings_are_refused_with_the_reason(tiny_llama, overrides, message):
    with pytest.raises(HyperSteerConfigError, match=message):
        HyperSteerConfig(**overrides).resolved(tiny_llama)


# ---------------------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("positions", ["all", "prompt"])
def test_fast_path_equals_full_forward_and_inference_steering_at_several_sites(tiny_llama, positions):
    records = records_from_site_vectors(tiny_llama, _truth())
    oracle = ConceptVectors(tiny_llama, [STEER[0], STEER[1]],
                                   HyperSteerConfig(layers=SITES, positions=positions), init_std=2.0)
    trainer = HyperSteerTrainer(oracle, records, progress=False)
    batch = collate(trainer.train_data[:4], pad_id=0)
    delta = oracle(oracle.indices(batch.keys))
    assert delta.shape == (4, 2, 32)
    fast, n = steered_loss_above_site(tiny_llama, trainer.train_cache.get(batch), SITES, delta, batch, "distill",
                                      positions)
    from hooksteer.hypersteer.loss import steered_positions

    full_logits = steered_logits_full(tiny_llama, batch.tokens, SITES, delta, steered_positions(batch, positions))
    full, m = distill_loss(full_logits, batch)
    assert int(n) == int(m)
    torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-4)
    if positions == "all":  # the training mechanism is the inference one: a SteeringSet at both sites
        with torch.no_grad(), hs.steer(tiny_llama, _set(delta[0].detach())):
            steered = tiny_llama(batch.tokens[:1], padding_side="right")
        torch.testing.assert_close(full_logits[:1], steered, rtol=1e-4, atol=1e-4)
    # the upper site matters: dropping its vector changes the loss
    dropped = delta.clone()
    dropped[:, 1] = 0
    other, _ = steered_loss_above_site(tiny_llama, trainer.train_cache.get(batch), SITES, dropped, batch, "distill",
                                       positions)
    assert abs(float((other - fast).detach())) > 1e-3


def test_a_one_site_delta_is_refused_for_several_layers(tiny_llama):
    records = records_from_site_vectors(tiny_llama, _truth())
    oracle = ConceptVectors.oracle(tiny_llama, [STEER[0]], HyperSteerConfig(layer=0))
    trainer = HyperSteerTrainer(oracle, records[:1], progress=False)
    batch = collate(trainer.train_data[:1], pad_id=0)
    with pytest.raises(ValueError, match="steers one site"):
        steered_loss_above_site(tiny_llama, trainer.train_cache.get(batch), SITES, torch.zeros(1, 32), batch,
                                "distill")


# ---------------------------------------------------------------------------------------------- bounds
def test_a_two_site_oracle_fits_a_two_site_teacher_better_than_either_site_alone(tiny_llama, tmp_path):
    truth = _truth()
    records = records_from_site_vectors(tiny_llama, truth)
    final = {}
    for layers in ([0, 2], [0], [2]):
        config = HyperSteerConfig(layers=layers, lr=0.1, batch_size=4, max_steps=150, eval_every=0, log_every=50)
        oracle = ConceptVectors.oracle(tiny_llama, list(truth), config)
        before = mean_loss(oracle, records)
        HyperSteerTrainer(oracle, records, progress=False).train()
        final[tuple(layers)] = mean_loss(oracle, records)
        assert final[tuple(layers)] < before
        if len(layers) == 2:
            two_sites = oracle
    assert final[(0, 2)] < 0.1 * mean_loss(ConceptVectors.floor(tiny_llama, HyperSteerConfig(layers=SITES)), records)
    assert final[(0, 2)] < 0.5 * min(final[(0,)], final[(2,)])
    vectors = two_sites.vector(STEER[0])
    assert isinstance(vectors, hs.SteeringSet) and sorted(vectors.by_hook()) == [
        "blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    two_sites.save(tmp_path / "oracle")
    again = ConceptVectors.load(tmp_path / "oracle", tiny_llama)
    assert again.config.sites == SITES
    torch.testing.assert_close(again.vectors(list(truth)), two_sites.vectors(list(truth)))


def test_a_fixed_length_applies_to_each_site(tiny_llama):
    oracle = ConceptVectors.oracle(tiny_llama, STEER[:2], HyperSteerConfig(layers=SITES, delta_norm=5.0))
    torch.testing.assert_close(oracle.vectors(STEER[:2]).norm(dim=-1), torch.full((2, 2), 5.0))


# ---------------------------------------------------------------------------------------------- H
def test_hypersteer_writes_a_vector_per_site_and_learns_them(tiny_llama, tmp_path):
    truth = _truth()
    records = records_from_site_vectors(tiny_llama, truth)
    config = HyperSteerConfig(variant="no_context", n_blocks=1, layers=SITES, head_init_std=0.01, lr=1e-3,
                              head_lr=3e-2, head_bias_lr=3e-2, batch_size=4, max_steps=120, eval_every=0,
                              log_every=40)
    hyper = HyperSteer(tiny_llama, config)
    vectors = hyper.vectors(list(truth))
    assert vectors.shape == (2, 2, 32)
    before = mean_loss(hyper, records)
    HyperSteerTrainer(hyper, records, progress=False).train()
    after = mean_loss(hyper, records)
    assert after < 0.3 * before
    learned = hyper.vectors(list(truth))
    assert not torch.allclose(learned[0], learned[1], atol=1e-3)  # the two concepts get different vectors
    steering = hyper.vector(STEER[0])
    assert isinstance(steering, hs.SteeringSet)
    torch.testing.assert_close(torch.stack([v.vector for v in steering]), learned[0])
    hyper.save(tmp_path / "hyper")
    again = HyperSteer.load(tmp_path / "hyper", tiny_llama)
    torch.testing.assert_close(again.vectors(list(truth)), learned)
    separation = vector_separation(again, list(truth), BASE[:2])
    assert -1.0 <= separation["between_concepts"] < 0.99


# ---------------------------------------------------------------------------------------------- evaluation
def test_evaluation_steers_every_site_like_the_steering_set(tiny_llama):
    oracle = ConceptVectors(tiny_llama, [CONCEPTS[0].steering_prompts[0]], HyperSteerConfig(layers=SITES),
                                   init_std=3.0)
    steerer = HyperSteerMethod(oracle, magnitude="trained").prepare(tiny_llama, CONCEPTS[0], CONCEPTS[1:])
    prompts = ["Tell me a story.", "Describe a day at the sea."]
    directions = steerer.directions(prompts)
    assert directions.shape == (2, 2, 32)
    outputs = steerer.generate(prompts, [1.0], GenerationSettings(max_new_tokens=5, batch_size=4), seed=0)
    with hs.steer(tiny_llama, oracle.vector(CONCEPTS[0].steering_prompts[0])):
        expected = generate_texts(tiny_llama, prompts, max_new_tokens=5, do_sample=False)
    assert outputs[0] == expected
    assert steerer.info["sites"] == SITES and steerer.info["mean_delta_norm"] > 0
    with pytest.raises(ValueError, match="magnitude='trained'"):
        HyperSteerMethod(oracle).prepare(tiny_llama, CONCEPTS[0], CONCEPTS[1:])


def test_a_ridge_head_fits_one_vector_per_site(tiny_llama):
    from hooksteer.hypersteer.ridge import fit_head_ridge

    hyper = HyperSteer(tiny_llama, HyperSteerConfig(variant="no_context", n_blocks=1, layers=SITES))
    targets = torch.randn(3, 2, 32, generator=torch.Generator().manual_seed(0))
    fit_head_ridge(hyper, STEER, targets, alpha=1e-6)
    torch.testing.assert_close(hyper.vectors(STEER), targets, rtol=1e-3, atol=1e-3)  # 3 points: an exact fit
    with pytest.raises(ValueError, match="n_sites × d_model"):
        fit_head_ridge(hyper, STEER, torch.randn(3, 3, 32), alpha=1.0)
