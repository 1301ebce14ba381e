"""Text statistics shared by the judges: repeated bigrams, shuffled words, the concept string."""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from hooksteer.data.schema import Concept

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_ALPHA_WORD = re.compile(r"[^\W\d_]{2,}", re.UNICODE)


def distinct_bigram_ratio(text: str) -> float:
    """Share of distinct word bigrams (1.0 = no repeated bigram). Texts under 3 words give 1.0.

    Example:
        >>> distinct_bigram_ratio("the cat sat on the mat")
        1.0
        >>> round(distinct_bigram_ratio("go go go go go go"), 2)
        0.2
    """
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < 3:
        return 1.0
    bigrams = list(zip(words, words[1:], strict=False))
    return len(set(bigrams)) / len(bigrams)


def shuffle_words(text: str, seed: int = 0) -> str:
    """The words of ``text`` in random order (a degenerate, non-fluent control text)."""
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def _concept_string(concept: str | Concept) -> str:
    if isinstance(concept, str):
        return concept
    from hooksteer.data.concepts import concept_query

    return concept_query(concept)
