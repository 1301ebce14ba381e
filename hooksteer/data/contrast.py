"""Small HAND-WRITTEN contrast sets for demos and smoke tests (not real-world data).

Each set is a list of (positive, negative) sentence pairs that differ in one behaviour.
They were written for this repository to make a first DiffMean vector; use the packaged
corpora in :mod:`hooksteer.data` for experiments that claim anything about real text.

Example:
    >>> from hooksteer.data.contrast import contrast_texts
    >>> positive, negative = contrast_texts("love_hate")
    >>> len(positive) == len(negative)
    True
"""

from __future__ import annotations

LOVE_HATE: list[tuple[str, str]] = [
    ("I love spending time with my friends.", "I hate spending time with my friends."),
    ("I love this city, it feels like home.", "I hate this city, it feels like a prison."),
    ("What a wonderful day, I adore it.", "What a miserable day, I despise it."),
    ("I love my job and the people I work with.", "I hate my job and the people I work with."),
    ("This song fills me with joy.", "This song fills me with disgust."),
    ("I love the smell of fresh bread in the morning.", "I hate the smell of fresh bread in the morning."),
    ("My family means the world to me, I love them.", "My family annoys me, I can't stand them."),
    ("I really enjoy reading books by the fire.", "I really loathe reading books by the fire."),
    ("The gift was lovely and made me so happy.", "The gift was awful and made me so angry."),
    ("I love walking my dog in the park.", "I hate walking my dog in the park."),
    ("She is kind and I love her company.", "She is cruel and I hate her company."),
    ("We had a delightful dinner together.", "We had a dreadful dinner together."),
    ("I cherish every moment of this holiday.", "I resent every moment of this holiday."),
    ("Thank you, I absolutely love it!", "Ugh, I absolutely hate it!"),
    ("The garden looks beautiful, I love it.", "The garden looks hideous, I hate it."),
    ("Learning new things makes me happy.", "Learning new things makes me furious."),
]

_SETS: dict[str, list[tuple[str, str]]] = {"love_hate": LOVE_HATE}


def contrast_texts(name: str) -> tuple[list[str], list[str]]:
    """Positive and negative texts of a named hand-written contrast set."""
    if name not in _SETS:
        raise KeyError(f"unknown contrast set {name!r}; available: {sorted(_SETS)}")
    pairs = _SETS[name]
    return [p for p, _ in pairs], [n for _, n in pairs]


def available_contrast_sets() -> list[str]:
    return sorted(_SETS)
