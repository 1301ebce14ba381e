"""Reports of an evaluation run: markdown tables and the factor-sweep figure.

Example:
    >>> from hooksteer.evaluate.result import load_results                        # doctest: +SKIP
    >>> result = load_results("runs/eval")                                         # doctest: +SKIP
    >>> print(markdown_table(result))                                              # doctest: +SKIP
    >>> plot_factor_sweep(result, "runs/eval/factor_sweep.png")                    # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

HEADER = ("method", "held-out concept", "instruction", "fluency", "steering score")


class ReportedResult(Protocol):
    """What the report reads from a :class:`hooksteer.evaluate.result.EvaluationResult` (which imports this
    module to write its reports, so the report does not import it back)."""

    config: dict[str, Any]
    concepts: Sequence[Any]  # ConceptResult records

    @property
    def methods(self) -> list[str]: ...

    def summary(self) -> dict[str, dict[str, float]]: ...


def _fmt(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _factor(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A GitHub markdown table.

    Example:
        >>> print(table([["a", "1"]], ["name", "value"]))
        | name | value |
        | --- | --- |
        | a | 1 |
    """
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_table(result: ReportedResult) -> str:
    """Per method: report-half ratings at the factor chosen on the selection half, averaged over concepts."""
    summary = result.summary()
    rows = [[method, *(_fmt(summary[method][key]) for key in ("concept", "instruction", "fluency", "score"))]
            for method in result.methods]
    return table(rows, HEADER)


def concept_table(result: ReportedResult) -> str:
    """Per method and concept: chosen factor, report-half ratings, collapsed factors."""
    rows = [[c.method, c.concept_id, _factor(c.chosen_factor),
             *(_fmt(c.report[key]) for key in ("concept", "instruction", "fluency", "score")),
             ", ".join(_factor(f) for f in c.collapsed_factors) or "—"]
            for c in result.concepts]
    return table(rows, ("method", "concept", "factor", "concept score", "instruction", "fluency",
                        "steering score", "collapsed at"))


def sweep_curves(result: ReportedResult, half: str = "report") -> dict[str, tuple[list[float], list[float]]]:
    """Per factor-using method: (factors, mean ``half`` score over concepts). Factor-free methods get ``([], [y])``."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for method in result.methods:
        per_factor: dict[float | None, list[float]] = {}
        for concept in (c for c in result.concepts if c.method == method):
            for cell in concept.cells:
                per_factor.setdefault(cell.factor, []).append(getattr(cell, half)["score"])
        factors = [f for f in per_factor if f is not None]
        if factors:
            factors.sort()
            curves[method] = (factors, [sum(per_factor[f]) / len(per_factor[f]) for f in factors])
        else:
            values = per_factor.get(None, [])
            curves[method] = ([], [sum(values) / len(values)] if values else [])
    return curves


def plot_factor_sweep(result: ReportedResult, path: str | Path, *, half: str = "report") -> Path:
    """Mean steering score vs factor per method (factor-free methods as horizontal lines); saves ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for k, (method, (factors, scores)) in enumerate(sweep_curves(result, half).items()):
        if factors:
            axes.plot(factors, scores, marker="o", color=f"C{k % 10}", label=method)
        elif scores:
            axes.axhline(scores[0], linestyle="--", color=f"C{k % 10}", label=f"{method} (no factor)")
    axes.set_xlabel("steering factor")
    axes.set_ylabel(f"mean steering score ({half} half, 0–2)")
    axes.set_title(f"Steering score vs factor ({len(set(c.concept_id for c in result.concepts))} concepts)")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def markdown_report(result: ReportedResult) -> str:
    """The summary table, then the per-concept table, with the run's key settings."""
    config = result.config
    settings = (f"model `{config.get('model')}`, judge `{config.get('judge')}`, seed {config.get('seed')}, "
                f"factors {config.get('factors')}, generation {config.get('generation')}")
    return "\n\n".join([
        "# Steering evaluation", settings,
        "Ratings on the report half of the base prompts at the factor chosen on the selection half.",
        markdown_table(result), "## Per concept", concept_table(result),
    ])
