"""Plain records shared by the data, evaluation, HyperSteer and PSR modules.

Example:
    >>> c = Concept(id="volcano", title="Volcano", description="rupture in a planet's crust",
    ...             topic="Physical sciences", steering_prompts=["Mention volcanoes in every answer."])
    >>> c.steering_prompt
    'Mention volcanoes in every answer.'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Concept:
    """A concept to steer towards, with natural-language steering prompts (several phrasings)."""

    id: str
    title: str
    description: str = ""
    topic: str = ""
    steering_prompts: list[str] = field(default_factory=list)
    source: str = ""
    #: On-concept reference text (e.g. the Wikipedia intro); judge reference and DiffMean positives.
    text: str = ""

    @property
    def steering_prompt(self) -> str:
        """The first (canonical) phrasing."""
        if not self.steering_prompts:
            raise ValueError(f"concept {self.id!r} has no steering prompts")
        return self.steering_prompts[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Concept:
        return cls(**data)


@dataclass(frozen=True)
class BasePrompt:
    """An instruction the steered model answers (the 'x' of HyperSteer / AxBench)."""

    id: str
    text: str
    source: str = ""
    category: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BasePrompt:
        return cls(**data)


@dataclass(frozen=True)
class SteeringExample:
    """One training/evaluation record: the model should answer ``base_prompt`` with ``target``
    (a completion written under the steering prompt, i.e. a teacher target) about ``concept_id``.

    ``finished``: ``True`` when the teacher's answer ended with its own end-of-text token, ``False`` when
    it was cut at a token limit, ``None`` when unknown (older records). Only a finished target is trained
    to end with EOS: a cut-off answer did not end there.
    """

    concept_id: str
    steering_prompt: str
    base_prompt: str
    target: str = ""
    base_prompt_id: str = ""
    finished: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SteeringExample:
        return cls(**data)
