"""Which texts a method reads for a concept: the judge's reference, on-concept sentences, contrast sets.

:func:`default_texts_for` (the concept's sentences vs the other concepts') and :func:`pool_texts_for`
(negatives from a fixed pool) are the ``texts_for`` of the vector methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hooksteer.data.schema import Concept

TextsFor = Callable[[Concept, Sequence[Concept]], tuple[list[str], list[str]]]


def concept_reference(concept: Concept) -> str:
    """What the judge compares outputs with: ``hooksteer.data.concepts.concept_query`` when available."""
    try:
        from hooksteer.data.concepts import concept_query
    except ImportError:
        return f"{concept.title} ({concept.description})" if concept.description else concept.title
    return concept_query(concept)


def concept_sentences(concept: Concept) -> list[str]:
    """On-concept sentences: ``hooksteer.data.concepts.concept_texts`` (the concept's reference text split
    into sentences) when available, else the title and description."""
    texts: list[str] = []
    try:
        from hooksteer.data.concepts import concept_texts
        texts = list(concept_texts(concept))
    except ImportError:
        pass
    if not texts:
        texts = [t for t in (getattr(concept, "text", ""), concept.description, concept.title) if t and t.strip()]
    return texts


def default_texts_for(concept: Concept, others: Sequence[Concept], *, max_texts: int = 32) -> tuple[list[str], list[str]]:
    """DiffMean/PCA contrast: the concept's sentences vs sentences of the other concepts (AxBench-style).

    Negatives take the first sentence of each other concept in turn until ``max_texts``.

    Example:
        >>> a = Concept(id="a", title="Apple", description="a fruit")
        >>> b = Concept(id="b", title="Bridge", description="a structure")
        >>> default_texts_for(a, [b])
        (['a fruit', 'Apple'], ['a structure', 'Bridge'])
    """
    positive = concept_sentences(concept)[:max_texts]
    if not positive:
        raise ValueError(f"concept {concept.id!r} has no text to build a vector from")
    pools = [concept_sentences(other) for other in others if other.id != concept.id]
    negative = _round_robin([p for p in pools if p], max_texts)
    if not negative:
        raise ValueError(f"no other concepts to contrast {concept.id!r} with: vector methods need at least two concepts")
    return positive, negative


def pool_texts_for(pool: Sequence[Concept], *, max_texts: int = 32) -> TextsFor:
    """A ``texts_for`` whose negatives come from a fixed pool of concepts (minus the concept itself),
    so vector methods get the same negatives however few concepts are evaluated.

    Example:
        >>> a, b = Concept(id="a", title="Apple"), Concept(id="b", title="Bridge")
        >>> pool_texts_for([a, b])(a, [])
        (['Apple'], ['Bridge'])
    """
    pool = list(pool)

    def texts_for(concept: Concept, others: Sequence[Concept]) -> tuple[list[str], list[str]]:
        return default_texts_for(concept, pool, max_texts=max_texts)

    texts_for.__name__ = f"pool_texts_for({len(pool)} concepts)"
    return texts_for


def _round_robin(pools: list[list[str]], limit: int) -> list[str]:
    picked: list[str] = []
    depth = 0
    while len(picked) < limit and any(depth < len(p) for p in pools):
        picked.extend(p[depth] for p in pools if depth < len(p))
        depth += 1
    return picked[:limit]
