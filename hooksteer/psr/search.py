"""Choosing the steering strength on the selection half: raise it until a coherence target is hit.

The PSR paper sets α at inference "by search to a target coherence". :class:`AlphaSearch` wraps any
factor-using :class:`~hooksteer.evaluate.methods.SteeringMethod` (a PSR, DiffMean, a constant vector) and does
that inside ``prepare()``, on the **selection half** of the base prompts (the same seeded split
:func:`hooksteer.evaluate.protocol.split_prompts` makes), so :func:`hooksteer.evaluate.protocol.evaluate`
then reports the other half at the chosen strength — the same rule for every wrapped method:

1. generate the selection prompts at every value of an ascending ``grid`` (one batch) and rate them;
2. *coherence rule*: walk up the grid while the mean selection fluency stays ≥ ``target``; the last value
   that does is α*, the first that does not bounds it; ``refine`` bisection steps (geometric midpoints)
   between the two sharpen α*. If even the smallest value misses the target, α* is that smallest value;
   if none misses it, α* is the largest;
3. *best-score rule* (the project's usual one, recorded for comparison): the tested value with the best mean
   selection score (ties: mean of the three ratings, then the smaller value);
4. the report half is generated at both values; the protocol reports the ``rule`` one, and
   ``search_report_<rule>`` / ``alpha_<rule>`` in the concept's ``info`` hold both.

Ratings go through a :class:`CachedJudge`, so the protocol's re-rating of the same outputs costs nothing
when the same cached judge is passed to ``evaluate``.

**Joint search.** Several :class:`AlphaSearch` es that share a :class:`hooksteer.psr.joint.JointSearch` run each stage for *all* their
methods in the same generation batches (per-row PSR gates, directions and strengths):
the first wrapper asked for a concept searches every registered method at once, the others read the result.
The outputs are those of the separate searches (same rows, same greedy decoding, up to floating-point
differences between batch shapes), in a few large batches instead of many small ones. PSR steerers and constant-vector steerers at ``hook_resid_post`` join; any other
method is searched on its own.

Example:
    >>> judge = CachedJudge(EmbeddingJudge())                                           # doctest: +SKIP
    >>> search = AlphaSearch(PSRMethod(data, cfg), judge, prompts, grid=[0.5, 1, 2, 4],  # doctest: +SKIP
    ...                      settings=GenerationSettings(max_new_tokens=32), target=1.5)
    >>> evaluate(bridge, [search], concepts, prompts, judge=judge, factors=[1.0])      # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hooksteer.data.schema import BasePrompt, Concept
from hooksteer.evaluate.base import JudgeScores
from hooksteer.evaluate.methods import Factor, GenerationSettings, concept_reference, derive_seed

__all__ = ["AlphaSearch", "CachedJudge", "SearchedSteerer", "best_score_choice", "coherence_choice", "jsonable", "RULES"]

RULES: tuple[str, ...] = ("coherence", "best_score")
_RATINGS = ("concept", "instruction", "fluency", "score")


class CachedJudge:
    """A judge whose ratings are remembered by (concept, instruction, output) (judges are deterministic)."""

    def __init__(self, judge: Any) -> None:
        self.judge = judge
        self.name = getattr(judge, "name", type(judge).__name__)
        self._cache: dict[tuple[str, str, str], JudgeScores] = {}
        self.calls = 0

    def rate(self, concept: Any, instruction: str, outputs: Sequence[str]) -> list[JudgeScores]:
        key_concept = concept if isinstance(concept, str) else repr(concept)
        missing = list(dict.fromkeys(o for o in outputs if (key_concept, instruction, o) not in self._cache))
        if missing:
            self.calls += 1
            for output, score in zip(missing, self.judge.rate(concept, instruction, missing), strict=True):
                self._cache[(key_concept, instruction, output)] = score
        return [self._cache[(key_concept, instruction, o)] for o in outputs]


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (results are saved with ``allow_nan=False``).

    Example:
        >>> jsonable({"a": [1.0, float("nan")], "b": float("inf")})
        {'a': [1.0, None], 'b': None}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def coherence_choice(tested: Mapping[float, Mapping[str, float]], target: float) -> tuple[float, float | None]:
    """``(α*, first failing α or None)`` by the coherence rule over the tested values (ascending).

    Example:
        >>> tested = {0.5: {"fluency": 1.9}, 1.0: {"fluency": 1.7}, 2.0: {"fluency": 1.2}}
        >>> coherence_choice(tested, 1.5)
        (1.0, 2.0)
        >>> coherence_choice(tested, 1.95)
        (0.5, 0.5)
    """
    values = sorted(tested)
    if not values:
        raise ValueError("nothing tested")
    passing = None
    for value in values:
        if not tested[value]["fluency"] >= target:
            return (passing if passing is not None else values[0]), value
        passing = value
    return values[-1], None


def best_score_choice(tested: Mapping[float, Mapping[str, float]]) -> float:
    """The tested value with the best mean score (ties: best mean rating, then the smallest value).

    Example:
        >>> best_score_choice({1.0: {"score": 0.0, "concept": 0, "instruction": 2, "fluency": 2},
        ...                    2.0: {"score": 0.3, "concept": 1, "instruction": 1, "fluency": 1}})
        2.0
    """
    def key(value: float) -> tuple[float, float, float]:
        r = tested[value]
        score = r["score"] if math.isfinite(r["score"]) else -1.0
        return (score, (r["concept"] + r["instruction"] + r["fluency"]) / 3, -value)

    return max(tested, key=key)


class SearchedSteerer:
    """What :meth:`AlphaSearch.prepare` returns: generates every prompt at the chosen α (cached outputs reused)."""

    def __init__(self, base: Any, alpha: float, cache: dict[tuple[str, float], str], info: dict[str, Any]) -> None:
        self.base, self.alpha, self.cache, self.info = base, float(alpha), cache, info

    def generate(self, prompts: Sequence[str], factors: Sequence[Factor], settings: GenerationSettings,
                 seed: int) -> list[list[str]]:
        missing = [p for p in dict.fromkeys(prompts) if (p, self.alpha) not in self.cache]
        if missing:
            outputs = self.base.generate(missing, [self.alpha], settings, seed)[0]
            self.cache.update({(p, self.alpha): o for p, o in zip(missing, outputs, strict=True)})
        row = [self.cache[(p, self.alpha)] for p in prompts]
        return [list(row) for _ in factors]


Request = tuple[str, float, Sequence[BasePrompt]]  # (method name, strength, prompts)
Generate = Callable[[Sequence[Request]], dict[tuple[str, float, str], str]]


def _rate(judge: Any, concept: Concept, prompts: Sequence[BasePrompt], alphas: Sequence[float],
          outputs: Mapping[tuple[float, str], str]) -> dict[float, dict[str, float]]:
    reference = concept_reference(concept)
    per_alpha: dict[float, list[JudgeScores]] = {a: [] for a in alphas}
    for prompt in prompts:
        answers = [outputs[(a, prompt.text)] for a in alphas]
        for alpha, score in zip(alphas, judge.rate(reference, prompt.text, answers), strict=True):
            per_alpha[alpha].append(score)
    return {a: {k: _mean([getattr(s, k) for s in scores]) for k in _RATINGS} for a, scores in per_alpha.items()}


def _search(searches: Sequence[AlphaSearch], concept: Concept, selection: Sequence[BasePrompt],
            report: Sequence[BasePrompt], generate: Generate,
            added: Callable[[str], Mapping[float, Mapping[str, Any]]],
            bases: Mapping[str, Any]) -> dict[str, SearchedSteerer]:
    """Run the grid, bisection and report stages for every search (each stage one ``generate`` call)."""
    cache: dict[str, dict[tuple[str, float], str]] = {s.name: {} for s in searches}
    tested: dict[str, dict[float, dict[str, float]]] = {s.name: {} for s in searches}
    judge = {s.name: s.judge for s in searches}

    def run(requests: Sequence[Request]) -> None:
        outputs = generate(requests)
        by_name: dict[str, dict[tuple[float, str], str]] = {}
        for (name, alpha, prompt_text), text in outputs.items():
            cache[name][(prompt_text, float(alpha))] = text
            by_name.setdefault(name, {})[(float(alpha), prompt_text)] = text
        for name, alpha, prompts in requests:
            if prompts is selection:
                tested[name].update(_rate(judge[name], concept, prompts, [alpha], by_name[name]))

    run([(s.name, a, selection) for s in searches for a in s.grid])
    bounds: dict[str, list[float | None]] = {}
    for s in searches:
        low, high = coherence_choice(tested[s.name], s.target)
        lower = low if tested[s.name][low]["fluency"] >= s.target else 0.0
        bounds[s.name] = [lower, high]
    for step in range(max((s.refine for s in searches), default=0)):
        requests: list[Request] = []
        for s in searches:
            lower, high = bounds[s.name]
            if step >= s.refine or high is None:
                continue
            mid = math.sqrt(lower * high) if lower else high / 2  # type: ignore[operator]
            if mid in tested[s.name]:
                bounds[s.name][1] = None
                continue
            requests.append((s.name, mid, selection))
        if not requests:
            break
        run(requests)
        for name, mid, _ in requests:
            search = next(s for s in searches if s.name == name)
            if tested[name][mid]["fluency"] >= search.target:
                bounds[name][0] = mid
            else:
                bounds[name][1] = mid
    chosen = {s.name: {"coherence": coherence_choice(tested[s.name], s.target)[0],
                       "best_score": best_score_choice(tested[s.name])} for s in searches}
    report_requests = [(s.name, a, report) for s in searches
                       for a in dict.fromkeys([chosen[s.name][s.rule], *chosen[s.name].values()])]
    outputs = generate(report_requests)
    for (name, alpha, prompt_text), text in outputs.items():
        cache[name][(prompt_text, float(alpha))] = text
    result = {}
    for s in searches:
        ratings = {a: _rate(s.judge, concept, report, [a], {(a, p.text): cache[s.name][(p.text, a)] for p in report})[a]
                   for a in dict.fromkeys(chosen[s.name].values())}
        info = _info(s, getattr(bases[s.name], "info", {}), tested[s.name], chosen[s.name], ratings, added(s.name),
                     constant=hasattr(bases[s.name], "magnitude"))
        s.searches[concept.id] = info
        result[s.name] = SearchedSteerer(bases[s.name], chosen[s.name][s.rule], cache[s.name], info)
    return result


def _info(search: AlphaSearch, base_info: Mapping[str, Any], tested: Mapping[float, Mapping[str, float]],
          chosen: Mapping[str, float], report: Mapping[float, Mapping[str, float]],
          added: Mapping[float, Mapping[str, Any]], *, constant: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        **dict(base_info), "search_rule": search.rule, "search_target": search.target,
        "alpha": chosen[search.rule], **{f"alpha_{rule}": value for rule, value in chosen.items()},
        "search_tested": [[a, tested[a]["fluency"], tested[a]["concept"], tested[a]["score"]] for a in sorted(tested)],
        "search_bracketed": any(r["fluency"] < search.target for r in tested.values()),
        "search_all_below_target": all(r["fluency"] < search.target for r in tested.values())}
    for rule, value in chosen.items():
        info.update({f"search_report_{rule}_{k}": v for k, v in report[value].items()})
        info.update({f"search_selection_{rule}_{k}": v for k, v in tested[value].items()})
        if value in added:
            info[f"added_rel_{rule}"] = added[value]["added_rel_mean"]
            info[f"added_rel_sum_{rule}"] = added[value]["added_rel_sum"]
            info[f"dead_share_{rule}"] = added[value]["dead_share_mean"] if not constant else None
            info[f"added_rel_layers_{rule}"] = [[layer, v["added_rel"], v["dead_share"]]
                                               for layer, v in added[value]["layers"].items()]
        elif constant:  # a constant vector: factor × magnitude (≈ factor × mean ‖h‖)
            info[f"added_rel_{rule}"] = value
    info["added_rel_tested"] = [[a, added[a]["added_rel_mean"]] for a in sorted(added)]
    return jsonable(info)


@dataclass
class AlphaSearch:
    """Wraps a factor-using steering method: its factor is chosen on the selection half (see module docstring).

    Args:
        method: the wrapped method (its ``prepare`` gives a steerer with ``generate(prompts, factors, ...)``).
        judge: the judge (a :class:`CachedJudge`; pass the same one to ``evaluate``).
        prompts: the base prompts ``evaluate`` gets (a list, or ``{concept_id: prompts}``).
        grid: ascending strengths tried first (PSR: α; DiffMean: factor × residual norm).
        settings: generation settings (the same as ``evaluate``'s).
        seed: ``evaluate``'s seed (it fixes the prompt split).
        target: mean selection-half fluency (0–2) the coherence rule keeps.
        refine: bisection steps after the grid.
        rule: which choice the protocol reports: ``"coherence"`` or ``"best_score"``.
        name: method name (default: the wrapped method's).
        joint: a :class:`hooksteer.psr.joint.JointSearch` to batch this search with others (same prompts, seed
            and settings).
    """

    method: Any
    judge: Any
    prompts: Sequence[BasePrompt] | Mapping[str, Sequence[BasePrompt]]
    grid: Sequence[float]
    settings: GenerationSettings
    seed: int = 0
    target: float = 1.5
    refine: int = 2
    rule: str = "coherence"
    name: str = ""
    joint: Any = field(default=None, repr=False)  # a hooksteer.psr.joint.JointSearch
    uses_factors: bool = field(default=False, init=False)
    searches: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.grid = sorted(float(g) for g in self.grid)
        if not self.grid or any(not (math.isfinite(g) and g > 0) for g in self.grid):
            raise ValueError(f"grid must hold positive finite strengths, got {self.grid}")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.refine < 0:
            raise ValueError("refine must be >= 0")
        if not getattr(self.method, "uses_factors", True):
            raise ValueError(f"method {getattr(self.method, 'name', self.method)!r} has no factor to search")
        self.name = self.name or self.method.name
        if self.joint is not None:
            self.joint.register(self)

    def split(self, concept: Concept) -> tuple[list[BasePrompt], list[BasePrompt]]:
        """The protocol's (selection, report) halves for ``concept``."""
        from hooksteer.evaluate.protocol import _prompts_for, split_prompts

        return split_prompts(_prompts_for(self.prompts, concept), self.seed, concept.id)

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> SearchedSteerer:
        if self.joint is not None:
            return self.joint.steerer(self, model, concept, others)
        base = self.method.prepare(model, concept, others)
        selection, report = self.split(concept)
        seed = derive_seed(self.seed, self.name, concept.id, "search")

        def generate(requests: Sequence[Request]) -> dict[tuple[str, float, str], str]:
            out = {}
            alphas = list(dict.fromkeys(a for _, a, _ in requests))
            prompts = requests[0][2]
            for alpha, row in zip(alphas, base.generate([p.text for p in prompts], alphas, self.settings, seed),
                                  strict=True):
                out.update({(self.name, alpha, p.text): o for p, o in zip(prompts, row, strict=True)})
            return out

        def generate_grouped(requests: Sequence[Request]) -> dict[tuple[str, float, str], str]:
            out: dict[tuple[str, float, str], str] = {}
            for prompts in {id(r[2]): r[2] for r in requests}.values():
                out.update(generate([r for r in requests if r[2] is prompts]))
            return out

        return _search([self], concept, selection, report, generate_grouped,
                       lambda name: getattr(base, "added_norms", {}), {self.name: base})[self.name]

    def config(self) -> dict[str, Any]:
        inner = self.method.config() if hasattr(self.method, "config") else {}
        return {**inner, "name": self.name, "selection_rule": {
            "class": type(self).__name__, "rule": self.rule, "grid": list(self.grid), "refine": self.refine,
            "coherence_target_fluency": self.target, "joint_batches": self.joint is not None,
            "description": "raise the strength while the selection-half mean fluency stays >= target (grid, then "
                           "bisection); report half at the chosen strength"}}
