"""One distillation example, and a set of them with the statistics of how they were made.

Example:
    >>> import torch
    >>> record = DistillRecord("volcano", "Write about Volcano.", "Tell me a fact.", "p1", "Lava is hot.",
    ...                        torch.tensor([5, 6, 2]), True, torch.zeros(3, 4, dtype=torch.int32), torch.zeros(3, 4))
    >>> record.n_tokens, record.top_k
    (3, 4)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooksteer.data.schema import SteeringExample

__all__ = ["DistillData", "DistillRecord"]


@dataclass
class DistillRecord:
    """The teacher's next-token distribution along one response, for one (concept, base prompt) pair.

    ``teacher_ids[t]`` / ``teacher_logprobs[t]`` are the teacher's top-k tokens and log-probabilities for the
    token ``response_ids[t]`` (teacher forcing on the prompted context). The student reads the *unsteered*
    base prompt followed by ``response_ids``. ``finished``: the answer ended with the model's own
    end-of-text token (the last response id); ``False`` means it was cut at ``max_new_tokens``.
    """

    concept_id: str
    steering_prompt: str
    base_prompt: str
    base_prompt_id: str
    response: str
    response_ids: Int[Tensor, " pos"]
    finished: bool
    teacher_ids: Int[Tensor, "pos k"]
    teacher_logprobs: Float[Tensor, "pos k"]

    def __post_init__(self) -> None:
        n = int(self.response_ids.shape[0])
        if self.response_ids.ndim != 1 or n < 1:
            raise ValueError(f"response_ids must be a non-empty 1-D tensor, got shape {tuple(self.response_ids.shape)}")
        if self.teacher_ids.shape != self.teacher_logprobs.shape or self.teacher_ids.ndim != 2:
            raise ValueError("teacher_ids and teacher_logprobs must both have shape (n_tokens, k)")
        if int(self.teacher_ids.shape[0]) != n:
            raise ValueError(f"{n} response tokens but teacher distributions for {self.teacher_ids.shape[0]} positions")
        if not bool(torch.isfinite(self.teacher_logprobs).all()):
            raise ValueError("teacher_logprobs contain NaN or infinity")

    @property
    def n_tokens(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.teacher_ids.shape[1])

    def to_steering_example(self) -> SteeringExample:
        """The response as a cross-entropy target (``finished`` says whether it may end with EOS)."""
        return SteeringExample(concept_id=self.concept_id, steering_prompt=self.steering_prompt,
                               base_prompt=self.base_prompt, target=self.response,
                               base_prompt_id=self.base_prompt_id, finished=self.finished)


@dataclass
class DistillData:
    """Distillation records (in the order of the requested pairs) and how they were made.

    ``stats`` holds ``n_pairs``, ``n_reused_from_cache``, ``seconds``, ``tokens_per_second`` (tokens generated
    plus tokens read by the teacher, new records only), ``seconds_per_pair``, ``finished_fraction`` and
    ``mean_response_tokens``.
    """

    records: list[DistillRecord]
    config: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[DistillRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> DistillRecord:
        return self.records[index]

    def concept_ids(self) -> list[str]:
        """Distinct concept ids, in first-seen order."""
        return list(dict.fromkeys(r.concept_id for r in self.records))

    def select(self, concept_ids: Iterable[str]) -> DistillData:
        """Only the records of these concepts (same order as before)."""
        wanted = set(concept_ids)
        return DistillData([r for r in self.records if r.concept_id in wanted], dict(self.config), dict(self.stats))

    def steering_examples(self) -> list[SteeringExample]:
        return [r.to_steering_example() for r in self.records]


def concat(parts: Sequence[DistillData]) -> DistillData:
    """All records of several :class:`DistillData` (the first one's config)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    return DistillData([r for part in parts for r in part.records], dict(parts[0].config), {})
