"""Teacher targets by prompt steering: sample, judge, keep the best acceptable answer per pair.

A *teacher target* for (concept, base prompt) is what the model itself writes when the steering
prompt is in its context (prompt steering, phrased by :mod:`hooksteer.data.phrasing`), sampled several
times and filtered by a judge (on-concept and fluent). HyperSteer/PSR then learn to reproduce these
targets from activations alone. Targets are cached on disk as JSONL together with the generation
settings; re-running with the same settings reuses every cached pair (only missing pairs are generated).

A small teacher run (3 concepts x 3 prompts, 3 candidates, 48 tokens, default thresholds) accepted
8/27 candidates (30%) and found a target for 5/9 pairs; the 4 misses include all three concepts on a
Python-coding request, where the model writes code and ignores the concept.

The prompt-steering phrasing (:func:`steered_user_message`, :func:`search_phrasing`, ...) lives in
:mod:`hooksteer.data.phrasing` and DiffMean texts (:func:`diffmean_texts`) in
:mod:`hooksteer.data.concepts`; both stay importable from here.

Example:
    >>> result = generate_teacher_targets(model, [(concept, prompt)], EmbeddingJudge())   # doctest: +SKIP
    >>> result.stats["pair_hit_rate"]                                                      # doctest: +SKIP
    0.75
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hooksteer.data.concepts import concept_query, diffmean_texts
from hooksteer.data.phrasing import (
    DEFAULT_STYLE,
    STYLES,
    PhrasingResult,
    _check_style,
    prompt_steered_messages,
    search_phrasing,
    steered_chat_prompt,
    steered_user_message,
)
from hooksteer.data.schema import BasePrompt, Concept, SteeringExample

__all__ = [
    "DEFAULT_STYLE",
    "STYLES",
    "PhrasingResult",
    "TeacherConfig",
    "TeacherResult",
    "diffmean_texts",
    "generate_teacher_targets",
    "prompt_steered_messages",
    "search_phrasing",
    "steered_chat_prompt",
    "steered_user_message",
]


@dataclass(frozen=True)
class TeacherConfig:
    """Generation and filtering settings of teacher targets (all of them enter the cache key)."""

    n_candidates: int = 4
    temperature: float = 0.8
    max_new_tokens: int = 64
    style: str = DEFAULT_STYLE
    phrasing: int = 0  # index into Concept.steering_prompts
    seed: int = 0
    batch_size: int = 16
    min_concept: float = 1.0
    min_fluency: float = 1.0
    min_instruction: float = 0.0

    def __post_init__(self) -> None:
        _check_style(self.style)
        if self.n_candidates < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("n_candidates, batch_size and max_new_tokens must be >= 1")

    def generation_key(self, model_name: str, judge_name: str) -> str:
        """Hash of everything that changes the cached candidates or their scores."""
        payload = json.dumps({**asdict(self), "model": model_name, "judge": judge_name}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]


@dataclass
class TeacherResult:
    """Accepted teacher examples, every record (candidates + scores) and summary statistics."""

    examples: list[SteeringExample]
    records: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


def _judge_id(judge: Any) -> str:
    """The judge's name plus a hash of its calibration (when it has one), so re-calibrating invalidates."""
    name = getattr(judge, "name", type(judge).__name__)
    calibration = getattr(judge, "calibration", None)
    if calibration is not None and hasattr(calibration, "to_dict"):
        digest = hashlib.sha1(json.dumps(calibration.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"{name}-{digest}"
    return str(name)


def _model_name(model: Any) -> str:
    return str(getattr(getattr(model, "cfg", None), "model_name", type(model).__name__))


def _read_cache(path: pathlib.Path | None, key: str) -> dict[tuple[str, str], dict[str, Any]]:
    if path is None or not path.is_file():
        return {}
    cached = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut off by an interrupted run
            continue
        if record.get("key") == key:
            cached[(record["concept_id"], record["base_prompt"])] = record
    return cached


def _append_cache(path: pathlib.Path | None, records: Sequence[dict[str, Any]]) -> None:
    if path is None or not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _choose(scores: list[dict[str, float]], config: TeacherConfig) -> int | None:
    """Index of the best acceptable candidate (by score, then concept), or None."""
    ok = [i for i, s in enumerate(scores) if s["concept"] >= config.min_concept
          and s["fluency"] >= config.min_fluency and s["instruction"] >= config.min_instruction]
    if not ok:
        return None
    return max(ok, key=lambda i: (scores[i]["score"], scores[i]["concept"]))


def _acceptable(score: dict[str, float], config: TeacherConfig) -> bool:
    return _choose([score], config) == 0


def _generate_pairs(
    model: Any, judge: Any, pairs: Sequence[tuple[Concept, BasePrompt]], config: TeacherConfig,
    key: str, batch_seed: int,
) -> list[dict[str, Any]]:
    """Sample ``n_candidates`` answers for each pair in one batch and score them."""
    from hooksteer.generation import generate_texts

    prompts, steering = [], []
    for concept, base in pairs:
        if not -len(concept.steering_prompts) <= config.phrasing < len(concept.steering_prompts):
            raise ValueError(f"concept {concept.id!r} has {len(concept.steering_prompts)} steering prompts; "
                             f"TeacherConfig.phrasing={config.phrasing} is out of range")
        sp = concept.steering_prompts[config.phrasing]
        steering.append(sp)
        prompts.extend([steered_chat_prompt(model, sp, base.text, config.style)] * config.n_candidates)
    outputs = generate_texts(model, prompts, chat=False, do_sample=True, temperature=config.temperature,
                             max_new_tokens=config.max_new_tokens, seed=batch_seed)
    records = []
    for k, (concept, base) in enumerate(pairs):
        candidates = outputs[k * config.n_candidates : (k + 1) * config.n_candidates]
        scores = [s.to_dict() for s in judge.rate(concept_query(concept), base.text, candidates)]
        records.append({
            "key": key, "concept_id": concept.id, "base_prompt_id": base.id, "base_prompt": base.text,
            "steering_prompt": steering[k], "candidates": candidates, "scores": scores,
            "accepted": _choose(scores, config), "settings": asdict(config),
            "model": _model_name(model), "judge": _judge_id(judge),
        })
    return records


def _stats(records: Sequence[dict[str, Any]], config: TeacherConfig, n_reused: int, seconds: float) -> dict[str, Any]:
    n_candidates = sum(len(r["candidates"]) for r in records)
    n_ok = sum(_acceptable(s, config) for r in records for s in r["scores"])
    n_pairs_ok = sum(r["accepted"] is not None for r in records)
    return {
        "n_pairs": len(records), "n_reused_from_cache": n_reused, "n_candidates": n_candidates,
        "candidate_hit_rate": n_ok / max(n_candidates, 1), "pair_hit_rate": n_pairs_ok / max(len(records), 1),
        "n_pairs_without_target": len(records) - n_pairs_ok, "seconds": round(seconds, 1),
    }


def _example(record: dict[str, Any]) -> SteeringExample:
    return SteeringExample(concept_id=record["concept_id"], steering_prompt=record["steering_prompt"],
                           base_prompt=record["base_prompt"], target=record["candidates"][record["accepted"]],
                           base_prompt_id=record.get("base_prompt_id", ""))


def _batch_seed(seed: int, batch: Sequence[tuple[Concept, BasePrompt]]) -> int:
    """A sampling seed that depends on the run seed and the batch's first pair (not on batch order)."""
    first = f"{batch[0][0].id}|{batch[0][1].text}"
    return seed * 1_000_003 + int(hashlib.sha1(first.encode()).hexdigest()[:6], 16)


def generate_teacher_targets(
    model: Any,
    pairs: Sequence[tuple[Concept, BasePrompt]],
    judge: Any,
    config: TeacherConfig | None = None,
    *,
    cache_path: str | pathlib.Path | None = None,
    progress: bool = True,
) -> TeacherResult:
    """Teacher targets by prompt steering: sample, judge, keep the best acceptable candidate per pair.

    Args:
        model: the (unsteered) TransformerLens chat model that writes the targets.
        pairs: (concept, base prompt) pairs, e.g. train concepts x train prompts of a split.
        judge: anything with ``name`` and ``rate(concept, instruction, outputs)`` (e.g. EmbeddingJudge).
        config: generation/filter settings (:class:`TeacherConfig`).
        cache_path: JSONL file; records whose settings key matches are reused, new ones appended.

    Returns:
        :class:`TeacherResult` with one :class:`SteeringExample` per pair that has an acceptable
        candidate, all records, and ``stats`` (candidate/pair hit rates, pairs without a target).

    Example:
        >>> result = generate_teacher_targets(model, [(concept, prompt)], EmbeddingJudge(),  # doctest: +SKIP
        ...                                   cache_path="data/teacher.jsonl")
        >>> result.stats["pair_hit_rate"]
        0.75
    """
    from tqdm.auto import tqdm

    config = config or TeacherConfig()
    start = time.time()
    key = config.generation_key(_model_name(model), _judge_id(judge))
    path = pathlib.Path(cache_path) if cache_path is not None else None
    cached = _read_cache(path, key)
    todo = [(c, b) for c, b in pairs if (c.id, b.text) not in cached]
    per_batch = max(1, config.batch_size // config.n_candidates)
    batches = [todo[i : i + per_batch] for i in range(0, len(todo), per_batch)]
    for batch in tqdm(batches, desc="teacher targets", disable=not progress):
        new = _generate_pairs(model, judge, batch, config, key, _batch_seed(config.seed, batch))
        _append_cache(path, new)
        cached.update({(r["concept_id"], r["base_prompt"]): r for r in new})
    records = [cached[(c.id, b.text)] for c, b in pairs]
    examples = [_example(r) for r in records if r["accepted"] is not None]
    return TeacherResult(examples, records, _stats(records, config, len(pairs) - len(todo), time.time() - start))

