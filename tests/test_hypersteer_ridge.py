"""Closed-form (ridge) fit of HyperSteer's head: the regression itself, its cross-validation, and H after the fit."""

from __future__ import annotations

import pytest
import torch

from hooksteer.hypersteer import HyperSteer
from hooksteer.hypersteer.ridge import cross_validate, fit_head_ridge, fit_ridge, specific_r2

PROMPTS = [f"Write about {w}. Every sentence must be about {w}." for w in
           ("rivers", "castles", "gardens", "music", "trains", "oceans", "bread", "clocks")]


def test_ridge_recovers_a_linear_map_and_shrinks_to_the_mean():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=generator)
    true_map = torch.randn(16, 8, generator=generator)
    y = 3.0 + x @ true_map
    new = torch.randn(5, 16, generator=generator)
    assert torch.allclose(fit_ridge(x, y, 1e-6)(new), 3.0 + new @ true_map, atol=1e-3)
    shrunk = fit_ridge(x, y, 1e6)  # infinite strength: every prediction is the training mean
    assert torch.allclose(shrunk(new), y.mean(0).expand(5, -1), atol=1e-2)


@pytest.mark.parametrize(("x_shape", "y_shape", "alpha", "message"), [
    ((4, 3), (5, 2), 1.0, "same n"), ((1, 3), (1, 2), 1.0, "two rows"), ((4, 3), (4, 2), 0.0, "> 0")])
def test_ridge_rejects_bad_input(x_shape, y_shape, alpha, message):
    with pytest.raises(ValueError, match=message):
        fit_ridge(torch.zeros(x_shape), torch.zeros(y_shape), alpha)


def test_cross_validation_prefers_weak_ridge_for_a_clean_map_and_strong_for_noise():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(60, 10, generator=generator)
    clean = x @ torch.randn(10, 4, generator=generator)
    cv_clean = cross_validate(x, clean, folds=5, seed=0)
    assert max(cv_clean, key=cv_clean.get) <= 0.01 and max(cv_clean.values()) > 0.99
    noise = torch.randn(60, 4, generator=generator)  # nothing to predict from x
    cv_noise = cross_validate(x, noise, folds=5, seed=0)
    assert max(cv_noise, key=cv_noise.get) >= 10 and max(cv_noise.values()) < 0.05


def test_cross_validation_keeps_a_group_in_one_fold():
    """Rows of one concept in train and test folds would let the ridge score memorisation as generalisation."""
    generator = torch.Generator().manual_seed(2)
    concepts = torch.randn(12, 10, generator=generator)
    targets = torch.randn(12, 4, generator=generator)  # unrelated to the features: nothing generalises
    x = concepts.repeat_interleave(3, 0) + 0.01 * torch.randn(36, 10, generator=generator)
    y = targets.repeat_interleave(3, 0)
    groups = [i // 3 for i in range(36)]
    leaky = cross_validate(x, y, folds=4, seed=0)
    grouped = cross_validate(x, y, folds=4, seed=0, groups=groups)
    assert max(leaky.values()) > 0.5  # a row's twins in the training folds give its answer away
    assert max(grouped.values()) < 0.1


def test_specific_r2_is_one_for_exact_and_zero_for_the_mean():
    y = torch.randn(6, 3)
    mean = y.mean(0)
    assert specific_r2(y, y, mean) == pytest.approx(1.0)
    assert specific_r2(mean.expand(6, -1), y, mean) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("center", [True, False])
def test_fitted_head_reproduces_targets_linear_in_features(tiny_llama, center):
    hyper = HyperSteer(tiny_llama, loss="ce", variant="no_context", n_blocks=1, freeze_blocks=True, center=center, seed=0)
    features = hyper.head_inputs(PROMPTS)
    mapping = torch.randn(features.shape[1], features.shape[1], generator=torch.Generator().manual_seed(3))
    targets = 0.5 + features @ mapping * 0.1
    fit = fit_head_ridge(hyper, PROMPTS, targets, alpha=1e-6)
    assert fit.alpha == 1e-6 and fit.n_targets == len(PROMPTS)
    assert torch.allclose(hyper.vectors(PROMPTS), targets, atol=1e-2 * float(targets.abs().max()))
    new = "Write about lamps. Every sentence must be about lamps."
    expected = fit_ridge(features, targets, 1e-6)(hyper.head_inputs([new]))  # H's head is exactly the ridge map
    assert torch.allclose(hyper.vectors([new]), expected, atol=1e-3 * float(expected.abs().max()))


def test_fit_chooses_strength_by_cross_validation_and_strong_ridge_collapses(tiny_llama):
    hyper = HyperSteer(tiny_llama, loss="ce", variant="no_context", n_blocks=1, freeze_blocks=True, seed=0)
    noise = torch.randn(len(PROMPTS), tiny_llama.cfg.d_model, generator=torch.Generator().manual_seed(4))
    fit = fit_head_ridge(hyper, PROMPTS, noise, folds=4)
    assert set(fit.cv) and fit.alpha == max(fit.cv, key=fit.cv.get)
    fit_head_ridge(hyper, PROMPTS, noise, alpha=1e6)
    vectors = hyper.vectors(PROMPTS)
    assert torch.allclose(vectors, noise.mean(0).expand_as(vectors), atol=1e-2)


def test_fit_rejects_bad_targets(tiny_llama):
    hyper = HyperSteer(tiny_llama, loss="ce", variant="no_context", n_blocks=1)
    d = tiny_llama.cfg.d_model
    with pytest.raises(ValueError, match="target vectors"):
        fit_head_ridge(hyper, PROMPTS, torch.zeros(3, d))
    with pytest.raises(ValueError, match="d_model"):
        fit_head_ridge(hyper, PROMPTS, torch.zeros(len(PROMPTS), d + 1))
    bad = torch.zeros(len(PROMPTS), d)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_head_ridge(hyper, PROMPTS, bad)
