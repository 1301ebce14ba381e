"""The LLM judge: AxBench's three rating prompts answered by any local chat model."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hooksteer.evaluate.base import JudgeScores
from hooksteer.evaluate.judges.text import _concept_string

if TYPE_CHECKING:  # pragma: no cover
    from hooksteer.data.schema import Concept

#: AxBench's concept-relevance prompt (``axbench/evaluators/prompt_templates.py``), verbatim.
AXBENCH_CONCEPT_TEMPLATE = """[System]
Please act as an impartial judge and evaluate whether the specified concept is \
presented in the sentence fragment provided below. Focus solely on whether the concept is \
clearly incorporated, without regard for grammar or logical coherence.

Begin your evaluation by providing a short explanation of whether the concept is \
clearly incorporated. Point out references to the concept in the fragment, noting any \
minimal or awkward incorporations. After providing your explanation, rate the concept's \
relevance on a scale from 0 to 2, where 0 indicates the concept is not present at all, \
1 indicates the concept is somewhat present but minimally or awkwardly incorporated, \
and 2 indicates the concept is more fully and effectively incorporated, with stronger and \
more natural integration. Provide your rating using this exact format: "Rating: [[score]]".

[Concept Start]
{concept}
[Concept End]

[Sentence Fragment Start]
{sentence}
[Sentence Fragment End]
"""

#: AxBench's instruction-relevance prompt, verbatim.
AXBENCH_INSTRUCTION_TEMPLATE = """[System]
Please act as an impartial judge and evaluate whether the \
sentence fragment provided below is related to the instruction. Focus solely \
on the degree of relatedness in terms of topic, regardless of grammar, coherence, or \
informativeness.

Begin your evaluation by providing a brief explanation of whether the \
sentence is related to the instruction, and point out references \
related to the instruction. After providing your explanation, rate the instruction \
relevance on a scale from 0 to 2, where 0 indicates the sentence is unrelated to the \
instruction, 1 indicates it is somewhat related but only minimally or indirectly relevant in terms of topic, \
and 2 indicates it is more clearly and directly related to the instruction. Provide your rating \
using this exact format: "Rating: [[score]]".

[Instruction Start]
{instruction}
[Instruction End]

[Sentence Fragment Start]
{sentence}
[Sentence Fragment End]
"""

#: AxBench's fluency prompt, verbatim.
AXBENCH_FLUENCY_TEMPLATE = """[System]
Please act as an impartial judge and evaluate the fluency of the \
sentence fragment provided below. Focus solely on fluency, disregarding \
its completeness, relevance, coherence with any broader context, or informativeness.

Begin your evaluation by briefly describing the fluency of the sentence, noting any \
unnatural phrasing, awkward transitions, grammatical errors, or repetitive structures that \
may hinder readability. After providing your explanation, rate the sentence's fluency \
on a scale from 0 to 2, where 0 indicates the sentence is not fluent and highly unnatural \
(e.g., incomprehensible or repetitive), 1 indicates it is somewhat fluent but contains noticeable \
errors or awkward phrasing, and 2 indicates the sentence is fluent and almost perfect. \
Provide your rating using this exact format: "Rating: [[score]]".

[Sentence Fragment Start]
{sentence}
[Sentence Fragment End]
"""

_RATING = re.compile(r"Rating:\s*\**\s*\[*\s*\**\s*([0-9]+(?:\.[0-9]+)?)")


def parse_rating(completion: str) -> float | None:
    """The last ``Rating: [[score]]`` in a judge completion, or None when absent/out of 0..2.

    Example:
        >>> parse_rating("The concept is clear. Rating: [[2]]")
        2.0
        >>> parse_rating("Rating: 1.5") , parse_rating("no rating"), parse_rating("Rating: [[7]]")
        (1.5, None, None)
    """
    matches = _RATING.findall(completion or "")
    if not matches:
        return None
    value = float(matches[-1])
    return value if 0.0 <= value <= 2.0 else None


class LLMJudge:
    """AxBench's LLM judge with any local chat model (three prompts per output, batched).

    Args:
        model: a TransformerLens chat model (answers are generated greedily with
            :func:`hooksteer.generation.generate_texts`); or None when ``generate`` is given.
        generate: any ``prompts -> completions`` callable (overrides ``model``).
        max_new_tokens: length of each judge answer (the explanation comes before the rating).
        batch_size: prompts per generation batch.

    Example:
        >>> judge = LLMJudge(generate=lambda prompts: ["Rating: [[2]]"] * len(prompts))
        >>> judge.rate("volcanoes", "Tell me a fact.", ["Volcanoes erupt."])[0].score
        2.0
    """

    name = "llm"

    def __init__(
        self,
        model: Any | None = None,
        *,
        generate: Callable[[list[str]], list[str]] | None = None,
        max_new_tokens: int = 192,
        batch_size: int = 8,
        progress: bool = False,
    ) -> None:
        if model is None and generate is None:
            raise ValueError("LLMJudge needs a chat model or a generate callable")
        self.model = model
        self._generate = generate
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.progress = progress
        self.parse_failures = 0
        self.last_completions: list[str] = []

    def _complete(self, prompts: list[str]) -> list[str]:
        from tqdm.auto import tqdm

        out: list[str] = []
        starts = range(0, len(prompts), self.batch_size)
        for start in tqdm(starts, desc="LLM judge", disable=not self.progress):
            batch = prompts[start : start + self.batch_size]
            if self._generate is not None:
                answers = list(self._generate(batch))
            else:
                from hooksteer.generation import generate_texts

                answers = generate_texts(self.model, batch, max_new_tokens=self.max_new_tokens)
            if len(answers) != len(batch):
                raise RuntimeError(f"judge model returned {len(answers)} answers for {len(batch)} prompts")
            out.extend(answers)
        return out

    def prompts(self, concept: str, instruction: str, output: str) -> tuple[str, str, str]:
        """The three AxBench prompts (concept, instruction, fluency) for one output."""
        return (
            AXBENCH_CONCEPT_TEMPLATE.format(concept=concept, sentence=output),
            AXBENCH_INSTRUCTION_TEMPLATE.format(instruction=instruction, sentence=output),
            AXBENCH_FLUENCY_TEMPLATE.format(sentence=output),
        )

    def _rating(self, completion: str) -> float:
        value = parse_rating(completion)
        if value is None:
            self.parse_failures += 1
            return 0.0
        return value

    def rate(self, concept: str | Concept, instruction: str, outputs: Sequence[str]) -> list[JudgeScores]:
        """One :class:`JudgeScores` per output; unparseable ratings count as 0 (as in AxBench)."""
        concept_text = _concept_string(concept)
        prompts = [p for o in outputs for p in self.prompts(concept_text, instruction, o)]
        completions = self._complete(prompts)
        self.last_completions = completions
        ratings = [self._rating(c) for c in completions]
        return [JudgeScores(*ratings[3 * k : 3 * k + 3]) for k in range(len(outputs))]
