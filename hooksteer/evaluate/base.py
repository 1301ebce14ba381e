"""The judge interface: every judge rates concept, instruction relevance and fluency on 0-2.

Example:
    >>> JudgeScores(concept=2.0, instruction=1.0, fluency=2.0).score
    1.5
    >>> JudgeScores(concept=0.0, instruction=2.0, fluency=2.0).score
    0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class JudgeScores:
    """AxBench ratings of one generation, each in [0, 2]."""

    concept: float
    instruction: float
    fluency: float

    def __post_init__(self) -> None:
        for name in ("concept", "instruction", "fluency"):
            value = getattr(self, name)
            if not 0.0 <= value <= 2.0:
                raise ValueError(f"{name} score must lie in [0, 2], got {value}")

    @property
    def score(self) -> float:
        """Harmonic mean of the three ratings (0 if any rating is 0), as in AxBench."""
        parts = (self.concept, self.instruction, self.fluency)
        if min(parts) <= 0.0:
            return 0.0
        return 3.0 / sum(1.0 / p for p in parts)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "score": self.score}


@runtime_checkable
class Judge(Protocol):
    """Rates generations. ``concept`` is the concept description the output should be about;
    ``instruction`` the base prompt it should answer."""

    name: str

    def rate(self, concept: str, instruction: str, outputs: Sequence[str]) -> list[JudgeScores]:
        """One :class:`JudgeScores` per output."""
        ...
