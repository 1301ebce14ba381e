"""What every steering method shares: generation settings, seeds, the two protocols, plain batched generation.

A :class:`SteeringMethod` turns one concept into a :class:`ConceptSteerer`; the steerer generates answers to
a batch of base prompts at a list of steering factors (:class:`GenerationSettings` is identical for every
method, for a fair comparison).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Union, runtime_checkable

from torch import nn

from hooksteer.data.schema import Concept

Factor = Union[float, None]


@dataclass(frozen=True)
class GenerationSettings:
    """How every method generates (identical across methods for a fair comparison).

    AxBench samples 128 tokens at temperature 1.0 (``do_sample=True``); the default is greedy, because
    the embedded 135M model sampled at T=1 writes noise even without steering.

    Example:
        >>> GenerationSettings(max_new_tokens=32).do_sample
        False
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any printable parts (same parts → same seed, in every process).

    Example:
        >>> derive_seed(0, "diffmean", "volcano") == derive_seed(0, "diffmean", "volcano")
        True
    """
    return zlib.crc32(":".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


@runtime_checkable
class ConceptSteerer(Protocol):
    """Generates steered answers for one concept."""

    info: dict[str, Any]

    def generate(self, prompts: Sequence[str], factors: Sequence[Factor], settings: GenerationSettings,
                 seed: int) -> list[list[str]]:
        """``outputs[j][i]``: the answer to ``prompts[i]`` at ``factors[j]``."""
        ...


@runtime_checkable
class SteeringMethod(Protocol):
    """A way of steering towards a concept. ``uses_factors=False`` methods are run at one factor (``None``)."""

    name: str
    uses_factors: bool

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> ConceptSteerer:
        """Build whatever steers towards ``concept`` (``others`` are the remaining concepts, e.g. negatives)."""
        ...

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings, saved with the results."""
        ...


def _generate(model: nn.Module, prompts: Sequence[str], settings: GenerationSettings, seed: int) -> list[str]:
    from hooksteer.generation import generate_texts

    return generate_texts(model, list(prompts), max_new_tokens=settings.max_new_tokens,
                          do_sample=settings.do_sample, temperature=settings.temperature, seed=seed)


def _chunks(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def _generate_plain(model: nn.Module, prompts: Sequence[str], settings: GenerationSettings, seed: int) -> list[str]:
    outputs: list[str] = []
    for k, chunk in enumerate(_chunks(len(prompts), settings.batch_size)):
        outputs.extend(_generate(model, [prompts[i] for i in chunk], settings, derive_seed(seed, k)))
    return outputs


def check_factors(factors: Sequence[float], *, positive: bool = False) -> list[float]:
    """Validate a factor sweep: non-empty, finite (and > 0 with ``positive``, e.g. a PSR's α), no duplicates.

    Example:
        >>> check_factors([0.5, 1])
        [0.5, 1.0]
    """
    values = [float(f) for f in factors]
    if not values:
        raise ValueError("factors is empty: give at least one steering factor")
    bad = [f for f in values if not math.isfinite(f) or (positive and f <= 0)]
    if bad:
        raise ValueError(f"factors must be {'positive' if positive else 'finite'} numbers, got {bad}")
    if len(set(values)) != len(values):
        raise ValueError(f"factors contain duplicates: {values}")
    return values
