"""Prefix steering: chosen positions attend to the steering prompt's own keys and values.

:class:`PrefixSteering` builds each concept's prefix with :func:`hooksteer.prefix_attention.steering_prompt_prefix`
(no training: the frozen model maps the steering prompt to its per-layer keys and values) and generates with
:func:`hooksteer.prefix_attention.generate_with_prefix`; the factor scales the prefix's attention weight.
:class:`WithPrefix` runs another method (e.g. a PSR or FitSteer's A-PSR) while a fixed prefix is attended to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hooksteer.data.schema import Concept
from hooksteer.evaluate.methods.common import Factor, GenerationSettings, _chunks, check_factors, derive_seed
from hooksteer.prefix_attention import (
    POSITIONS,
    PrefixKV,
    attend_on_bridge,
    generate_with_prefix,
    steering_prompt_prefix,
)

__all__ = ["PrefixSteerer", "PrefixSteering", "WithPrefix", "WithPrefixSteerer"]


def concept_prefix(model: nn.Module, concept: Concept, prompt_index: int) -> PrefixKV:
    """The prefix of the concept's ``prompt_index``-th steering prompt (refused when it has no such phrasing)."""
    if len(concept.steering_prompts) <= prompt_index:
        raise ValueError(f"concept {concept.id!r} has {len(concept.steering_prompts)} steering prompts, the prefix "
                         f"needs index {prompt_index}")
    return steering_prompt_prefix(model, concept.steering_prompts[prompt_index])


class PrefixSteerer:
    """Generates with one concept's prefix at each factor (its attention weight's multiplier)."""

    def __init__(self, model: nn.Module, prefix: PrefixKV, positions: str) -> None:
        self.model, self.prefix, self.positions = model, prefix, positions
        self.info = {"steering_prompt": prefix.text, "prefix_tokens": prefix.span, "positions": positions}

    def generate(self, prompts: Sequence[str], factors: Sequence[Factor], settings: GenerationSettings,
                 seed: int) -> list[list[str]]:
        outputs: list[list[str]] = []
        for factor in factors:
            if not isinstance(factor, int | float) or isinstance(factor, bool):
                raise TypeError(f"prefix steering takes numeric factors, got {factor!r}")
            row: list[str] = []
            for k, chunk in enumerate(_chunks(len(prompts), settings.batch_size)):
                row.extend(generate_with_prefix(
                    self.model, [prompts[i] for i in chunk], self.prefix, factor=float(factor),
                    positions=self.positions, max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                    temperature=settings.temperature, seed=derive_seed(seed, k)))
            outputs.append(row)
        return outputs


@dataclass
class PrefixSteering:
    """The concept's steering prompt as keys and values the answer attends to (no training, no vector).

    Args:
        positions: which tokens attend to the prefix (:data:`hooksteer.prefix_attention.POSITIONS`): ``"response"``
            (default: the assistant header and the answer; the request is read exactly as unsteered) or
            ``"after_start"`` (every token after it, as prompting reads it).
        prompt_index: which of the concept's steering-prompt phrasings becomes the prefix.
        pooled: attend to :meth:`~hooksteer.prefix_attention.PrefixKV.pooled` (one mean key and value per layer
            and KV head, a fixed-size summary) instead of every token's (name suffix ``-pooled``).
        factors: this method's own sweep of the prefix's attention-weight multiplier (default ``(1, 2, 4)``;
            ``None``: the evaluation's ``factors``, which are sized for vectors).

    Example:
        >>> PrefixSteering(positions="after_start").config()["positions"]
        'after_start'
    """

    positions: str = "response"
    prompt_index: int = 0
    pooled: bool = False
    name: str = ""
    factors: Sequence[float] | None = (1.0, 2.0, 4.0)
    uses_factors: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; choose from {list(POSITIONS)}")
        if isinstance(self.prompt_index, bool) or not isinstance(self.prompt_index, int) or self.prompt_index < 0:
            raise ValueError(f"prompt_index must be an integer >= 0, got {self.prompt_index!r}")
        if not isinstance(self.pooled, bool):
            raise TypeError(f"pooled must be True or False, got {self.pooled!r}")
        self.name = self.name or f"prefix-{self.positions.replace('_', '-')}{'-pooled' if self.pooled else ''}"
        if self.factors is not None:
            self.factors = check_factors(self.factors, positive=True)

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> PrefixSteerer:
        prefix = concept_prefix(model, concept, self.prompt_index)
        return PrefixSteerer(model, prefix.pooled() if self.pooled else prefix, self.positions)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__, "positions": self.positions,
                "prompt_index": self.prompt_index, "style": "prefix", **({"pooled": True} if self.pooled else {}),
                **({} if self.factors is None else {"factors": list(self.factors)})}


class WithPrefixSteerer:
    """Generates with an inner steerer while the chosen positions attend to one concept's prefix."""

    def __init__(self, model: nn.Module, inner: Any, prefix: PrefixKV, positions: str, prefix_factor: float) -> None:
        self.model, self.inner, self.prefix = model, inner, prefix
        self.positions, self.prefix_factor = positions, prefix_factor

    @property
    def info(self) -> dict[str, Any]:
        return {**getattr(self.inner, "info", {}), "prefix_tokens": self.prefix.span,
                "prefix_positions": self.positions, "prefix_factor": self.prefix_factor}

    def generate(self, prompts: Sequence[str], factors: Sequence[Factor], settings: GenerationSettings,
                 seed: int) -> list[list[str]]:
        with attend_on_bridge(self.model, self.prefix, factor=self.prefix_factor, positions=self.positions) as (_, use):
            outputs = self.inner.generate(prompts, factors, settings, seed)
        if use.forward_passes == 0:
            raise RuntimeError("the inner method generated without the bridge's Hugging Face twin, so nothing attended "
                               "to the prefix: its hooks must be hooksteer steering at hook_resid_pre / hook_resid_post")
        return outputs


@dataclass
class WithPrefix:
    """``inner``'s steering (its own factor sweep) while the chosen positions also attend to the concept's steering
    prompt at a fixed ``prefix_factor``: a residual form and the attention route together.

    Example:
        >>> WithPrefix(PrefixSteering(positions="response"), positions="after_start").name
        'prefix-response+prefix-after-start'
    """

    inner: Any
    positions: str = "after_start"
    prefix_factor: float = 1.0
    prompt_index: int = 0
    name: str = ""
    uses_factors: bool = field(default=True, init=False)
    factors: Sequence[float] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not callable(getattr(self.inner, "prepare", None)) or not callable(getattr(self.inner, "config", None)):
            raise TypeError(f"inner must be a steering method (prepare, config), got {type(self.inner).__name__}")
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; choose from {list(POSITIONS)}")
        factor = self.prefix_factor
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 0 or factor == float("inf"):
            raise ValueError(f"prefix_factor must be a finite number > 0, got {factor!r}")
        self.uses_factors = bool(self.inner.uses_factors)
        self.factors = getattr(self.inner, "factors", None)
        self.name = self.name or f"{self.inner.name}+prefix-{self.positions.replace('_', '-')}"

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> WithPrefixSteerer:
        prefix = concept_prefix(model, concept, self.prompt_index)
        return WithPrefixSteerer(model, self.inner.prepare(model, concept, others), prefix, self.positions,
                                 float(self.prefix_factor))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__, "inner": self.inner.config(),
                "positions": self.positions, "prefix_factor": float(self.prefix_factor),
                "prompt_index": self.prompt_index}
