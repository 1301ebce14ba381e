"""AxBench-style evaluation: factor sweep, factor chosen on half of the base prompts, reported on the other half.

For every method and concept:

1. the base prompts are split in two by a seeded shuffle (:func:`split_prompts`, deterministic per
   ``(seed, concept)``): a *selection* half and a *report* half;
2. the method generates an answer for every prompt at every steering factor (one batched sweep;
   methods without a factor, such as prompt steering, generate once);
3. the judge rates each answer (concept, instruction relevance, fluency; score = harmonic mean);
4. the factor with the best mean score on the **selection** half is chosen (ties, e.g. all 0: the best
   mean of the three ratings, then the first factor; see :func:`choose_factor`), and the **report**
   half's ratings at that factor are the concept's result;
5. a (concept, factor) cell is flagged as *mode collapse* when ≥ 95% of its outputs are identical.

All generations and ratings are kept; :meth:`EvaluationResult.save` writes ``results.json``,
``generations.json``, ``results.md`` (markdown table) and ``factor_sweep.png``.

Example:
    >>> from hooksteer.evaluate.methods import DiffMeanMethod, PromptSteering     # doctest: +SKIP
    >>> result = evaluate(model, [PromptSteering(), DiffMeanMethod()], concepts, prompts,  # doctest: +SKIP
    ...                   factors=[0.25, 0.5, 1.0], judge=judge, out_dir="runs/eval")
    >>> print(result.to_markdown())                                                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from hooksteer.data.schema import BasePrompt, Concept
from hooksteer.evaluate.base import Judge, JudgeScores
from hooksteer.evaluate.methods import (
    ConceptSteerer,
    Factor,
    GenerationSettings,
    SteeringMethod,
    concept_reference,
    derive_seed,
)
from hooksteer.evaluate.methods.common import check_factors  # noqa: F401 - importable from here too
from hooksteer.evaluate.result import (  # noqa: F401 - load_results also importable from here
    SCORE_FIELDS,
    ConceptResult,
    EvaluationResult,
    FactorCell,
    Generation,
    _mean,
    load_results,
)

#: AxBench's 14 steering factors.
AXBENCH_FACTORS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0)
#: Default sweep for ``magnitude="resid_norm"`` (factor 1 = a vector as long as the residual stream). On
#: SmolLM2-135M-Instruct (layer 10, residual norm ~140) greedy outputs stay fluent up to ~0.3 and turn to
#: noise from ~0.5, so the sweep is denser at the low end.
DEFAULT_FACTORS: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8)
#: A cell whose most common output makes up at least this share of its outputs is a mode collapse.
COLLAPSE_THRESHOLD = 0.95
PromptSource = Sequence[BasePrompt] | Mapping[str, Sequence[BasePrompt]]


# ---------------------------------------------------------------------------- validation and splits
def split_prompts(prompts: Sequence[BasePrompt], seed: int, concept_id: str) -> tuple[list[BasePrompt], list[BasePrompt]]:
    """Deterministic (selection, report) halves of ``prompts`` for one concept (selection gets ``n // 2``).

    Example:
        >>> ps = [BasePrompt(id=str(i), text=f"Question {i}?") for i in range(4)]
        >>> sel, rep = split_prompts(ps, seed=0, concept_id="volcano")
        >>> len(sel), len(rep), sorted(p.id for p in sel + rep)
        (2, 2, ['0', '1', '2', '3'])
    """
    if len(prompts) < 2:
        raise ValueError(f"need at least 2 base prompts per concept (one per half), got {len(prompts)}")
    order = list(range(len(prompts)))
    random.Random(f"{seed}:{concept_id}").shuffle(order)
    n_selection = len(prompts) // 2
    return [prompts[i] for i in order[:n_selection]], [prompts[i] for i in order[n_selection:]]


def _prompts_for(base_prompts: PromptSource, concept: Concept) -> list[BasePrompt]:
    if isinstance(base_prompts, Mapping):
        if concept.id not in base_prompts:
            raise KeyError(f"no base prompts given for concept {concept.id!r}")
        prompts = list(base_prompts[concept.id])
    else:
        prompts = list(base_prompts)
    if len({p.id for p in prompts}) != len(prompts):
        raise ValueError(f"base prompt ids must be unique (concept {concept.id!r})")
    return prompts


def _check_inputs(methods: Sequence[SteeringMethod], concepts: Sequence[Concept]) -> None:
    if not methods:
        raise ValueError("methods is empty: give at least one steering method")
    if not concepts:
        raise ValueError("concepts is empty: give at least one concept")
    for label, names in (("method", [m.name for m in methods]), ("concept", [c.id for c in concepts])):
        if len(set(names)) != len(names):
            raise ValueError(f"{label} names must be unique, got {names}")


# ---------------------------------------------------------------------------- scoring helpers
def mode_collapse(outputs: Sequence[str], threshold: float = COLLAPSE_THRESHOLD) -> tuple[bool, float]:
    """``(collapsed, share)``: share of the most common output; collapsed when ``share >= threshold``
    (needs at least 2 outputs).

    Example:
        >>> mode_collapse(["the the the"] * 19 + ["hello"])
        (True, 0.95)
        >>> mode_collapse(["a", "b"])
        (False, 0.5)
    """
    if not outputs:
        return False, 0.0
    share = Counter(o.strip() for o in outputs).most_common(1)[0][1] / len(outputs)
    return (len(outputs) >= 2 and share >= threshold), share


def choose_factor(cells: Sequence[FactorCell]) -> FactorCell:
    """The cell with the best mean **selection-half** score.

    Ties (most often: every factor scores 0, because the harmonic mean is 0 as soon as one rating is 0)
    are broken by the mean of the three selection-half ratings (concept, instruction, fluency), then by
    the order of the factors (first wins). So a method that never reaches a non-zero score still reports
    the factor where it came closest, not merely the first one.

    Example:
        >>> zero = {"concept": 0.0, "instruction": 2.0, "fluency": 2.0, "score": 0.0}
        >>> close = {"concept": 1.0, "instruction": 2.0, "fluency": 0.0, "score": 0.0}
        >>> cells = [FactorCell(0.1, zero, zero, False, 0.1), FactorCell(0.2, close, close, False, 0.1)]
        >>> choose_factor(cells).factor
        0.1
        >>> close["fluency"] = 1.5
        >>> choose_factor(cells).factor
        0.2
    """
    if not cells:
        raise ValueError("no factor cells to choose from")

    def key(i: int) -> tuple[float, float, int]:
        ratings = cells[i].selection
        mean_rating = sum(ratings[k] for k in ("concept", "instruction", "fluency")) / 3
        return (_finite_or(ratings["score"], -1.0), _finite_or(mean_rating, -1.0), -i)

    return cells[max(range(len(cells)), key=key)]


def _finite_or(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


def _mean_scores(generations: Sequence[Generation]) -> dict[str, float]:
    return {key: _mean([getattr(g, key) for g in generations]) for key in SCORE_FIELDS}


def _rate(judge: Judge, concept_text: str, instruction: str, outputs: Sequence[str]) -> list[JudgeScores]:
    scores = judge.rate(concept_text, instruction, list(outputs))
    if len(scores) != len(outputs):
        raise ValueError(f"judge {getattr(judge, 'name', judge)!r} returned {len(scores)} ratings for "
                         f"{len(outputs)} outputs")
    for s in scores:
        if not all(math.isfinite(v) for v in (s.concept, s.instruction, s.fluency)):
            raise ValueError(f"judge returned a non-finite rating: {s}")
    return scores


# ---------------------------------------------------------------------------- the protocol
def evaluate_concept(
    model: nn.Module, method: SteeringMethod, concept: Concept, others: Sequence[Concept],
    prompts: Sequence[BasePrompt], factors: Sequence[float], judge: Judge, settings: GenerationSettings,
    seed: int,
) -> tuple[ConceptResult, list[Generation]]:
    """Run one method on one concept: sweep, rate, choose the factor on the selection half, report the rest."""
    selection, report = split_prompts(prompts, seed, concept.id)
    ordered = [*selection, *report]
    half = {p.id: ("selection" if i < len(selection) else "report") for i, p in enumerate(ordered)}
    own = getattr(method, "factors", None)  # a method may carry its own sweep (e.g. factors of a trained norm)
    sweep: list[Factor] = (check_factors(own) if own else list(factors)) if method.uses_factors else [None]
    steerer: ConceptSteerer = method.prepare(model, concept, others)
    outputs = steerer.generate([p.text for p in ordered], sweep, settings, derive_seed(seed, method.name, concept.id))
    generations = _rate_sweep(method.name, concept, ordered, half, sweep, outputs, judge)
    cells = [_cell(factor, [g for g in generations if g.factor == factor]) for factor in sweep]
    chosen = choose_factor(cells)
    result = ConceptResult(
        method=method.name, concept_id=concept.id, chosen_factor=chosen.factor, report=chosen.report, cells=cells,
        selection_prompt_ids=[p.id for p in selection], report_prompt_ids=[p.id for p in report],
        info=_jsonable_info(getattr(steerer, "info", {})),
    )
    return result, generations


def _rate_sweep(method: str, concept: Concept, prompts: Sequence[BasePrompt], half: dict[str, str],
                sweep: Sequence[Factor], outputs: list[list[str]], judge: Judge) -> list[Generation]:
    if len(outputs) != len(sweep) or any(len(row) != len(prompts) for row in outputs):
        raise ValueError(f"method {method!r} returned outputs of the wrong shape (expected {len(sweep)} × {len(prompts)})")
    reference = concept_reference(concept)
    generations: list[Generation] = []
    for i, prompt in enumerate(prompts):
        answers = [outputs[j][i] for j in range(len(sweep))]
        for factor, answer, scores in zip(sweep, answers, _rate(judge, reference, prompt.text, answers), strict=True):
            generations.append(Generation(
                method=method, concept_id=concept.id, prompt_id=prompt.id, half=half[prompt.id], factor=factor,
                output=answer, concept=scores.concept, instruction=scores.instruction, fluency=scores.fluency,
                score=scores.score))
    return generations


def _cell(factor: Factor, generations: Sequence[Generation]) -> FactorCell:
    collapsed, share = mode_collapse([g.output for g in generations])
    return FactorCell(
        factor=factor,
        selection=_mean_scores([g for g in generations if g.half == "selection"]),
        report=_mean_scores([g for g in generations if g.half == "report"]),
        collapsed=collapsed, top_output_share=share,
    )


def _jsonable_info(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if isinstance(v, str | int | float | bool | list) or v is None}


def evaluate(
    model: nn.Module,
    methods: Sequence[SteeringMethod],
    concepts: Sequence[Concept],
    base_prompts: PromptSource,
    *,
    judge: Judge,
    factors: Sequence[float] = DEFAULT_FACTORS,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress: bool = True,
    reuse: bool | Collection[str] = False,
) -> EvaluationResult:
    """Compare steering methods on concepts with held-out factor selection (AxBench protocol).

    Args:
        model: the steered ``HookedTransformer`` / ``TransformerBridge``.
        methods: :class:`~hooksteer.evaluate.methods.SteeringMethod` objects with unique names.
        concepts: concepts to steer towards (each method sees the others, e.g. as DiffMean negatives).
        base_prompts: instructions used for every concept, or ``{concept_id: prompts}``; ≥ 2 per concept.
        judge: a :class:`~hooksteer.evaluate.base.Judge`.
        factors: steering factors swept by factor-using methods (see ``magnitude`` in
            :mod:`hooksteer.evaluate.methods` for what a factor means); a method with a non-empty
            ``factors`` attribute sweeps its own list instead.
        max_new_tokens / do_sample / temperature / batch_size: generation settings. Greedy by default:
            AxBench samples at T=1.0 (``do_sample=True``), but a 135M model sampled at T=1 writes noise
            even unsteered, which leaves nothing to compare.
        seed: fixes the prompt split, the sampling and random controls: same seed → same generations.
        out_dir: where to save results (nothing is written when None).
        progress: show a tqdm bar over (method, concept) pairs.
        reuse: when ``out_dir`` already holds the results of a run with the same settings (model, methods'
            configs, concepts, prompts, judge, factors, generation settings, seed), load and return them instead
            of generating again (e.g. a benchmark resuming after an interruption). The caller vouches that the
            methods' weights are the ones evaluated then: a method's config does not include its weights.
            A collection of method names reuses per method: a saved run with the same settings except for its
            list of methods gives back the results of the named methods it evaluated with the same config, and
            only the other methods are generated (e.g. a benchmark that adds a method to an earlier run).

    Example:
        >>> result = evaluate(model, [PromptSteering()], concepts, prompts, judge=judge)   # doctest: +SKIP
        >>> result.summary()["prompt"]["score"]                                       # doctest: +SKIP
    """
    _check_inputs(methods, concepts)
    factors = check_factors(factors)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                  batch_size=batch_size)
    config = _run_config(model, methods, concepts, base_prompts, judge, factors, settings, seed)
    reused: dict[str, tuple[list[ConceptResult], list[Generation]]] = {}
    if reuse is True and out_dir is not None:
        previous = _previous_run(out_dir, config)
        if previous is not None:
            return previous
    elif reuse and out_dir is not None:
        if isinstance(reuse, str):
            raise TypeError("reuse takes True/False or a collection of method names, not a single string")
        named = [m for m in methods if m.name in set(reuse)]
        if len(named) == len(methods):  # every method may be reused: the very same run is returned as saved
            previous = _previous_run(out_dir, config)
            if previous is not None:
                return previous
        reused = _reusable_methods(out_dir, config, named)
    jobs = [(method, concept) for method in methods if method.name not in reused for concept in concepts]
    fresh: dict[str, tuple[list[ConceptResult], list[Generation]]] = {}
    for method, concept in tqdm(jobs, desc="evaluate", disable=not progress):
        others = [c for c in concepts if c.id != concept.id]
        result, rated = evaluate_concept(model, method, concept, others, _prompts_for(base_prompts, concept),
                                         factors, judge, settings, seed)
        method_results, method_generations = fresh.setdefault(method.name, ([], []))
        method_results.append(result)
        method_generations.extend(rated)
    results: list[ConceptResult] = []
    generations: list[Generation] = []
    for method in methods:
        method_results, method_generations = reused.get(method.name) or fresh[method.name]
        results.extend(method_results)
        generations.extend(method_generations)
    evaluation = EvaluationResult(config=config, concepts=results, generations=generations)
    if out_dir is not None:
        evaluation.save(out_dir)
    return evaluation


def _saved_run(out_dir: str | Path) -> EvaluationResult | None:
    """The evaluation saved in ``out_dir``, or None when there is none (or it cannot be read)."""
    out = Path(out_dir)
    if not (out / "results.json").is_file() or not (out / "generations.json").is_file():
        return None
    try:
        return load_results(out)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _settings_key(config: dict[str, Any], *ignored: str) -> str:
    """A run config as comparable text, without the hooksteer version and the ``ignored`` keys."""
    return json.dumps({k: v for k, v in config.items() if k not in ("hooksteer_version", *ignored)}, sort_keys=True,
                      default=str)


def _previous_run(out_dir: str | Path, config: dict[str, Any]) -> EvaluationResult | None:
    """The results saved in ``out_dir`` if they come from a run with ``config`` (the hooksteer version aside)."""
    previous = _saved_run(out_dir)
    return previous if previous is not None and _settings_key(previous.config) == _settings_key(config) else None


def _reusable_methods(out_dir: str | Path, config: dict[str, Any], methods: Sequence[SteeringMethod]
                      ) -> dict[str, tuple[list[ConceptResult], list[Generation]]]:
    """Saved results and generations of those ``methods`` that a run in ``out_dir`` with the same settings (its list
    of methods and the hooksteer version aside) evaluated with the same method config, on every concept."""
    previous = _saved_run(out_dir) if methods else None
    if previous is None or _settings_key(previous.config, "methods") != _settings_key(config, "methods"):
        return {}
    saved_configs = {json.dumps(c, sort_keys=True, default=str) for c in previous.config.get("methods", [])}
    concept_ids = list(config["concepts"])
    reused: dict[str, tuple[list[ConceptResult], list[Generation]]] = {}
    for method in methods:
        if json.dumps(method.config(), sort_keys=True, default=str) not in saved_configs:
            continue
        by_concept = {c.concept_id: c for c in previous.concepts if c.method == method.name}
        if set(by_concept) != set(concept_ids):
            continue
        reused[method.name] = ([by_concept[cid] for cid in concept_ids],
                               [g for g in previous.generations if g.method == method.name])
    return reused


def _run_config(model: nn.Module, methods: Sequence[SteeringMethod], concepts: Sequence[Concept],
                base_prompts: PromptSource, judge: Judge, factors: list[float], settings: GenerationSettings,
                seed: int) -> dict[str, Any]:
    import hooksteer

    prompt_ids: Any = ({cid: [p.id for p in ps] for cid, ps in base_prompts.items()}
                       if isinstance(base_prompts, Mapping) else [p.id for p in base_prompts])
    cfg = getattr(model, "cfg", None)
    return {
        "hooksteer_version": hooksteer.__version__,
        "model": getattr(cfg, "model_name", type(model).__name__),
        "methods": [m.config() for m in methods],
        "concepts": [c.id for c in concepts],
        "base_prompts": prompt_ids,
        "judge": getattr(judge, "name", type(judge).__name__),
        "factors": factors,
        "generation": asdict(settings),
        "seed": seed,
        "collapse_threshold": COLLAPSE_THRESHOLD,
        "selection": ("best mean selection-half score (ties: best mean of concept/instruction/fluency, then "
                      "first factor); report half at that factor"),
    }
