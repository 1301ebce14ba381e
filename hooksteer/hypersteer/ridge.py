"""Fit HyperSteer's head in closed form: ridge regression from H's features to target vectors.

H's head is linear on the pooled features of the steering prompt, ``Δ = b + W·(x − μ)``. Trained end to end on a
few hundred concepts it memorises them (held-in at the oracle) but generalises little (held-out near the floor):
nothing limits how sharply ``W`` may separate training concepts. Given one target vector per training steering
prompt — the oracle's (a free vector per concept trained with the same objective,
:class:`~hooksteer.hypersteer.bounds.ConceptVectors`) — the best *regularised* linear head has a closed form,
and its strength can be chosen by cross-validation over concepts, i.e. for unseen concepts:

    W = argmin Σ_c ‖b + W·(x_c − μ) − v_c‖² + α·s·‖W‖²      (s: mean squared norm of the centred features)

:func:`fit_head_ridge` writes that ``W``, ``b = mean(v)`` and ``μ = mean(x)`` into H (its head and centring mean).
H can be trained end to end afterwards (:class:`~hooksteer.hypersteer.HyperSteerTrainer`) or used as it is.

Example:
    >>> oracle = ConceptVectors.oracle(model, prompts, config); HyperSteerTrainer(oracle, records).train()  # doctest: +SKIP
    >>> hyper = HyperSteer(model, HyperSteerConfig(n_blocks=12, freeze_blocks=True))             # doctest: +SKIP
    >>> fit = fit_head_ridge(hyper, prompts, oracle.vectors(prompts))                             # doctest: +SKIP
    >>> fit.alpha, fit.cv_r2                                                                      # doctest: +SKIP
    (1.0, 0.21)
    >>> hyper.vector("Write about Volcano. Every sentence must be about Volcano.")                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["RIDGE_ALPHAS", "RidgeFit", "RidgeMap", "cross_validate", "fit_head_ridge", "fit_ridge", "specific_r2"]

#: Ridge strengths tried by cross-validation, relative to the mean squared norm of the centred features.
RIDGE_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)


@dataclass
class RidgeMap:
    """A fitted affine map ``y = y_mean + (x − x_mean) @ weight``."""

    x_mean: Float[Tensor, " d_in"]
    y_mean: Float[Tensor, " d_out"]
    weight: Float[Tensor, "d_in d_out"]

    def __call__(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_out"]:
        return self.y_mean + (x - self.x_mean) @ self.weight


@dataclass
class RidgeFit:
    """What :func:`fit_head_ridge` chose: the strength, its cross-validated R² and the whole CV curve."""

    alpha: float
    cv_r2: float
    cv: dict[float, float] = field(default_factory=dict)
    n_targets: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "cv_r2": self.cv_r2, "cv": {str(k): v for k, v in self.cv.items()},
                "n_targets": self.n_targets}


def fit_ridge(x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"], alpha: float) -> RidgeMap:
    """Ridge regression of ``y`` on ``x`` with an unpenalised intercept, solved in the dual (``n`` ≪ ``d``).

    ``alpha`` is relative to the mean squared norm of the centred rows of ``x``, so one grid suits any feature
    scale. ``alpha → 0`` interpolates the training rows; ``alpha → ∞`` predicts ``mean(y)`` for everything.
    """
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"fit_ridge needs x (n, d_in) and y (n, d_out) with the same n, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if len(x) < 2:
        raise ValueError("fit_ridge needs at least two rows")
    if alpha <= 0:
        raise ValueError(f"ridge strength must be > 0, got {alpha}")
    x64, y64 = x.detach().double().cpu(), y.detach().double().cpu()
    x_mean, y_mean = x64.mean(0), y64.mean(0)
    xc, yc = x64 - x_mean, y64 - y_mean
    gram = xc @ xc.T
    scale = float(gram.diagonal().mean()) or 1.0
    coef = torch.linalg.solve(gram + alpha * scale * torch.eye(len(x64), dtype=torch.float64), yc)
    return RidgeMap(x_mean.float(), y_mean.float(), (xc.T @ coef).float())


def specific_r2(predicted: Float[Tensor, "n d"], target: Float[Tensor, "n d"], reference_mean: Float[Tensor, " d"]
                ) -> float:
    """R² of the concept-specific part, ``1 − ‖ŷ − y‖² / ‖y − ȳ‖²`` with ``ȳ`` the training targets' mean: 0 for
    predicting the mean (a collapsed H), 1 for exact vectors."""
    residual = (predicted.float() - target.float()).pow(2).sum()
    spread = (target.float() - reference_mean.float()).pow(2).sum().clamp_min(1e-12)
    return float(1 - residual / spread)


def cross_validate(x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"], folds: int = 5, seed: int = 0,
                   alphas: Sequence[float] = RIDGE_ALPHAS, groups: Sequence[Any] | None = None) -> dict[float, float]:
    """Mean R² (:func:`specific_r2`) on held-out folds for each strength in ``alphas``.

    ``groups`` (e.g. the concept of each row) keeps all rows of a group in one fold, so the score is for unseen
    *groups*; by default every row is its own group.
    """
    keys = list(range(len(x))) if groups is None else list(groups)
    if len(keys) != len(x):
        raise ValueError(f"{len(keys)} groups for {len(x)} rows")
    unique = list(dict.fromkeys(keys))
    if len(unique) < 2:
        raise ValueError("cross-validation needs at least two groups (concepts)")
    folds = min(folds, len(unique))
    order = torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed)).tolist()
    fold_of = {unique[i]: rank % folds for rank, i in enumerate(order)}
    assignment = torch.tensor([fold_of[k] for k in keys])
    scores: dict[float, list[float]] = {float(a): [] for a in alphas}
    for fold in range(folds):
        test = assignment == fold
        if int((~test).sum()) < 2:
            continue
        for alpha in scores:
            ridge = fit_ridge(x[~test], y[~test], alpha)
            scores[alpha].append(specific_r2(ridge(x[test]), y[test], y[~test].mean(0)))
    return {alpha: sum(v) / len(v) for alpha, v in scores.items() if v}


@torch.no_grad()
def fit_head_ridge(hyper: Any, steering_prompts: Sequence[str],
                   targets: Float[Tensor, "n d_model"] | Float[Tensor, "n n_sites d_model"],
                   base_prompts: Sequence[str] | None = None, *, alpha: float | None = None, folds: int = 5,
                   seed: int = 0, alphas: Sequence[float] = RIDGE_ALPHAS) -> RidgeFit:
    """Set H's head (and centring mean) to the ridge map from its features to ``targets``.

    Args:
        hyper: a :class:`~hooksteer.hypersteer.HyperSteer` (its blocks are used as they are; only the head and,
            with ``center=True``, the centring mean change).
        steering_prompts: one per target row (repeat a prompt to give it several rows, e.g. one per base prompt).
        targets: the vector each row should get, e.g. the oracle's (``(n, n_sites, d_model)`` for several sites).
        base_prompts: per row, for the variants that read the base prompt.
        alpha: a fixed ridge strength; ``None`` chooses it by ``folds``-fold cross-validation over distinct
            steering prompts (:func:`cross_validate`).

    Returns:
        :class:`RidgeFit` with the strength and its cross-validated R² (``nan`` when ``alpha`` was given).
    """
    if not getattr(hyper.config, "head_weight", True):
        raise ValueError("this HyperSteer has no head weight (head_weight=False): there is no W to fit")
    prompts = list(steering_prompts)
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} steering prompts but {len(targets)} target vectors")
    if targets.ndim == 3:  # several sites (HyperSteerConfig.layers): the head writes them side by side
        targets = targets.flatten(1)
    d_model = int(hyper.head.out_features)
    if targets.ndim != 2 or targets.shape[1] != d_model:
        raise ValueError(f"targets must be (n, {d_model}) (n_sites × d_model), got {tuple(targets.shape)}")
    if not bool(torch.isfinite(targets).all()):
        raise ValueError("targets contain NaN or infinity")
    features = hyper.head_inputs(prompts, base_prompts).cpu()
    targets = targets.detach().float().cpu()
    if getattr(hyper.config, "prior_gain", None) is not None:  # the head fits what the direction prior leaves
        from hooksteer.hypersteer.deltas import prior_direction

        targets = targets - float(hyper.prior_gain.detach()) * prior_direction(features - features.mean(0))
    cv: dict[float, float] = {}
    if alpha is None:
        cv = cross_validate(features, targets, folds, seed, alphas, groups=prompts)
        alpha = max(cv, key=cv.__getitem__)
    ridge = fit_ridge(features, targets, alpha)
    device, dtype = hyper.head.weight.device, hyper.head.weight.dtype
    hyper.head.weight.copy_(ridge.weight.T.to(device=device, dtype=dtype))
    if hyper.config.center:
        hyper.center_mean.copy_(ridge.x_mean.to(hyper.center_mean))
        hyper.center_batches.fill_(max(int(hyper.center_batches), 1))  # training continues the mean, not resets it
        hyper.head.bias.copy_(ridge.y_mean.to(device=device, dtype=dtype))
    else:
        hyper.head.bias.copy_((ridge.y_mean - ridge.x_mean @ ridge.weight).to(device=device, dtype=dtype))
    return RidgeFit(alpha=float(alpha), cv_r2=cv.get(alpha, float("nan")), cv=cv, n_targets=len(prompts))
