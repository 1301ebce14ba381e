"""Prompt steering's user turn: where the steering prompt goes, and the search for the best phrasing.

:func:`steered_user_message` / :func:`prompt_steered_messages` / :func:`steered_chat_prompt` write the
steering prompt into the chat (teachers, distillation and the prompting baseline all use them);
:func:`search_phrasing` measures which steering template and placement a model follows best.

Measured on the embedded SmolLM2-135M-Instruct: it ignores weak phrasings (a system message "Always
mention X": 0/10 greedy answers mention X) but follows a strong user-turn phrasing
"Write about X. <request> Every tip must be about X." sampled at T=0.8 in 15/20 answers. Hence the
default ``style="split"``: the first sentence of the steering prompt goes before the request, the
rest after it (see :func:`steered_user_message`), and sampling + judge filtering.

:func:`search_phrasing` on SmolLM2-135M-Instruct (3 concepts x 2 hand-written requests x 2 samples,
T=0.8, 40 new tokens, EmbeddingJudge concept score; 2026-11-23) confirmed this order - mean concept
score (share of answers with concept score >= 1):

=====================================================================  ===========  ===========  ==========
template                                                               split        prefix       system
=====================================================================  ===========  ===========  ==========
"Write about {title}. Every sentence must be about {title}."            1.29 (8/12)  0.36 (2/12)  0.00 (0/12)
"Mention {about} in every answer."                                     0.90 (6/12)  0.13 (1/12)  0.00 (0/12)
"Always talk about {title}, whatever the question is."                  0.34 (2/12)  0.21 (2/12)  0.00 (0/12)
=====================================================================  ===========  ===========  ==========

Example:
    >>> steered_user_message("Write about Volcano. Every sentence must be about Volcano.",
    ...                      "Give me three tips for sleeping better.")
    'Write about Volcano. Give me three tips for sleeping better. Every sentence must be about Volcano.'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hooksteer.data.concepts import STEERING_TEMPLATES, concept_query
from hooksteer.data.schema import BasePrompt, Concept

__all__ = [
    "DEFAULT_STYLE",
    "STYLES",
    "PhrasingResult",
    "prompt_steered_messages",
    "search_phrasing",
    "steered_chat_prompt",
    "steered_user_message",
    "with_background",
]

#: Where the steering prompt goes. ``split``: first sentence before the request, the rest after it
#: (a one-sentence prompt goes before and is repeated after); ``prefix``: before the request;
#: ``suffix``: after it; ``system``: in the system message (user turn = the plain request).
STYLES: tuple[str, ...] = ("split", "prefix", "suffix", "system")
#: The style SmolLM2-135M-Instruct follows best (see the module docstring and :func:`search_phrasing`).
DEFAULT_STYLE = "split"

_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])\s+(.+)$", re.S)


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown steering style {style!r}; choose from {list(STYLES)}")


def steered_user_message(steering_prompt: str, base_prompt: str, style: str = DEFAULT_STYLE) -> str:
    """The user-turn text that carries the steering prompt (used by teachers and the prompting baseline).

    For ``style="system"`` the steering prompt is not in the user turn, so the plain ``base_prompt``
    is returned; use :func:`prompt_steered_messages` to get the system message too.

    Example:
        >>> steered_user_message("Mention cats in every answer.", "Tell me a fact.", "prefix")
        'Mention cats in every answer.\\n\\nTell me a fact.'
        >>> steered_user_message("Mention cats in every answer.", "Tell me a fact.", "split")
        'Mention cats in every answer. Tell me a fact. Mention cats in every answer.'
    """
    _check_style(style)
    steer, base = steering_prompt.strip(), base_prompt.strip()
    if not steer or not base:
        raise ValueError("steering_prompt and base_prompt must be non-empty")
    if style == "prefix":
        return f"{steer}\n\n{base}"
    if style == "suffix":
        return f"{base}\n\n{steer}"
    if style == "system":
        return base
    match = _FIRST_SENTENCE.match(steer)
    head, tail = (match.group(1), match.group(2)) if match else (steer, steer)
    return f"{head} {base} {tail}"


def with_background(reference_text: str, user_message: str, max_chars: int = 600) -> str:
    """``user_message`` preceded by a concept's reference text (cut to ``max_chars``): what the ``reference_text``
    distillation teacher reads, and prompt steering with that background (``PromptSteering(background_chars=...)``).
    An empty reference text leaves the message as it is.

    Example:
        >>> with_background("Cats are small felines.", "Mention cats. Hi! Mention cats.")
        'Background: Cats are small felines.\\n\\nMention cats. Hi! Mention cats.'
    """
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise ValueError(f"max_chars must be a positive integer, got {max_chars!r}")
    reference = reference_text.strip()[:max_chars]
    return f"Background: {reference}\n\n{user_message}" if reference else user_message


def prompt_steered_messages(steering_prompt: str, base_prompt: str, style: str = DEFAULT_STYLE) -> list[dict[str, str]]:
    """Chat messages for prompt steering (a system message only for ``style="system"``).

    Example:
        >>> prompt_steered_messages("Mention cats.", "Hi!", "system")
        [{'role': 'system', 'content': 'Mention cats.'}, {'role': 'user', 'content': 'Hi!'}]
    """
    user = steered_user_message(steering_prompt, base_prompt, style)
    messages = [{"role": "system", "content": steering_prompt.strip()}] if style == "system" else []
    return [*messages, {"role": "user", "content": user}]


def steered_chat_prompt(model: Any, steering_prompt: str, base_prompt: str, style: str = DEFAULT_STYLE) -> str:
    """The full chat-template string (ending with the assistant turn) for prompt steering."""
    from hooksteer.models import format_chat

    messages = prompt_steered_messages(steering_prompt, base_prompt, style)
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    return format_chat(model, messages[-1]["content"], system=system)



@dataclass
class PhrasingResult:
    """Outcome of :func:`search_phrasing`: the best (template, style) and the mean concept score of all."""

    template: str
    style: str
    table: list[dict[str, Any]]


def _apply_template(template: str, concept: Concept) -> str:
    about = f"{concept.title} ({concept.description})" if concept.description else concept.title
    return template.format(title=concept.title, about=about)


def _concept_scores(judge: Any, cells: Sequence[tuple[Concept, BasePrompt]], outputs: Sequence[str]) -> list[float]:
    """The judge's concept score of each output (``judge.concept_scores`` when available: cheaper)."""
    scores = []
    for (concept, base), output in zip(cells, outputs, strict=True):
        if hasattr(judge, "concept_scores"):
            scores.extend(judge.concept_scores(concept_query(concept), [output]))
        else:
            scores.append(judge.rate(concept_query(concept), base.text, [output])[0].concept)
    return scores


def search_phrasing(
    model: Any,
    concepts: Sequence[Concept],
    base_prompts: Sequence[BasePrompt],
    judge: Any,
    *,
    templates: Sequence[str] = STEERING_TEMPLATES,
    styles: Sequence[str] = ("split", "prefix", "system"),
    n_samples: int = 2,
    temperature: float = 0.8,
    max_new_tokens: int = 48,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> PhrasingResult:
    """Find the steering-prompt phrasing and placement the model follows best on a small dev set.

    Every (template, style) is tried on all concepts x base prompts with ``n_samples`` sampled
    answers each; the criterion is the judge's mean concept score (``judge.concept_scores`` when
    the judge has it, else ``judge.rate``).

    Example:
        >>> res = search_phrasing(model, concepts[:4], prompts[:3], EmbeddingJudge())   # doctest: +SKIP
        >>> res.template, res.style
        ('Write about {title}. Every sentence must be about {title}.', 'split')
    """
    from tqdm.auto import tqdm

    from hooksteer.generation import generate_texts

    table = []
    grid = [(t, s) for t in templates for s in styles]
    cells = [(c, b) for c in concepts for b in base_prompts for _ in range(n_samples)]
    for template, style in tqdm(grid, desc="phrasings", disable=not progress):
        prompts = [steered_chat_prompt(model, _apply_template(template, c), b.text, style) for c, b in cells]
        outputs: list[str] = []
        for start in range(0, len(prompts), batch_size):
            outputs += generate_texts(model, prompts[start : start + batch_size], chat=False, do_sample=True,
                                      temperature=temperature, max_new_tokens=max_new_tokens, seed=seed + start)
        scores = _concept_scores(judge, cells, outputs)
        table.append({"template": template, "style": style, "mean_concept": sum(scores) / max(len(scores), 1),
                      "hit_rate": sum(s >= 1.0 for s in scores) / max(len(scores), 1), "n": len(scores),
                      "examples": outputs[:2]})
    best = max(table, key=lambda row: row["mean_concept"])
    return PhrasingResult(template=best["template"], style=best["style"], table=table)

