"""The records of an evaluation run (:class:`EvaluationResult` and its parts), saved and reloaded as JSON.

:meth:`EvaluationResult.save` writes ``results.json``, ``generations.json``, ``results.md`` (markdown
table) and ``factor_sweep.png``; :func:`load_results` reads them back. Produced by
:func:`hooksteer.evaluate.protocol.evaluate`; formatted by :mod:`hooksteer.evaluate.report`.

Example:
    >>> from hooksteer.evaluate.result import load_results                        # doctest: +SKIP
    >>> print(load_results("runs/eval").to_markdown())                             # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hooksteer.evaluate.report import markdown_report, markdown_table, plot_factor_sweep

if TYPE_CHECKING:  # pragma: no cover
    from hooksteer.evaluate.methods import Factor

SCORE_FIELDS = ("concept", "instruction", "fluency", "score")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@dataclass
class Generation:
    """One generated answer and its ratings."""

    method: str
    concept_id: str
    prompt_id: str
    half: str  # "selection" or "report"
    factor: Factor
    output: str
    concept: float
    instruction: float
    fluency: float
    score: float


@dataclass
class FactorCell:
    """Mean ratings of one (method, concept, factor) cell on each half, and its collapse flag."""

    factor: Factor
    selection: dict[str, float]
    report: dict[str, float]
    collapsed: bool
    top_output_share: float


@dataclass
class ConceptResult:
    """A method's result on one concept: the chosen factor and the report half's mean ratings there."""

    method: str
    concept_id: str
    chosen_factor: Factor
    report: dict[str, float]
    cells: list[FactorCell]
    selection_prompt_ids: list[str]
    report_prompt_ids: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def collapsed_factors(self) -> list[Factor]:
        return [cell.factor for cell in self.cells if cell.collapsed]


@dataclass
class EvaluationResult:
    """Everything one :func:`evaluate` run produced (reloadable with :func:`load_results`)."""

    config: dict[str, Any]
    concepts: list[ConceptResult]
    generations: list[Generation]

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(c.method for c in self.concepts))

    def summary(self) -> dict[str, dict[str, float]]:
        """Per method: report-half ratings at the chosen factor, averaged over concepts (+ collapse count)."""
        rows: dict[str, dict[str, float]] = {}
        for method in self.methods:
            results = [c for c in self.concepts if c.method == method]
            rows[method] = {key: _mean([c.report[key] for c in results]) for key in SCORE_FIELDS}
            rows[method]["n_concepts"] = len(results)
            rows[method]["collapsed_cells"] = sum(len(c.collapsed_factors) for c in results)
        return rows

    def to_markdown(self) -> str:
        return markdown_table(self)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "summary": self.summary(), "concepts": [asdict(c) for c in self.concepts]}

    def save(self, out_dir: str | Path, *, plot: bool = True) -> Path:
        """Write ``results.json``, ``generations.json``, ``results.md`` and ``factor_sweep.png`` to ``out_dir``."""
        from hooksteer.io import atomic_write_files

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_files({  # all staged on disk before any is renamed
            out / "results.json": json.dumps(self.to_dict(), indent=2, allow_nan=False).encode(),
            out / "generations.json": json.dumps([asdict(g) for g in self.generations], indent=2,
                                                 allow_nan=False).encode(),
            out / "results.md": (markdown_report(self) + "\n").encode(),
        })
        if plot:
            plot_factor_sweep(self, out / "factor_sweep.png")
        return out



def load_results(out_dir: str | Path) -> EvaluationResult:
    """Reload what :meth:`EvaluationResult.save` wrote.

    Example:
        >>> result = load_results("runs/eval")                                     # doctest: +SKIP
    """
    out = Path(out_dir)
    data = json.loads((out / "results.json").read_text())
    generations = [Generation(**g) for g in json.loads((out / "generations.json").read_text())]
    concepts = []
    for entry in data["concepts"]:
        cells = [FactorCell(**cell) for cell in entry.pop("cells")]
        concepts.append(ConceptResult(**entry, cells=cells))
    return EvaluationResult(config=data["config"], concepts=concepts, generations=generations)
