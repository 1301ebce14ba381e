"""Constant-vector methods: DiffMean, PCA and a random control, each steering with its unit direction.

A :class:`VectorMethod` makes one vector per concept from its ``texts_for`` texts, and returns a
:class:`~hooksteer.evaluate.methods.vector_steering.VectorSteerer` that adds ``factor · magnitude ·
unit(v)`` at every position (AxBench); see :mod:`~hooksteer.evaluate.methods.magnitudes` for the magnitude.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from torch import Tensor, nn

from hooksteer.data.schema import Concept
from hooksteer.evaluate.methods.common import derive_seed
from hooksteer.evaluate.methods.magnitudes import max_projection, residual_norm
from hooksteer.evaluate.methods.texts import TextsFor, default_texts_for
from hooksteer.evaluate.methods.vector_steering import VectorSteerer
from hooksteer.hooks import PositionSpec
from hooksteer.vectors import SteeringVector

Magnitude = Union[Literal["resid_norm", "max_projection"], float]


@dataclass
class VectorMethod:
    """Base of the constant-vector methods: make a vector per concept, steer with its unit direction.

    Args:
        layer: block index (default: a third of the depth); ``site``: ``pre`` / ``mid`` / ``post``.
        hook_name: overrides ``layer``/``site``.
        magnitude: ``"resid_norm"``, ``"max_projection"`` or a number (see module docstring).
        positions: where to add (AxBench: ``"all"``).
        texts_for: ``(concept, others) -> (positive, negative)`` texts; default :func:`default_texts_for`.
    """

    layer: int | None = None
    site: str = "post"
    hook_name: str | None = None
    magnitude: Magnitude = "resid_norm"
    positions: PositionSpec = "all"
    texts_for: TextsFor | None = field(default=None, repr=False)
    name: str = "vector"
    uses_factors: bool = field(default=True, init=False)

    def site_for(self, model: nn.Module) -> str:
        if self.hook_name is not None:
            return self.hook_name
        layer = self.layer if self.layer is not None else max(0, round(model.cfg.n_layers / 3))
        return f"blocks.{layer}.hook_resid_{self.site}"

    def make_vector(self, model: nn.Module, hook_name: str, concept: Concept,
                    positive: list[str], negative: list[str]) -> SteeringVector:
        raise NotImplementedError

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> VectorSteerer:
        hook_name = self.site_for(model)
        positive, negative = (self.texts_for or default_texts_for)(concept, others)
        vector = self.make_vector(model, hook_name, concept, positive, negative)
        unit = vector.unit().vector.float()
        magnitude = self.magnitude_for(model, hook_name, unit, positive, negative)
        info = {"method": vector.method, "vector_norm": vector.norm(), "n_positive": len(positive),
                "n_negative": len(negative), **{k: v for k, v in vector.source.items() if _is_small(v)}}
        steerer = VectorSteerer(model, hook_name, unit, magnitude, positions=self.positions, info=info)
        steerer.vector = vector  # type: ignore[attr-defined]  # kept for inspection and tests
        return steerer

    def magnitude_for(self, model: nn.Module, hook_name: str, unit: Tensor,
                      positive: list[str], negative: list[str]) -> float:
        if isinstance(self.magnitude, int | float) and not isinstance(self.magnitude, bool):
            return float(self.magnitude)
        if self.magnitude == "resid_norm":
            return residual_norm(model, [*positive[:8], *negative[:8]], hook_name)
        if self.magnitude == "max_projection":
            value = max_projection(model, positive, hook_name, unit)
            if value <= 0:
                raise ValueError(f"max_projection magnitude is {value:.3g} <= 0; use magnitude='resid_norm'")
            return value
        raise ValueError(f"magnitude must be 'resid_norm', 'max_projection' or a number, got {self.magnitude!r}")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__, "layer": self.layer, "site": self.site,
                "hook_name": self.hook_name, "magnitude": self.magnitude, "positions": _jsonable(self.positions),
                "texts_for": getattr(self.texts_for, "__name__", None) if self.texts_for else "default_texts_for"}


def _is_small(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, str) else [int(v) for v in value]


@dataclass
class DiffMeanMethod(VectorMethod):
    """DiffMean (AxBench): mean activation over each text's tokens, positive mean minus negative mean."""

    name: str = "diffmean"
    aggregation: str = "mean"

    def make_vector(self, model: nn.Module, hook_name: str, concept: Concept,
                    positive: list[str], negative: list[str]) -> SteeringVector:
        from hooksteer.methods.diffmean import diffmean

        return diffmean(model, positive, negative, hook_name, aggregation=self.aggregation)  # type: ignore[arg-type]


@dataclass
class PCAMethod(VectorMethod):
    """PCA baseline: first PC of centred activations (texts are unpaired), oriented negative → positive."""

    name: str = "pca"
    mode: str = "centred"
    aggregation: str = "mean"

    def make_vector(self, model: nn.Module, hook_name: str, concept: Concept,
                    positive: list[str], negative: list[str]) -> SteeringVector:
        from hooksteer.methods.pca import pca

        return pca(model, positive, negative, hook_name, mode=self.mode, aggregation=self.aggregation)  # type: ignore[arg-type]


@dataclass
class RandomControl(VectorMethod):
    """Control: a random direction (seeded per concept) with the norm of ``base``'s vector.

    Because steering uses the unit direction times the same magnitude reference, the random
    control adds a vector exactly as long as ``base`` does at every factor. The hook point and
    magnitude reference are ``base``'s (its own ``layer``/``site``/``magnitude`` are not used).
    """

    name: str = "random"
    base: VectorMethod = field(default_factory=DiffMeanMethod)
    seed: int = 0

    def site_for(self, model: nn.Module) -> str:
        return self.base.site_for(model)

    def make_vector(self, model: nn.Module, hook_name: str, concept: Concept,
                    positive: list[str], negative: list[str]) -> SteeringVector:
        from hooksteer.methods.random_direction import random_like

        reference = self.base.make_vector(model, hook_name, concept, positive, negative)
        return random_like(reference, seed=derive_seed(self.seed, concept.id))

    def magnitude_for(self, model: nn.Module, hook_name: str, unit: Tensor,
                      positive: list[str], negative: list[str]) -> float:
        if self.base.magnitude == "max_projection":
            raise ValueError("RandomControl needs a base magnitude that does not depend on the direction "
                             "('resid_norm' or a number): the max projection of a random direction is meaningless")
        return self.base.magnitude_for(model, hook_name, unit, positive, negative)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "base": self.base.config(), "seed": self.seed}
