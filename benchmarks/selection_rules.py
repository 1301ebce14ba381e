"""Benchmark: would another strength rule lift a method? Re-scores a finished evaluation under other rules.

The protocol (:func:`hooksteer.evaluate.protocol.choose_factor`) picks each concept's factor on the selection half of
the eval prompts (3 prompts here) and reports the other half. With few selection prompts the choice is noisy, and
A-PSR's paper uses another rule (the strongest α whose fluency stays above a coherence target). This script reads
the per-(method, concept, factor) cells an evaluation saved (``evaluation/results.json``: every factor is judged on
both halves) and, without generating anything, scores every factor-sweeping method under each rule:

* ``protocol`` — the protocol's own choice (reproduces the saved scores exactly, a check of the re-scoring);
* ``fixed F`` — the same factor F for every concept, chosen before seeing any score (e.g. 1.0 = a vector's trained
  norm or a PSR's trained α);
* ``pooled`` — one factor per method, the best mean selection-half score over *all* concepts (20 × 3 prompts
  choose instead of 3);
* ``coherence T`` — per concept the largest factor whose mean selection-half fluency is ≥ T (A-PSR's rule; the
  smallest factor when none is);
* ``best of all`` — per concept the factor with the best mean score over *both* halves, scored on both halves: the
  factor picked after seeing the scores it is judged on, an upper bound on any per-concept strength rule. Methods
  without factors (prompt steering) are scored on both halves too in that row.
* ``other sets`` (only with several ``--evaluation`` folders) — one factor per method and evaluation, the best mean
  score over both halves of the *other* evaluations' concepts, reported on this evaluation's report half: a strength
  learned on concepts that are never scored with it (e.g. learned on concept set A, applied to set B and back). The
  factors it picked are in ``results.json`` (``other_sets_factors``).
* with ``--both-halves``, also ``fixed F, both halves`` and ``other sets, both halves``: the rules that never look
  at a concept's own scores, scored on *both* halves of its eval prompts (6 prompts per concept instead of 3; the
  baseline on both halves too).

Beside each row (when the evaluations saved their answers, ``generations.json``, and include unsteered ``none``): the
mean words of the method's report-half answers at the factors the rule picked, divided by those of the unsteered
answers to the same prompts (a rule that shortens answers is a bug signal).

Each row: mean score over concepts [bootstrap 95 %] and the paired difference to ``--baseline`` and to
``--share`` × ``--baseline`` (the same prompts); a baseline that sweeps factors (DiffMean, an oracle) is taken under the
row's own rule (``fixed 2`` against its ``fixed 2``, ``other sets`` against its ``other sets``). Several ``--evaluation`` folders (e.g. two sets of concepts, each
with its own baseline run) are pooled: every concept keeps its pairing with the baseline of its own evaluation, the
rules run per evaluation, and the methods are those every evaluation has. Outputs ``results.json`` / ``results.md``
under ``--out``.

Usage::

    .venv/bin/python benchmarks/selection_rules.py --evaluation runs/oracle_forms20_answer_p16/evaluation \
        --out runs/oracle_forms20_answer_p16/selection_rules
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
from common import fmt, save_report, word_ratio  # noqa: E402

PROG = "selection_rules"
#: Suffix of the rows scored on both halves of the eval prompts (``--both-halves``).
BOTH_HALVES = ", both halves"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluation", required=True, nargs="+",
                        help="evaluation folders (results.json with its cells); several are pooled over concepts")
    parser.add_argument("--out", required=True, help="output folder (results.json, results.md)")
    parser.add_argument("--baseline", default="prompt", help="method every row is compared with (default prompt)")
    parser.add_argument("--share", type=float, default=0.9, help="also compare with this share of the baseline")
    parser.add_argument("--coherence-targets", type=float, nargs="+", default=[1.0, 1.5],
                        help="fluency targets (0-2) of the coherence rule")
    parser.add_argument("--methods", nargs="*", default=None, help="methods to re-score (default: every method)")
    parser.add_argument("--both-halves", action="store_true",
                        help="also score the rules that never see a concept's own scores (fixed F, other sets) on "
                             "both halves of its eval prompts (rows '<rule>, both halves')")
    args = parser.parse_args(argv)
    problems = []
    folders = [Path(f) for f in args.evaluation]
    problems += [f"--evaluation {folder} has no results.json (an evaluate(..., out_dir=...) folder)"
                 for folder in folders if not (folder / "results.json").is_file()]
    if len({f.resolve() for f in folders}) != len(folders):
        problems.append("--evaluation names a folder twice")
    if not (math.isfinite(args.share) and args.share > 0):
        problems.append("--share must be a positive number")
    if not args.coherence_targets or any(not (0 <= t <= 2) for t in args.coherence_targets):
        problems.append("--coherence-targets must be fluency ratings between 0 and 2")
    if Path(args.out).resolve() in {f.resolve() for f in folders}:
        problems.append("--out must not be the evaluation folder (its results.json would be overwritten)")
    if problems:
        parser.error("; ".join(problems))
    return args


def _fail(message: str) -> None:
    """One line ``selection_rules: error: …`` on stderr and exit status 2 (as argparse does for bad flags)."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _cells(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [c for c in entry["cells"] if c["factor"] is not None]


def _both(cell: Mapping[str, Any]) -> float:
    """Mean score over both halves (the halves have the same number of prompts in the protocol)."""
    return (cell["selection"]["score"] + cell["report"]["score"]) / 2


def rule_picks(entries: Sequence[Mapping[str, Any]], coherence_targets: Sequence[float]) -> dict[str, dict[str, float]]:
    """Per rule: ``{concept_id: factor}`` — the factor each rule picks for each of one method's concept entries
    (``results.json``'s ``concepts`` rows). ``best of all`` picks the factor with the best mean over both halves.

    Example:
        >>> cell = lambda f, s_sel, s_rep, flu: {"factor": f, "selection": {"score": s_sel, "fluency": flu,
        ...     "concept": 1.0, "instruction": 1.0}, "report": {"score": s_rep}}
        >>> entry = {"concept_id": "c", "chosen_factor": 2.0, "report": {"score": 0.1},
        ...          "cells": [cell(1.0, 0.2, 0.4, 1.8), cell(2.0, 0.3, 0.1, 1.2)]}
        >>> picks = rule_picks([entry], [1.5])
        >>> picks["protocol"]["c"], picks["fixed 1"]["c"], picks["coherence 1.5"]["c"], picks["best of all"]["c"]
        (2.0, 1.0, 1.0, 1.0)
    """
    from hooksteer.evaluate.protocol import choose_factor
    from hooksteer.evaluate.result import FactorCell

    out: dict[str, dict[str, float]] = {"protocol": {}}
    factors = sorted({c["factor"] for e in entries for c in _cells(e)})
    for entry in entries:
        cells = _cells(entry)
        chosen = choose_factor([FactorCell(c["factor"], c["selection"], c["report"], False, 0.0) for c in cells])
        out["protocol"][entry["concept_id"]] = chosen.factor
    for factor in factors:
        out[f"fixed {factor:g}"] = {e["concept_id"]: factor for e in entries}

    def pooled_mean(factor: float) -> float:
        values = [c["selection"]["score"] for e in entries for c in _cells(e) if c["factor"] == factor]
        return sum(values) / len(values)

    best = max(factors, key=lambda f: (pooled_mean(f), -factors.index(f)))
    out[f"pooled ({best:g})"] = dict(out[f"fixed {best:g}"])
    for target in coherence_targets:
        picked = {}
        for entry in entries:
            cells = sorted(_cells(entry), key=lambda c: c["factor"])
            kept = [c for c in cells if c["selection"]["fluency"] >= target]
            picked[entry["concept_id"]] = (kept[-1] if kept else cells[0])["factor"]
        out[f"coherence {target:g}"] = picked
    out["best of all"] = {e["concept_id"]: max(_cells(e), key=_both)["factor"] for e in entries}
    return out


def other_sets_picks(evaluations: Sequence[Sequence[Mapping[str, Any]]]) -> list[float | None]:
    """The ``other sets`` rule: per evaluation (one method's concept entries each), the factor with the best mean
    score over both halves of every *other* evaluation's cells (ties: the smaller factor); None when this evaluation
    did not sweep that factor (its concepts are then left out).

    Example:
        >>> cell = lambda f, s: {"factor": f, "selection": {"score": s}, "report": {"score": s}}
        >>> one = [{"concept_id": "0:a", "cells": [cell(1.0, 0.1), cell(2.0, 0.3)]}]
        >>> two = [{"concept_id": "1:a", "cells": [cell(1.0, 0.4), cell(2.0, 0.2)]}]
        >>> other_sets_picks([one, two])   # set one gets factor 1 (best on two), set two gets factor 2
        [1.0, 2.0]
    """
    if len(evaluations) < 2:
        raise ValueError("the other-sets rule needs at least two evaluations")
    picked: list[float | None] = []
    for i, entries in enumerate(evaluations):
        by_factor: dict[float, list[float]] = {}
        for j, here in enumerate(evaluations):
            for cell in (c for e in here for c in _cells(e)) if j != i else ():
                by_factor.setdefault(cell["factor"], []).append(_both(cell))
        factor = max(sorted(by_factor), key=lambda f: sum(by_factor[f]) / len(by_factor[f])) if by_factor else None
        swept = all(any(c["factor"] == factor for c in _cells(e)) for e in entries)
        picked.append(factor if factor is not None and swept else None)
    return picked


def answer_words(generations: Sequence[Mapping[str, Any]], method: str, picks: Mapping[str, float | None],
                 reference: str = "none") -> dict[str, float] | None:
    """Mean words of ``method``'s report-half answers at the picked factor per concept, of ``reference``'s answers to
    the same (concept, prompt) pairs, and their ratio (a rule that shortens answers is a bug signal); None when the
    generations hold no such pair. ``generations`` carry the same concept ids as ``picks``."""
    texts = {(g["method"], g["concept_id"], g["prompt_id"], g["factor"]): g["output"]
             for g in generations if g["half"] == "report" and g["method"] in (method, reference)}
    pairs = [(text, texts[reference, cid, prompt, None]) for (m, cid, prompt, factor), text in texts.items()
             if m == method and cid in picks and factor == picks[cid] and (reference, cid, prompt, None) in texts]
    return word_ratio(pairs) if pairs else None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from hooksteer.evaluate.stats import bootstrap_ci, paired_difference_ci

    args = parse_args(argv)
    began = time.perf_counter()
    pooled = [json.loads((Path(folder) / "results.json").read_text()) for folder in args.evaluation]
    per_evaluation: list[dict[str, list[dict[str, Any]]]] = []
    for i, saved in enumerate(pooled):
        methods_here: dict[str, list[dict[str, Any]]] = {}
        for entry in saved["concepts"]:
            cid = entry["concept_id"] if len(pooled) == 1 else f"{i}:{entry['concept_id']}"
            methods_here.setdefault(entry["method"], []).append({**entry, "concept_id": cid})
        per_evaluation.append(methods_here)
    generations = _generations(args.evaluation)
    common_methods = set.intersection(*(set(m) for m in per_evaluation))
    by_method = {m: [e for here in per_evaluation for e in here[m]] for m in per_evaluation[0] if m in common_methods}
    if args.baseline not in by_method:
        _fail(f"--baseline {args.baseline!r} is not in every evaluation ({', '.join(sorted(by_method))})")
    methods = args.methods if args.methods is not None else [m for m in by_method if m != args.baseline]
    unknown = [m for m in methods if m not in by_method]
    if unknown:
        _fail(f"methods not in every evaluation: {', '.join(unknown)}")
    concepts = [e["concept_id"] for e in by_method[args.baseline]]
    base_report = {e["concept_id"]: e["report"]["score"] for e in by_method[args.baseline]}
    # a baseline with factors (e.g. DiffMean, or an oracle) is taken under the same rule as each row ('best of all':
    # its own best factor per concept); one without (prompt steering) as it is, on both halves for 'best of all'
    base_rules, _, _ = method_rules(args.baseline, per_evaluation, args.coherence_targets, args.both_halves)
    base_all = base_rules["best of all"]
    rows = []
    other_sets_factors: dict[str, list[float | None]] = {}
    for method in methods:
        entries = by_method[method]
        if sorted(e["concept_id"] for e in entries) != sorted(concepts):
            _fail(f"{method} and {args.baseline} were scored on different concepts")
        rules, picks, factors = method_rules(method, per_evaluation, args.coherence_targets, args.both_halves)
        if factors is not None:
            other_sets_factors[method] = factors
        for rule, scores in rules.items():
            if len(scores) != len(concepts):  # e.g. a factor only one evaluation swept
                continue
            base = (base_rules[rule] if len(base_rules.get(rule, ())) == len(concepts)
                    else base_all if rule.endswith(BOTH_HALVES) else base_report)
            values = [scores[c] for c in concepts]
            reference = [base[c] for c in concepts]
            words = (answer_words(generations, method, picks[rule])
                     if generations and rule in picks and rule != "best of all" else None)
            rows.append({"method": method, "rule": rule, "score": bootstrap_ci(values).to_dict(),
                         "minus_baseline": paired_difference_ci(values, reference).to_dict(),
                         "minus_share": paired_difference_ci(values, [args.share * v for v in reference]).to_dict(),
                         "answer_words": words, "per_concept": dict(zip(concepts, values, strict=True))})
    reproduced = all(abs(r["score"]["mean"] - _saved_mean(by_method[r["method"]])) < 1e-9
                     for r in rows if r["rule"] == "protocol")
    report = {"benchmark": PROG, "command": " ".join(["benchmarks/selection_rules.py", *(argv or sys.argv[1:])]),
              "evaluation": [str(f) for f in args.evaluation], "baseline": args.baseline, "share": args.share,
              "n_concepts": len(concepts), "protocol_reproduced": reproduced,
              "baseline_has_factors": any(_cells(e) for e in by_method[args.baseline]),
              "baseline_scores": {"report half": bootstrap_ci(list(base_report.values())).to_dict(),
                                  "both halves": bootstrap_ci(list(base_all.values())).to_dict()},
              "rows": rows, "other_sets_factors": other_sets_factors, "seconds": {"total": 0.0}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_report(report, out, began, markdown)
    return report


def method_rules(method: str, per_evaluation: Sequence[Mapping[str, Sequence[Mapping[str, Any]]]],
                 coherence_targets: Sequence[float], both_halves: bool = False
                 ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float | None]], list[float | None] | None]:
    """One method's scores per rule (``{rule: {concept_id: score}}``), the factors each rule picked, and the other-sets
    factors per evaluation (None with one evaluation or no factors). Each evaluation's rules run on its own concepts
    (a pooled factor is chosen per evaluation); a method without factors (prompt steering) has only ``protocol``
    and ``best of all`` (its one cell, on both halves). Scores are report-half scores at the picked factors, except
    ``best of all``: both halves (its factor was picked on them); with ``both_halves`` also ``"<rule>, both halves"``
    for ``fixed F`` and ``other sets`` (their factors never depend on the concept's own scores).

    Example:
        >>> cell = lambda f, s_sel, s_rep, flu: {"factor": f, "selection": {"score": s_sel, "fluency": flu,
        ...     "concept": 1.0, "instruction": 1.0}, "report": {"score": s_rep}}
        >>> entry = {"concept_id": "c", "chosen_factor": 2.0, "report": {"score": 0.1},
        ...          "cells": [cell(1.0, 0.2, 0.4, 1.8), cell(2.0, 0.3, 0.1, 1.2)]}
        >>> rules, picks, _ = method_rules("m", [{"m": [entry]}], [1.5])
        >>> rules["protocol"]["c"], rules["fixed 1"]["c"], rules["coherence 1.5"]["c"], rules["best of all"]["c"]
        (0.1, 0.4, 0.4, 0.30000000000000004)
    """
    entries = [e for here in per_evaluation for e in here[method]]
    if not any(_cells(e) for e in entries):  # no factors: its one cell per concept
        return ({"best of all": {e["concept_id"]: _both(e["cells"][0]) for e in entries},
                 "protocol": {e["concept_id"]: e["report"]["score"] for e in entries}},
                {"protocol": {e["concept_id"]: None for e in entries}}, None)
    picks: dict[str, dict[str, float | None]] = {}
    for here in per_evaluation:
        for rule, picked in rule_picks(here[method], coherence_targets).items():
            picks.setdefault(rule if len(per_evaluation) == 1 else _rule_key(rule), {}).update(picked)
    factors = None
    if len(per_evaluation) > 1:
        factors = other_sets_picks([here[method] for here in per_evaluation])
        picks["other sets"] = {e["concept_id"]: factor for here, factor in zip(per_evaluation, factors, strict=True)
                               if factor is not None for e in here[method]}
    cells = {(e["concept_id"], c["factor"]): c for e in entries for c in _cells(e)}
    rules = {rule: {cid: _both(cells[cid, f]) if rule == "best of all" else cells[cid, f]["report"]["score"]
                    for cid, f in picked.items()} for rule, picked in picks.items()}
    if both_halves:
        rules |= {rule + BOTH_HALVES: {cid: _both(cells[cid, f]) for cid, f in picked.items()}
                  for rule, picked in picks.items() if rule == "other sets" or rule.startswith("fixed ")}
    return rules, picks, factors


def _generations(folders: Sequence[str]) -> list[dict[str, Any]]:
    """Every evaluation's saved answers (``generations.json``), concept ids prefixed as the entries' are when several
    evaluations are pooled; empty when any folder has none (the rows then carry no answer lengths)."""
    paths = [Path(folder) / "generations.json" for folder in folders]
    if not all(path.is_file() for path in paths):
        return []
    out = []
    for i, path in enumerate(paths):
        for g in json.loads(path.read_text()):
            out.append({**g, "concept_id": g["concept_id"] if len(paths) == 1 else f"{i}:{g['concept_id']}"})
    return out


def _rule_key(rule: str) -> str:
    """``"pooled (1)"`` → ``"pooled"`` (the pooled factor may differ between evaluations); other rules as they are."""
    return "pooled" if rule.startswith("pooled") else rule


def _saved_mean(entries: Sequence[Mapping[str, Any]]) -> float:
    return sum(e["report"]["score"] for e in entries) / len(entries)


def _interval(d: Mapping[str, Any]) -> str:
    return f"{d['mean']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def markdown(report: Mapping[str, Any]) -> str:
    from hooksteer.evaluate.report import table

    b, share = report["baseline"], report["share"]
    lines = ["# Strength rules re-scored on a finished evaluation", "", f"`{report['command']}`", "",
             f"{report['n_concepts']} concepts from {len(report['evaluation'])} evaluation(s); {b}: {_interval(report['baseline_scores']['report half'])} on the "
             f"report half, {_interval(report['baseline_scores']['both halves'])} on both halves (the baseline of the "
             f"'best of all' rows){'; with factors, it is taken under each row' + chr(39) + 's rule' if report['baseline_has_factors'] else ''}. "
             f"The protocol rows reproduce the saved scores: "
             f"{'yes' if report['protocol_reproduced'] else 'NO'}.", ""]
    body = [[r["method"], r["rule"], _interval(r["score"]), _interval(r["minus_baseline"]),
             _interval(r["minus_share"]), "yes" if r["minus_share"]["excludes_zero"] else "no",
             "–" if not r.get("answer_words") else fmt(r["answer_words"]["ratio"], 2)]
            for r in report["rows"]]
    lines.append(table(body, ("method", "rule", "score [95 %]", f"− {b} [95 %]", f"− {fmt(share, 1)}×{b} [95 %]",
                              "excludes 0", "words ÷ unsteered")))
    if report.get("other_sets_factors"):
        picked = "; ".join(f"{method} {', '.join('–' if f is None else f'{f:g}' for f in factors)}"
                           for method, factors in report["other_sets_factors"].items())
        lines += ["", f"Factors of the 'other sets' rule, per evaluation in the order given: {picked}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
