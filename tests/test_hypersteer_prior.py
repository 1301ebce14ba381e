"""HyperSteer's direction prior (``prior_gain``): Δ = b + W·(x − μ) + g·(x − μ)/‖x − μ‖ with a trained gain g."""

from __future__ import annotations

import pytest
import torch

from hooksteer.hypersteer import HyperSteer, HyperSteerConfigError
from hooksteer.hypersteer.deltas import prior_direction
from hooksteer.hypersteer.ridge import fit_head_ridge
from hooksteer.hypersteer.trainer import parameter_groups

PROMPTS = [f"Write about {w}. Every sentence must be about {w}." for w in
           ("rivers", "castles", "gardens", "music", "trains", "oceans")]


def _prior_only(model, gain=5.0):
    hyper = HyperSteer(model, loss="ce", variant="no_context", n_blocks=0, prior_gain=gain, head_init_std=0.0)
    features = hyper.head_inputs(PROMPTS)
    with torch.no_grad():
        hyper.center_mean.copy_(features.mean(0))
    return hyper, features


def test_prior_alone_points_each_prompt_along_its_own_centred_features(tiny_llama):
    hyper, features = _prior_only(tiny_llama)
    vectors = hyper.vectors(PROMPTS)
    assert torch.allclose(vectors.norm(dim=-1), torch.full((len(PROMPTS),), 5.0), atol=1e-4)
    expected = torch.nn.functional.normalize(features - features.mean(0), dim=-1) * 5.0
    assert torch.allclose(vectors, expected, atol=1e-4)
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    assert float((unit @ unit.T - torch.eye(len(PROMPTS))).abs().max()) < 0.999  # different prompts, other vectors


def test_prior_direction_of_the_mean_row_is_zero():
    centred = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert torch.equal(prior_direction(centred)[0], torch.zeros(2))
    assert torch.allclose(prior_direction(centred)[1], torch.tensor([0.6, 0.8]))


def test_gain_trains_with_the_bias_and_is_saved(tiny_llama, tmp_path):
    hyper, _ = _prior_only(tiny_llama, gain=3.0)
    groups = {g["name"]: g for g in parameter_groups(hyper)}
    assert any(p is hyper.prior_gain for p in groups["head_bias"]["params"])
    delta = hyper(*_encode(hyper))
    delta.pow(2).sum().backward()
    assert hyper.prior_gain.grad is not None and float(hyper.prior_gain.grad) != 0.0
    with torch.no_grad():
        hyper.prior_gain.fill_(7.5)
    again = HyperSteer.load(hyper.save(tmp_path / "h"), tiny_llama)
    assert float(again.prior_gain.detach()) == 7.5
    assert torch.allclose(again.vectors(PROMPTS), hyper.vectors(PROMPTS), atol=1e-5)


def _encode(hyper):
    from hooksteer.activations import pad_token_id, right_pad
    from hooksteer.hypersteer.data import steering_ids

    rows = [steering_ids(hyper.base_model, p, hyper.config) for p in PROMPTS]
    return right_pad(rows, pad_token_id(hyper.base_model)), torch.tensor([len(r) for r in rows])


def test_ridge_fit_with_the_prior_fits_what_the_prior_leaves(tiny_llama):
    hyper, features = _prior_only(tiny_llama, gain=2.0)
    targets = torch.randn(len(PROMPTS), tiny_llama.cfg.d_model, generator=torch.Generator().manual_seed(0))
    fit_head_ridge(hyper, PROMPTS, targets, alpha=1e-6)
    assert torch.allclose(hyper.vectors(PROMPTS), targets, atol=1e-2)


@pytest.mark.parametrize(("overrides", "message"), [({"prior_gain": 5.0, "center": False}, "center=True"),
                                                     ({"prior_gain": float("nan")}, "finite")])
def test_bad_prior_settings_are_rejected(tiny_llama, overrides, message):
    with pytest.raises(HyperSteerConfigError, match=message):
        HyperSteer(tiny_llama, loss="ce", variant="no_context", n_blocks=0, **overrides)


def test_without_head_weight_only_bias_and_gain_train(tiny_llama):
    from hooksteer.data.schema import SteeringExample
    from hooksteer.hypersteer import HyperSteerTrainer

    hyper = HyperSteer(tiny_llama, loss="ce", variant="no_context", n_blocks=0, prior_gain=2.0, head_weight=False,
                       freeze_blocks=True, batch_size=3, max_steps=2, eval_every=0, head_bias_lr=0.1)
    trainable = {name for name, p in hyper.named_parameters() if p.requires_grad}
    assert "head.weight" not in trainable and {"head.bias", "prior_gain"} <= trainable
    examples = [SteeringExample(f"c{i}", p, "Tell me a story.", "Once upon a time.") for i, p in enumerate(PROMPTS)]
    HyperSteerTrainer(hyper, examples, progress=False).train()
    assert float(hyper.head.weight.detach().abs().max()) == 0.0
    assert float(hyper.head.bias.detach().abs().max()) > 0.0 and float(hyper.prior_gain.detach()) != 2.0


def test_ridge_refuses_a_hypersteer_without_head_weight(tiny_llama):
    hyper = HyperSteer(tiny_llama, loss="ce", variant="no_context", n_blocks=0, prior_gain=2.0, head_weight=False)
    with pytest.raises(ValueError, match="no head weight"):
        fit_head_ridge(hyper, PROMPTS, torch.zeros(len(PROMPTS), tiny_llama.cfg.d_model))


def test_no_head_weight_without_prior_is_rejected(tiny_llama):
    with pytest.raises(HyperSteerConfigError, match="needs prior_gain"):
        HyperSteer(tiny_llama, loss="ce", variant="no_context", n_blocks=0, head_weight=False)
