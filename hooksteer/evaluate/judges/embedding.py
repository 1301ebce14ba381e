"""The embedding judge: concept and instruction relevance from MiniLM embeddings, fluency from perplexity."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hooksteer.evaluate.base import JudgeScores
from hooksteer.evaluate.judges.calibration import DEFAULT_CALIBRATION, JudgeCalibration
from hooksteer.evaluate.judges.embedder import MiniLMEmbedder
from hooksteer.evaluate.judges.perplexity import PerplexityFn, default_perplexity
from hooksteer.evaluate.judges.text import _ALPHA_WORD, _concept_string, distinct_bigram_ratio, shuffle_words

if TYPE_CHECKING:  # pragma: no cover
    from hooksteer.data.schema import Concept


class EmbeddingJudge:
    """Offline AxBench-style judge (what each score measures: the :mod:`hooksteer.evaluate.judges` docstring).

    Args:
        calibration: thresholds (default :data:`DEFAULT_CALIBRATION`, or a path to a saved JSON).
        embedder: a :class:`MiniLMEmbedder` (created lazily by default) or anything with ``encode``.
        perplexity: fluency scorer, any ``texts -> per-token perplexities`` callable; by default the
            unsteered embedded SmolLM2 (:func:`default_perplexity`), loaded on first use.

    Example:
        >>> judge = EmbeddingJudge()                                     # doctest: +SKIP
        >>> judge.rate("Volcano (geological feature)", "Tell me a fun fact.", ["Volcanoes erupt lava."])
        [JudgeScores(concept=..., instruction=..., fluency=...)]
    """

    name = "embedding"
    #: Outputs with fewer alphabetic words than this get fluency 0.
    min_words = 3

    def __init__(
        self,
        calibration: JudgeCalibration | str | pathlib.Path | None = None,
        *,
        embedder: Any | None = None,
        perplexity: PerplexityFn | None = None,
    ) -> None:
        if isinstance(calibration, str | pathlib.Path):
            calibration = JudgeCalibration.load(calibration)
        self.calibration = calibration or DEFAULT_CALIBRATION
        self._embedder = embedder
        self._perplexity = perplexity

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            self._embedder = MiniLMEmbedder()
        return self._embedder

    @property
    def perplexity(self) -> PerplexityFn:
        if self._perplexity is None:
            self._perplexity = default_perplexity()
        return self._perplexity

    # ---- raw quantities ---------------------------------------------------------------------------
    def similarities(self, reference: str, outputs: Sequence[str]) -> list[float]:
        """Cosine similarity of each output's embedding with ``reference``'s."""
        if not outputs:
            return []
        ref = self.embedder.encode_cached(reference) if hasattr(self.embedder, "encode_cached") \
            else self.embedder.encode([reference])[0]
        return (self.embedder.encode(list(outputs)) @ ref).tolist()

    def ppl_gaps(self, texts: Sequence[str]) -> list[float]:
        """``log ppl(shuffled words) - log ppl(text)`` per text (one batched scorer call)."""
        shuffled = [shuffle_words(t, seed=0) for t in texts]
        ppls = self.perplexity([*texts, *shuffled])
        gaps = []
        for real, shuf in zip(ppls[: len(texts)], ppls[len(texts) :], strict=True):
            ok = all(math.isfinite(v) and v > 0 for v in (real, shuf))
            gaps.append(math.log(shuf) - math.log(real) if ok else float("nan"))
        return gaps

    def fluency_scores(self, outputs: Sequence[str]) -> list[float]:
        """Calibrated fluency: min(perplexity-gap score, repetition score); 0 for outputs with fewer than
        :attr:`min_words` words (empty, or bare list markers such as ``"1.\\n2.\\n3."``)."""
        texts = [o.strip() for o in outputs]
        repetition = [self.calibration.repetition(distinct_bigram_ratio(t)) for t in texts]
        # Texts already at 0 (too short or repetitive) skip the language model.
        needs_lm = [len(_ALPHA_WORD.findall(t)) >= self.min_words and r > 0 for t, r in zip(texts, repetition, strict=True)]
        gaps = iter(self.ppl_gaps([t for t, n in zip(texts, needs_lm, strict=True) if n]) if any(needs_lm) else [])
        return [min(self.calibration.ppl_gap(next(gaps)), r) if n else 0.0
                for r, n in zip(repetition, needs_lm, strict=True)]

    # ---- Judge protocol ---------------------------------------------------------------------------
    def rate(self, concept: str | Concept, instruction: str, outputs: Sequence[str]) -> list[JudgeScores]:
        """One :class:`JudgeScores` per output (batched over ``outputs``)."""
        outputs = list(outputs)
        concept_sims = self.similarities(_concept_string(concept), outputs)
        instruction_sims = self.similarities(instruction, outputs)
        fluency = self.fluency_scores(outputs)
        results = []
        for text, c, i, f in zip(outputs, concept_sims, instruction_sims, fluency, strict=True):
            if not text.strip():
                results.append(JudgeScores(0.0, 0.0, 0.0))
                continue
            results.append(JudgeScores(concept=self.calibration.concept(c),
                                       instruction=self.calibration.instruction(i), fluency=f))
        return results

    def concept_scores(self, concept: str | Concept, outputs: Sequence[str]) -> list[float]:
        """Calibrated concept scores only (cheap: no perplexity model)."""
        return [self.calibration.concept(s) for s in self.similarities(_concept_string(concept), outputs)]
