"""HyperSteer as a :class:`~hooksteer.evaluate.methods.SteeringMethod` for the evaluation protocol.

:class:`HyperSteerMethod` plugs a trained :class:`~hooksteer.hypersteer.HyperSteer` into
:func:`hooksteer.evaluate.protocol.evaluate`, next to prompt steering and DiffMean. For a concept it
returns a :class:`~hooksteer.evaluate.methods.VectorSteerer` whose direction is a *callable*: given the
batch of base prompts, it writes one vector per (steering prompt, base prompt) pair in one batched
pass of H (``hyper.vectors``); the ``in_context`` and ``cross_attention`` variants therefore condition
every vector on the prompt being steered, ``no_context`` gives the same vector for every prompt. The
per-row ``(batch, d_model)`` vectors are added with :func:`hooksteer.hooks.add_vector` at H's injection
site (``blocks.{layer}.hook_resid_post``) at every position, held constant while generating (as in
the HyperSteer paper).

Magnitude (what a steering factor means):

* ``"resid_norm"`` (default): each vector is unit-normalised and scaled by ``factor ×`` the mean L2
  norm of the residual stream at H's site over the concept's reference texts, exactly as
  :class:`~hooksteer.evaluate.methods.DiffMeanMethod` does at its own site. One factor list therefore
  means the same thing ("fraction of a typical residual vector") for HyperSteer and DiffMean.
* ``"trained"``: the raw Δ that H was trained with, times the factor (factor 1 = the trained vector).
  Give such a method its own ``factors`` (e.g. ``(0.5, 1.0, 1.5, 2.0)``): the protocol then sweeps those
  for it instead of the run's residual-norm fractions.
* a number: unit direction × that fixed magnitude.

The mean trained norm ``‖Δ‖`` and its ratio to the residual norm (``natural_factor``: the factor at
which ``resid_norm`` steering reproduces the trained vector's length) are recorded in each concept's
``info``.

The same method evaluates the bounds of :mod:`hooksteer.hypersteer.bounds` (a free vector per concept, or
one shared vector), and it may steer a different model object than H's base model when it is the same
network (e.g. a ``TransformerBridge`` on the same weights, for faster generation): the base model's
dimensions must match.

Example:
    >>> from hooksteer.hypersteer.evaluation import HyperSteerMethod              # doctest: +SKIP
    >>> from hooksteer.evaluate.methods import DiffMeanMethod, PromptSteering      # doctest: +SKIP
    >>> methods = [PromptSteering(), DiffMeanMethod(), HyperSteerMethod(hyper)]     # doctest: +SKIP
    >>> result = evaluate(model, methods, held_out, eval_prompts, judge=judge, factors=[0.1, 0.2, 0.4])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hooksteer.data.schema import Concept
from hooksteer.evaluate.methods import (
    Magnitude,
    TextsFor,
    VectorSteerer,
    default_texts_for,
    residual_norm,
)
from hooksteer.evaluate.methods.common import _generate
from hooksteer.hooks import PositionSpec, PositionTracker, apply_steering_hooks, check_hook_name
from hooksteer.hypersteer.bounds import ConceptVectors
from hooksteer.hypersteer.gating import scale_vectors, site_steering_hooks, split_params
from hooksteer.hypersteer.model import HyperSteer, base_signature
from hooksteer.vectors import check_finite

__all__ = ["HyperSteerMethod", "HyperSteerDirections"]


def _network(model: nn.Module) -> dict[str, Any]:
    """What must agree for H's vectors to mean the same on another model object (e.g. the bridge of H's base
    model): sizes and block layout."""
    cfg = model.cfg
    signature = {k: v for k, v in base_signature(model).items() if k != "model_name"}
    for key in ("positional_embedding_type", "normalization_type", "act_fn", "d_mlp"):
        signature[key] = getattr(cfg, key, None)
    return signature


class HyperSteerDirections:
    """Callable ``prompts -> (n, d_model)``: H's vector for (steering prompt, each base prompt).

    With ``normalise=True`` every row is divided by its norm (unit directions). ``last_norms`` keeps the
    raw ‖Δ‖ of the most recent call; ``calls`` and ``seconds`` count the work done.
    """

    def __init__(self, hyper: HyperSteer | ConceptVectors, steering_prompt: str, *, normalise: bool = True,
                 batch_size: int = 32) -> None:
        if not isinstance(steering_prompt, str) or not steering_prompt.strip():
            raise ValueError("steering_prompt must be a non-empty string")
        self.hyper, self.steering_prompt = hyper, steering_prompt
        self.normalise, self.batch_size = normalise, max(1, int(batch_size))
        self.last_norms: list[float] = []
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        import time

        prompts = list(prompts)
        if not prompts:
            raise ValueError("no base prompts given")
        start = time.perf_counter()
        rows = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = prompts[i : i + self.batch_size]
            if self.hyper.needs_base_prompt:
                rows.append(self.hyper.steering_params([self.steering_prompt] * len(chunk), chunk))
            else:  # H(s) does not depend on x: one pass, repeated
                one = self.hyper.steering_params(self.steering_prompt)
                rows.append(one.expand(len(chunk), *one.shape[1:]))
        deltas = torch.cat(rows).float().cpu()
        vectors = split_params(deltas, int(self.hyper.base_model.cfg.d_model))[0]
        norms = vectors.flatten(1).norm(dim=-1)  # over every site's vector together (gates left out)
        self.last_norms = norms.tolist()
        self.calls += 1
        self.seconds += time.perf_counter() - start
        if self.normalise:
            if vectors.shape != deltas.shape:
                raise ValueError("gated steering parameters cannot be normalised to unit vectors; use "
                                 "magnitude='trained'")
            if bool((norms == 0).any()):
                raise ValueError("HyperSteer produced an all-zero vector: it cannot be normalised "
                                 "(untrained H with head_init_std=0?); use magnitude='trained'")
            deltas = deltas / norms.view(-1, *([1] * (deltas.ndim - 1)))
        return deltas


@dataclass
class HyperSteerMethod:
    """Steering with a trained HyperSteer hypernetwork (see the module docstring).

    Args:
        hyper: the trained :class:`HyperSteer` or :class:`~hooksteer.hypersteer.bounds.ConceptVectors` (its base
            model must be the evaluated model, or one with the same dimensions, e.g. its TransformerBridge).
        magnitude: ``"resid_norm"`` (default, same meaning of a factor as DiffMean), ``"trained"`` or a number.
        factors: this method's own factor sweep (``None``: the evaluation's); e.g. multiples of the trained
            norm for ``magnitude="trained"``.
        prompt_index: which of the concept's steering-prompt phrasings H receives.
        positions: where the vector is added (``None``: where it was trained to act, ``hyper.config.positions``).
        texts_for: texts whose residual norm sets the ``resid_norm`` scale (default: the concept's
            sentences and other concepts' sentences, as DiffMean uses).
        name: method name in the results (default ``"hypersteer-<variant>"``).
        batch_size: pairs per H forward.
    """

    hyper: HyperSteer | ConceptVectors = field(repr=False)
    magnitude: Magnitude | str = "resid_norm"
    factors: Sequence[float] | None = None
    prompt_index: int = 0
    positions: PositionSpec | None = None
    texts_for: TextsFor | None = field(default=None, repr=False)
    name: str = ""
    batch_size: int = 32
    uses_factors: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.hyper, HyperSteer | ConceptVectors):
            raise TypeError(f"hyper must be a HyperSteer or ConceptVectors, got {type(self.hyper).__name__}")
        if not self.name:
            kind = self.hyper.kind if isinstance(self.hyper, ConceptVectors) else self.hyper.config.variant
            self.name = f"hypersteer-{kind}"
        if self.factors is not None:
            self.factors = [float(f) for f in self.factors]
        if self.positions is None:
            self.positions = self.hyper.config.positions
        if isinstance(self.magnitude, str) and self.magnitude not in ("resid_norm", "trained"):
            raise ValueError(f"magnitude must be 'resid_norm', 'trained' or a number, got {self.magnitude!r}")

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> VectorSteerer:
        if self.hyper.base_model is not model:
            built, steered = _network(self.hyper.base_model), _network(model)
            differ = [k for k in built if built[k] != steered[k]]
            if differ:
                raise ValueError("the HyperSteer hypernetwork was built for another base model than the one "
                                 f"evaluated ({', '.join(f'{k} {built[k]} vs {steered[k]}' for k in differ)})")
        if not concept.steering_prompts:
            raise ValueError(f"concept {concept.id!r} has no steering prompts for HyperSteer")
        steering_prompt = concept.steering_prompts[self.prompt_index]
        hook_name = self.hyper.hook_name
        trained = self.magnitude == "trained"
        several = self.hyper.config.n_sites > 1 or self.hyper.config.gated
        if self.hyper.config.gated and self.magnitude != "trained":
            raise ValueError(f"{self.name} writes gated vectors (gate={self.hyper.config.gate!r}): their strength is "
                             "the trained one (λ·z); use magnitude='trained'")
        if several and self.magnitude == "resid_norm":
            raise ValueError(f"{self.name} steers {self.hyper.config.n_sites} sites: magnitude='resid_norm' (a "
                             "fraction of one site's residual norm) does not apply; use magnitude='trained'")
        directions = HyperSteerDirections(self.hyper, steering_prompt, normalise=not trained,
                                          batch_size=self.batch_size)
        info: dict[str, Any] = {"method": "hypersteer", "variant": self._kind(),
                                "n_blocks": self.hyper.config.n_blocks, "steering_prompt": steering_prompt,
                                "magnitude_mode": self.magnitude if isinstance(self.magnitude, str) else "fixed"}
        reference: float | None = None
        if self.magnitude == "resid_norm" or trained:
            positive, negative = (self.texts_for or default_texts_for)(concept, others)
            reference = residual_norm(model, [*positive[:8], *negative[:8]], hook_name)
            info["resid_norm"] = reference
        if trained:
            magnitude = 1.0
        elif self.magnitude == "resid_norm":
            magnitude = float(reference)  # type: ignore[arg-type]
        else:
            magnitude = float(self.magnitude)  # type: ignore[arg-type]
        if several:
            info["sites"] = self.hyper.config.sites
            steerer: _RecordingSteerer = _MultiSiteSteerer(model, self.hyper.config.hook_names, directions, magnitude,
                                                           positions=self.positions, info=info)  # type: ignore[arg-type]
        else:
            steerer = _RecordingSteerer(model, hook_name, directions, magnitude, positions=self.positions,  # type: ignore[arg-type]
                                        info=info)
        steerer.reference_norm = reference
        return steerer

    def _kind(self) -> str:
        return self.hyper.kind if isinstance(self.hyper, ConceptVectors) else self.hyper.config.variant

    def config(self) -> dict[str, Any]:
        cfg = self.hyper.config
        return {"name": self.name, "class": type(self).__name__, "variant": self._kind(), "n_blocks": cfg.n_blocks,
                "layer": cfg.layer, "layers": cfg.layers, "gate": cfg.gate, "hook_name": self.hyper.hook_name, "loss": cfg.loss,
                "magnitude": self.magnitude, "factors": self.factors, "prompt_index": self.prompt_index,
                "positions": self.positions if isinstance(self.positions, str) else [int(p) for p in self.positions],  # type: ignore[union-attr]
                "texts_for": getattr(self.texts_for, "__name__", None) if self.texts_for else "default_texts_for",
                "trained_steps": cfg.extra.get("trained_steps") if isinstance(cfg.extra, dict) else None}


class _RecordingSteerer(VectorSteerer):
    """A :class:`VectorSteerer` that adds H's vector norms and timing to ``info`` after generating."""

    reference_norm: float | None = None

    def generate(self, prompts, factors, settings, seed):  # type: ignore[override]
        outputs = super().generate(prompts, factors, settings, seed)
        directions: HyperSteerDirections = self.direction  # type: ignore[assignment]
        norms = directions.last_norms
        if norms:
            mean = sum(norms) / len(norms)
            self.info["mean_delta_norm"] = mean
            self.info["h_seconds"] = directions.seconds
            self.info["n_vectors"] = len(norms)
            if self.reference_norm:
                self.info["natural_factor"] = mean / self.reference_norm
        return outputs


class _MultiSiteSteerer(_RecordingSteerer):
    """H's ``(n, n_sites, d_model)`` vectors added at every site at once (``HyperSteerConfig.layers``), each row of a
    batch with its own vectors and factor; hooks share one position tracker, so cached generation stays aligned.
    Gated rows ``[z | w | b]`` add ``λ(h_t)·factor·z`` (:func:`~hooksteer.hypersteer.gating.site_steering_hooks`)."""

    def __init__(self, model: nn.Module, hook_names: Sequence[str], direction: HyperSteerDirections, magnitude: float,
                 *, positions: PositionSpec = "all", info: dict[str, Any] | None = None) -> None:
        for name in hook_names:
            check_hook_name(model, name)
        super().__init__(model, hook_names[0], direction, magnitude, positions=positions, info=info)  # type: ignore[arg-type]
        self.hook_names = list(hook_names)
        self.info["hook_names"] = self.hook_names

    def directions(self, prompts: Sequence[str]) -> Tensor:
        rows = torch.as_tensor(self.direction(prompts))  # type: ignore[operator]
        if rows.shape[:2] != (len(prompts), len(self.hook_names)) or rows.ndim != 3:
            raise ValueError(f"direction callable returned shape {tuple(rows.shape)} for {len(prompts)} prompts × "
                             f"{len(self.hook_names)} sites")
        check_finite(rows, "per-prompt directions")
        return rows.float()

    def _scaled(self, directions: Tensor, scale: Tensor) -> Tensor:
        return scale_vectors(directions, scale, int(self.model.cfg.d_model))

    def _generate_rows(self, prompts: list[str], directions: Tensor, settings: Any, seed: int) -> list[str]:
        tracker = PositionTracker()
        hooks = site_steering_hooks(self.hook_names, directions, int(self.model.cfg.d_model),
                                    positions=self.positions, tracker=tracker)
        with apply_steering_hooks(self.model, hooks, tracker):
            return _generate(self.model, prompts, settings, seed)
