"""Settings of a prompt-steering distillation teacher (all of them enter the cache key).

Example:
    >>> cfg = DistillConfig(top_k=16, max_new_tokens=24)
    >>> DistillConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> len(cfg.key({"model_name": "m", "d_vocab": 10}))
    16
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

#: Whose answer the student is taught on: the prompt-steered model's own greedy answer (default), or the
#: unsteered model's greedy answer (the teacher still reads the steering prompt; only y changes).
RESPONSES: tuple[str, ...] = ("prompted", "unsteered")
#: What the teacher reads besides the base prompt: the steering prompt, or the steering prompt after the
#: concept's reference text (e.g. its Wikipedia intro), which may let a vector exceed plain prompting.
TEACHER_CONTEXTS: tuple[str, ...] = ("steering_prompt", "reference_text")


class DistillConfigError(ValueError):
    """A distillation setting is invalid."""


@dataclass(frozen=True)
class DistillConfig:
    """How distillation targets are made (see :mod:`hooksteer.distill`).

    Args:
        response: ``"prompted"`` (the prompt-steered model's greedy answer) or ``"unsteered"``.
        teacher_context: ``"steering_prompt"`` or ``"reference_text"`` (concept text, then steering prompt).
        max_new_tokens: length limit of the response y (an answer cut here is *not* marked finished).
        top_k: teacher log-probs kept per position (the rest of the vocabulary is one "tail" bucket, so the
            stored distribution still sums to 1 and the KL is exact on that partition).
        style: where the steering prompt goes in the teacher's user turn
            (:data:`hooksteer.data.teacher.STYLES`).
        phrasing: index into ``Concept.steering_prompts``.
        max_reference_chars: reference text is cut to this many characters.
        batch_size: (concept, prompt) pairs per generation / teacher batch.
    """

    response: str = "prompted"
    teacher_context: str = "steering_prompt"
    max_new_tokens: int = 32
    top_k: int = 32
    style: str = "split"
    phrasing: int = 0
    max_reference_chars: int = 600
    batch_size: int = 16

    def __post_init__(self) -> None:
        from hooksteer.data.teacher import STYLES

        if self.response not in RESPONSES:
            raise DistillConfigError(f"response must be one of {RESPONSES}, got {self.response!r}")
        if self.teacher_context not in TEACHER_CONTEXTS:
            raise DistillConfigError(f"teacher_context must be one of {TEACHER_CONTEXTS}, got {self.teacher_context!r}")
        if self.style not in STYLES:
            raise DistillConfigError(f"style must be one of {STYLES}, got {self.style!r}")
        for name in ("max_new_tokens", "top_k", "batch_size", "max_reference_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DistillConfigError(f"{name} must be an integer >= 1, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Build from a dict, rejecting unknown keys with the list of valid ones."""
        if not isinstance(data, dict):
            raise DistillConfigError(f"a DistillConfig must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DistillConfigError(f"unknown DistillConfig field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**data)

    def key(self, model_signature: dict[str, Any]) -> str:
        """Hash of everything that changes a cached record: these settings (not ``batch_size``) and the model."""
        settings = {k: v for k, v in self.to_dict().items() if k != "batch_size"}  # batching changes no record
        payload = json.dumps({"config": settings, "model": model_signature}, sort_keys=True, default=str)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]
