"""A HyperSteer without gradient training: each steering prompt's A-PSR, fitted in closed form to the model's activations.

``H(s) = fit(D(s))``: for a steering prompt ``s`` the prompted model answers a few probe prompts; two passes per
answer give what the prompt changes in the activations at every layer, ``D_l = A_l(x'y') − A_l(xy')``; per layer
the A-PSR of :mod:`hooksteer.psr` is fitted to what is still missing there (rank-1 direction ``z_l``, ridge
least-squares gate ``λ_l(h) = ReLU(w_l·h + b_l)``; ``PSRConfig(init="fit", local_steps=0, steps=0)``), layer by
layer in one steered pass. No parameter is trained, so a steering prompt never seen before gets its steering as
any other does: a few prompted answers, two passes and a least-squares fit per layer (seconds on a CPU). With a
``background`` text (e.g. the concept's Wikipedia intro) the prompted model reads it before the steering prompt, as
the ``reference_text`` distillation teacher does, and the fit follows that richer teacher.

Its bounds, the same as a trained H's (:mod:`hooksteer.hypersteer.bounds`):

* :meth:`FitSteer.floor` — one fit to the pairs of many steering prompts at once: what a collapsed H writes;
* :func:`centred` / :func:`leave_one_out_centred` — each prompt's directions minus the mean direction of other
  prompts (the concept-specific part alone, ``Δ = W·(x − μ)`` with μ from the other concepts);
* :func:`direction_separation` — between-concept cosine and shared fraction of the fitted directions (the collapse
  diagnostics of :mod:`hooksteer.hypersteer.diagnostics`).

Example:
    >>> fit = FitSteer(model, layers=range(30))                                               # doctest: +SKIP
    >>> psr = fit.write_prompt("Talk about volcanoes in every answer.", probe_prompts)      # doctest: +SKIP
    >>> psr = fit.write_prompt("Talk about volcanoes in every answer.", probe_prompts,      # doctest: +SKIP
    ...                        background="A volcano is a rupture in the crust of a planet ...")
    >>> with psr.steer(model, alpha=LEARNED_ALPHA):                                          # doctest: +SKIP
    ...     print(generate_texts(model, ["Tell me about your day."], max_new_tokens=32))
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from hooksteer.hypersteer.diagnostics import COLLAPSE_COSINE, mean_pairwise_cosine, shared_fraction
from hooksteer.psr.model import PSR, PSRConfig
from hooksteer.psr.teacher import (
    TeacherRecord,
    compute_teacher,
    encode_pair,
    steered_prompt_text,
    template_suffix_length,
)
from hooksteer.psr.trainer import train_psr

#: FitSteer's strength learned across concepts (SmolLM2-135M-Instruct, A-PSR on every layer): the α with the best mean
#: score on one set of 20 held-out concepts, applied to the other set (``benchmarks/selection_rules.py``'s ``other
#: sets`` rule on ``runs/fit_alpha_A`` and ``runs/fit_alpha_B``, α ∈ {1, 1.5, 2, 2.5, 3}); both sets chose 1.5. The
#: fit itself is α = 1; another model may want another α.
LEARNED_ALPHA = 1.5

__all__ = ["LEARNED_ALPHA", "FitSteer", "centred", "direction_separation", "directions", "fit_config",
           "leave_one_out_centred"]


def fit_config(model: Any, layers: Sequence[int], **overrides: Any) -> PSRConfig:
    """The closed-form A-PSR settings: ``init="fit"``, no local Adam step, no end-to-end step (so the loss, ``"mse"``,
    is never used and any teacher records do); ``overrides`` are :class:`PSRConfig` fields (e.g. ``positions``,
    ``fit_ridge``, ``held_out_fraction``; ``steps`` and ``loss="distill"`` to train after the fit)."""
    settings: dict[str, Any] = {"variant": "adaptive", "loss": "mse", "init": "fit", "local_steps": 0,
                                "steps": 0, "held_out_fraction": 0.25, **overrides}
    return PSRConfig(layers=list(layers), d_model=int(model.cfg.d_model), **settings)


class FitSteer:
    """Write an A-PSR for any steering prompt by fitting it to the prompted model's activations (no training).

    Args:
        model: the frozen base ``HookedTransformer``.
        layers: the steered layers (``hook_resid_post``), e.g. ``range(n_layers)`` as A-PSR.
        config: a :class:`PSRConfig` template instead of ``layers`` (its ``steps`` / ``local_steps`` say how much
            is trained after the fit; 0 / 0 for the closed form, the default).
        **overrides: :class:`PSRConfig` fields of the default config (with ``layers``).
    """

    def __init__(self, model: Any, layers: Sequence[int] | None = None, *, config: PSRConfig | None = None,
                 **overrides: Any) -> None:
        if (layers is None) == (config is None):
            raise ValueError("give the steered layers or a PSRConfig, not both or neither")
        self.model = model
        self.config = config if config is not None else fit_config(model, list(layers or []), **overrides)
        if self.config.d_model != int(model.cfg.d_model):
            raise ValueError(f"config.d_model={self.config.d_model}, the model has d_model={model.cfg.d_model}")

    def _config(self, steering_prompt: str, concept_id: str) -> PSRConfig:
        return dataclasses.replace(self.config, layers=list(self.config.layers), extra=dict(self.config.extra),
                                   steering_prompt=steering_prompt, concept_id=concept_id,
                                   model_name=str(getattr(self.model.cfg, "model_name", "")))

    def write(self, records: Sequence[TeacherRecord], *, steering_prompt: str = "", concept_id: str = "") -> PSR:
        """The A-PSR fitted to one steering prompt's teacher records (its activation differences at every layer of
        ``config.layers``; :func:`hooksteer.psr.teacher.compute_teacher`)."""
        psr, _ = train_psr(self.model, records, self._config(steering_prompt, concept_id), progress=False,
                           diagnose=False)
        return _frozen(psr)

    def floor(self, records_by_prompt: Mapping[str, Sequence[TeacherRecord]]) -> PSR:
        """One A-PSR fitted to the records of every steering prompt at once, the same for all of them (the floor:
        what is common to the prompts' activation differences)."""
        pooled = [record for records in records_by_prompt.values() for record in records]
        if len(records_by_prompt) < 2:
            raise ValueError("the floor is shared by several steering prompts: give the records of at least two")
        psr, _ = train_psr(self.model, pooled, self._config("", "shared"), progress=False, diagnose=False)
        return _frozen(psr)

    def teacher_records(self, steering_prompt: str, base_prompts: Sequence[str], *, max_new_tokens: int = 32,
                        batch_size: int = 8, background: str = "", background_chars: int = 600
                        ) -> list[TeacherRecord]:
        """The prompted model's greedy answers to ``base_prompts`` and the activation differences on them. With a
        ``background`` (e.g. the concept's Wikipedia intro, cut to ``background_chars``) the prompted model reads it
        before the steering prompt, as the ``reference_text`` distillation teacher does."""
        from hooksteer.generation import generate_texts

        if not isinstance(steering_prompt, str) or not steering_prompt.strip():
            raise ValueError("steering_prompt must be a non-empty string")
        if not base_prompts:
            raise ValueError("give at least one base prompt for the prompted model to answer")
        if not isinstance(background, str):
            raise TypeError("background must be a string (empty: the steering prompt alone)")
        context = {"background": background, "background_chars": background_chars}
        texts = [steered_prompt_text(self.model, steering_prompt, prompt, **context) for prompt in base_prompts]
        answers = generate_texts(self.model, texts, max_new_tokens=max_new_tokens, chat=False)
        kept = [(prompt, answer) for prompt, answer in zip(base_prompts, answers, strict=True) if answer.strip()]
        if not kept:
            raise ValueError(f"the prompted model gave only empty answers to {len(base_prompts)} base prompts")
        pairs = [encode_pair(self.model, steering_prompt, prompt, answer, max_response_tokens=max_new_tokens,
                             **context) for prompt, answer in kept]
        return compute_teacher(self.model, pairs, self.config.layers, batch_size=batch_size,
                               prefix_tokens=template_suffix_length(self.model))

    def write_prompt(self, steering_prompt: str, base_prompts: Sequence[str], *, max_new_tokens: int = 32,
                     background: str = "", background_chars: int = 600) -> PSR:
        """The A-PSR of a (new) steering prompt: :meth:`teacher_records` (with its ``background``, if any), then
        :meth:`write`."""
        records = self.teacher_records(steering_prompt, base_prompts, max_new_tokens=max_new_tokens,
                                       background=background, background_chars=background_chars)
        return self.write(records, steering_prompt=steering_prompt)


def _frozen(psr: PSR) -> PSR:
    psr.eval()
    psr.requires_grad_(False)
    return psr


def directions(psr: PSR) -> Float[Tensor, "n_layers d_model"]:
    """The PSR's directions ``z_l``, one row per steered layer (ascending)."""
    return torch.stack([psr.direction(layer).detach().float().cpu() for layer in psr.layers])


def centred(psr: PSR, mean: Float[Tensor, "n_layers d_model"]) -> PSR:
    """A copy of ``psr`` whose directions are ``z_l − mean_l`` (gates unchanged)."""
    if mean.shape != (len(psr.layers), psr.config.d_model):
        raise ValueError(f"mean directions must have shape ({len(psr.layers)}, {psr.config.d_model}), got "
                         f"{tuple(mean.shape)}")
    out, own = copy.deepcopy(psr), directions(psr)
    for row, layer in enumerate(psr.layers):
        out.set_layer(layer, z=own[row] - mean[row].to(own))
    return _frozen(out)


def leave_one_out_centred(psrs: Mapping[str, PSR]) -> dict[str, PSR]:
    """Each PSR minus the mean direction of the *other* PSRs (so a concept's own fit never enters its μ)."""
    if len(psrs) < 2:
        raise ValueError("centring needs the PSRs of at least two steering prompts")
    layers = {tuple(p.layers) for p in psrs.values()}
    if len(layers) != 1:
        raise ValueError(f"the PSRs steer different layers: {sorted(layers)}")
    stacked = {key: directions(psr) for key, psr in psrs.items()}
    total = torch.stack(list(stacked.values())).sum(dim=0)
    n = len(psrs)
    return {key: centred(psr, (total - stacked[key]) / (n - 1)) for key, psr in psrs.items()}


def direction_separation(psrs: Mapping[str, PSR]) -> dict[str, Any]:
    """Between-concept cosine of the PSRs' directions (all layers joined, and the mean over layers of each layer's
    cosine), their shared fraction ``‖mean‖² / mean ‖z‖²`` and ``collapsed`` (cosine ≥ ``COLLAPSE_COSINE``).

    Example:
        >>> direction_separation(psrs)["between_concepts"]      # doctest: +SKIP
        0.31
    """
    if len(psrs) < 2:
        raise ValueError("between-concept cosines need the PSRs of at least two steering prompts")
    stacked = torch.stack([directions(psr) for psr in psrs.values()])  # concept, layer, d_model
    joined = stacked.flatten(1)
    between = mean_pairwise_cosine(joined)
    per_layer = [mean_pairwise_cosine(stacked[:, row]) for row in range(stacked.shape[1])]
    return {"between_concepts": between, "between_concepts_per_layer_mean": sum(per_layer) / len(per_layer),
            "shared_fraction": shared_fraction(joined), "mean_norm": float(joined.norm(dim=-1).mean()),
            "collapsed": between >= COLLAPSE_COSINE, "n_concepts": len(psrs)}
