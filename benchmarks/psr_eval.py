"""Benchmark: S-PSR and A-PSR (all layers) × MSE / likelihood / distill vs prompt steering vs DiffMean vs the
constant-vector floor, in ONE run, every steered method at its strength chosen by the same rule.

Steps (every setting is a flag and a field of :class:`PSREvalSettings`, saved as ``settings.json`` in the output folder;
``--tiny`` is a one-minute smoke run of the wiring on a tiny random model):

1. split    - ``--concepts`` held-out concepts (Wikipedia vital articles) and base prompts into train / eval
              (:func:`hooksteer.data.splits.make_split`, ``split.json``);
2. teachers - (a) prompt-steered answers sampled for each concept × ``--train-prompts`` prompts, judge-filtered,
              **every** accepted candidate kept (MSE / likelihood PSRs and the floor); (b) the prompted model's
              greedy answer to each concept × ``--distill-prompts`` prompts with its top-k next-token
              log-probs (:func:`hooksteer.distill.build_distill_teacher`, cached; distill PSRs);
3. Δ        - A_l(x'y') − A_l(xy') at every layer on the span = the assistant-turn template tokens + response
              (:func:`hooksteer.psr.compute_teacher`), with the response NLL after x and after x';
4. train    - per concept: S-PSR at ``--layer`` and A-PSR on ``--apsr-layers`` (default: all layers) with each
              loss, and the floor (A-PSR layers, w = 0, z_l = mean local residual, steps 0). Every PSR starts
              from the layer-by-layer fit of one steered pass; MSE PSRs train each layer on its local residual
              (``--local-steps``); likelihood / distill PSRs then train end to end (``--steps``) from
              ``--train-from`` up, with early stopping on held-out prompts. Diagnostics per layer: relative error
              ‖A_l^PSR − A_l(x'y')‖ / ‖Δ_l‖ (train / held-out), local R², dead gates; teacher-forced NLL;
5. evaluate - prompt steering, DiffMean (same layer, factor × residual norm) and every PSR in one
              :func:`hooksteer.evaluate.protocol.evaluate` call on the held-out base prompts; each steered method
              is wrapped in :class:`hooksteer.psr.search.AlphaSearch`: on the selection half the strength is raised
              until the mean fluency drops below ``--coherence-target`` (grid, then bisection), the report half
              is scored there (the best-selection-score strength is scored too, for comparison);
6. report   - per method concept / instruction / fluency / score with bootstrap 95 % intervals over concepts,
              paired differences, added norm relative to ‖h‖, dead gates while generating, per-layer fidelity
              plot (``fidelity_per_layer.png``), teacher concentration over tokens, ``results.md`` / ``.json``.

Usage::

    .venv/bin/python benchmarks/psr_eval.py --tiny
    .venv/bin/python benchmarks/psr_eval.py --threads 1 --concepts 20 --eval-prompts 6 --out runs/psr_eval20
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):  # hooksteer / analysis, and common.py (also when loaded via importlib)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
import common  # noqa: E402
from common import fmt, log  # noqa: E402

DEFAULT_OUT = REPO / "runs" / "benchmarks" / "psr_eval"
PSR_GRID = (0.5, 1.0, 2.0, 4.0)
DIFFMEAN_GRID = (0.1, 0.2, 0.4, 0.8)

#: seconds per unit on the shared 2-core CPU with one torch thread (measured on the embedded model; the
#: estimate printed before a run multiplies these by the run's sizes)
COST = {"teacher_candidate": 1.5, "distill_pair": 2.5, "delta_record": 2.5, "psr_init": 10.0, "e2e_step": 3.0,
        "diagnose": 6.0, "search_pair": 40.0, "prompt_pair": 10.0, "diffmean_concept": 5.0, "load": 60.0}


@dataclass
class PSREvalSettings:
    """Every setting of one benchmark run (saved as ``settings.json`` beside its outputs)."""

    out: str | None = field(default=None, metadata={
        "help": "output folder (default runs/benchmarks/psr_eval, or runs/benchmarks/psr_eval/tiny with --tiny)"})
    threads: int = field(default=1, metadata={"help": "torch threads"})
    seed: int = field(default=0, metadata={"help": "split / teacher / training / evaluation seed"})
    concept_seed: int = field(default=0, metadata={"help": "seed of load_concepts' shuffle"})
    concepts: int = field(default=22, metadata={"help": "held-out concepts drawn (those with fewer than 2 accepted "
                                                        "sampled teacher answers are dropped)"})
    eval_concepts: int = field(default=20, metadata={"help": "at most this many of them are evaluated"})
    prompt_sources: list[str] = field(default_factory=lambda: ["hand-written"], metadata={
        "help": "base-prompt sources (hand-written, mt-bench, writingbench)"})
    train_prompts: int = field(default=8, metadata={"help": "base prompts the sampling teacher answers"})
    distill_prompts: int = field(default=16, metadata={"help": "base prompts the distillation teacher answers"})
    eval_prompts: int = field(default=6, metadata={"help": "held-out base prompts (halves: selection/report)"})
    teacher_candidates: int = field(default=4, metadata={"help": "sampled teacher answers per concept × prompt"})
    teacher_tokens: int = field(default=32, metadata={"help": "max tokens of a teacher answer"})
    teacher_temperature: float = field(default=0.8, metadata={"help": "sampling temperature of the sampled teacher"})
    teacher_batch: int = field(default=32, metadata={"help": "teacher generation batch"})
    teacher_min_concept: float = field(default=1.0, metadata={
        "help": "judge concept rating (0-2) a sampled teacher answer needs to be accepted"})
    teacher_min_fluency: float = field(default=1.0, metadata={
        "help": "judge fluency rating (0-2) a sampled teacher answer needs to be accepted"})
    top_k: int = field(default=32, metadata={"help": "teacher log-probs kept per position (distillation)"})
    layer: int | None = field(default=None, metadata={"help": "S-PSR / DiffMean layer (default: 2/3 of the depth)"})
    apsr_layers: list[int] | None = field(default=None, metadata={
        "help": "A-PSR layers, e.g. '0-29' or '4,8,12' (default: all)"})
    train_from: int | None = field(default=None, metadata={
        "help": "end-to-end training of A-PSR updates layers >= this (default: --layer); lower layers keep their "
                "layer-by-layer fit"})
    local_steps: int = field(default=150, metadata={"help": "Adam steps per layer on its local MSE"})
    steps: int = field(default=20, metadata={"help": "end-to-end steps of the likelihood / distill PSRs"})
    lr: float = field(default=0.02, metadata={"help": "learning rate of the PSRs"})
    batch_size: int = field(default=4, metadata={"help": "PSR training batch size"})
    held_out_fraction: float = field(default=0.25, metadata={"help": "share of train prompts held out"})
    eval_every: int = field(default=5, metadata={"help": "held-out evaluation interval in end-to-end steps"})
    patience: int = field(default=2, metadata={
        "help": "held-out evaluations without improvement before early stopping"})
    positions: str = field(default="response", metadata={
        "help": "where PSRs steer (response = assistant-turn template tokens + generated tokens)",
        "choices": ["response", "generated", "after_sink"]})
    position_variants: list[str] = field(default_factory=lambda: ["after_sink"], metadata={
        "help": "also evaluate the A-PSR distill PSR steering these positions instead"})
    psr_grid: list[float] = field(default_factory=lambda: list(PSR_GRID), metadata={"help": "α grid of the search"})
    diffmean_grid: list[float] = field(default_factory=lambda: list(DIFFMEAN_GRID), metadata={
        "help": "DiffMean factor grid (× residual norm) of the search"})
    refine: int = field(default=1, metadata={"help": "bisection steps after the grid"})
    coherence_target: float = field(default=1.5, metadata={"help": "mean selection fluency (0-2) kept"})
    rule: str = field(default="coherence", metadata={"help": "how the strength is chosen",
                                                     "choices": ["coherence", "best_score"]})
    fidelity_concepts: int | None = field(default=None, metadata={
        "help": "concepts in the fidelity plot (default: all)"})
    heatmaps: int = field(default=3, metadata={"help": "concepts with a ‖Δ_t‖ vs λ_t token heatmap"})
    max_new_tokens: int = field(default=32, metadata={"help": "greedy tokens generated per evaluated answer"})
    eval_batch_size: int = field(default=32, metadata={"help": "generation batch"})
    model_class: str = field(default="bridge", metadata={
        "help": "model that generates (the bridge's fast path shares the weights)", "choices": ["bridge", "hooked"]})
    joint: bool = field(default=True, metadata={
        "help": "all methods of a concept share search batches (--no-joint: each method in its own batches)"})


TINY = {"concepts": 2, "train_prompts": 3, "distill_prompts": 3, "eval_prompts": 2, "teacher_tokens": 6,
        "teacher_candidates": 2, "local_steps": 5, "steps": 2, "max_new_tokens": 3, "top_k": 8,
        "teacher_min_concept": 0.0, "teacher_min_fluency": 0.0, "psr_grid": [0.5, 2.0],
        "diffmean_grid": [0.5, 2.0], "model_class": "hooked", "eval_every": 1, "held_out_fraction": 0.34}


# ---- settings
def parse_settings(argv: Sequence[str] | None = None) -> tuple[PSREvalSettings, argparse.Namespace]:
    """Settings from the command line (``--tiny`` shrinks every setting left at its default) and the parsed
    flags (for the actions ``--tiny``, ``--estimate-only``, ``--rerender``)."""
    from hooksteer.psr.cli import parse_layers
    from hooksteer.settings import add_arguments, from_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random model + keyword judge (smoke run)")
    p.add_argument("--estimate-only", action="store_true", help="print the time estimate and exit")
    p.add_argument("--rerender", type=Path, default=None, metavar="DIR",
                   help="only rewrite DIR/results.md from DIR/results.json (report changes after a run)")
    add_arguments(p, PSREvalSettings, skip=("apsr_layers",))
    p.add_argument("--apsr-layers", type=parse_layers, default=None,  # one LAYERS string, not a list of ints
                   help=PSREvalSettings.__dataclass_fields__["apsr_layers"].metadata["help"])
    args = p.parse_args(argv)
    settings = common.finish_settings(from_arguments(PSREvalSettings, args), p, tiny=args.tiny, tiny_values=TINY,
                                      validate=validate, default_out=DEFAULT_OUT)
    return settings, args


def validate(s: PSREvalSettings) -> list[str]:
    """Every problem with the settings (empty when they are fine), checked before anything runs."""
    from hooksteer.psr.model import POSITION_MODES

    problems = common.counts_below_one(s, ("threads", "concepts", "eval_concepts", "train_prompts", "distill_prompts",
                                           "teacher_candidates", "teacher_tokens", "teacher_batch", "top_k",
                                           "batch_size", "eval_every", "max_new_tokens", "eval_batch_size"))
    if s.eval_prompts < 2:
        problems.append("--eval-prompts must be >= 2")
    for name in ("prompt_sources", "psr_grid", "diffmean_grid"):
        if not getattr(s, name):
            problems.append(f"--{name.replace('_', '-')} needs at least one value")
    if not set(s.position_variants) <= set(POSITION_MODES):
        problems.append(f"--position-variants must be among {list(POSITION_MODES)}, got {s.position_variants}")
    return problems


# ---- estimate
def estimate_seconds(s: PSREvalSettings, n_layers: int = 30) -> dict[str, float]:
    """Rough seconds per stage on the shared CPU (see :data:`COST`)."""
    c = min(s.concepts, s.eval_concepts)
    n_psr = 7 + len([v for v in s.position_variants if v != s.positions])
    accepted = s.train_prompts * s.teacher_candidates * 0.35
    searched = n_psr + 1  # PSRs, floor and position variants + DiffMean
    per_search = COST["search_pair"] * (len(s.psr_grid) + s.refine + 2) / 7 * s.max_new_tokens / 32
    parts = {
        "load": COST["load"],
        "teacher (sampled + judged)": s.concepts * s.train_prompts * s.teacher_candidates * COST["teacher_candidate"],
        "teacher (distillation)": c * s.distill_prompts * COST["distill_pair"],
        "teacher Δ (all layers)": c * (accepted + s.distill_prompts) * COST["delta_record"],
        "PSR training": c * (7 * COST["psr_init"] + 4 * s.steps * COST["e2e_step"] * s.batch_size / 4
                             + 4 * COST["diagnose"]),
        "evaluation": c * (searched * per_search * (0.4 if s.joint else 1.0) + COST["prompt_pair"]
                           + COST["diffmean_concept"]),
    }
    parts["total"] = sum(parts.values())
    return parts


# ---- data
def load_data(s: PSREvalSettings, tiny: bool) -> tuple[list[Any], list[Any]]:
    """The ``--concepts`` concepts and the train + eval base prompts."""
    data_args = argparse.Namespace(tiny=tiny, concept_seed=s.concept_seed, prompt_sources=s.prompt_sources)
    concepts, prompts = common.load_concepts_and_prompts(data_args, s.concepts)
    n_prompts = max(s.train_prompts, s.distill_prompts) + s.eval_prompts
    if len(prompts) < n_prompts:
        raise SystemExit(f"need {n_prompts} base prompts, have {len(prompts)} (add --prompt-sources)")
    return concepts, common.pick_prompts(prompts, s.seed, n_prompts)


def teacher_analysis(records: Sequence[Any], layer: int, diffmean_unit: torch.Tensor | None) -> dict[str, float]:
    """Concentration of ‖Δ_t‖ over each response's tokens (mean over responses) and cosine with DiffMean."""
    from analysis.token_effects import concentration, projections

    stats = [concentration(r.delta_norms(layer)) for r in records if r.n_tokens >= 2]
    out = {"top10_share": statistics.mean(s["top10_share"] for s in stats) if stats else float("nan"),
           "gini": statistics.mean(s["gini"] for s in stats) if stats else float("nan"),
           "mean_delta_norm": float(torch.cat([r.delta_norms(layer) for r in records]).mean()),
           "mean_resid_norm": float(torch.cat([r.plain[layer][r.n_prefix :].norm(dim=-1) for r in records]).mean()),
           "n_tokens": sum(r.n_tokens for r in records)}
    if diffmean_unit is not None:
        deltas = torch.cat([r.delta[layer][r.n_prefix :] for r in records])
        cos = projections(deltas, diffmean_unit) / deltas.norm(dim=-1).clamp_min(1e-8)
        out["cos_delta_diffmean"] = float(cos.mean())
    return out


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and isinstance(v, int | float) and math.isfinite(float(v))]


def _mean(values: Sequence[Any]) -> float:
    vals = _finite(values)
    return sum(vals) / len(vals) if vals else float("nan")


# ---- plots
def draw_heatmap(model: Any, record: Any, psrs: dict[str, Any], layer: int, path: Path, concept: str) -> dict[str, Any]:
    """‖Δ_t‖ at ``layer`` next to each PSR's λ_t (its top layer, read through the inference hooks) on one response."""
    from analysis.token_effects import heatmap_png, pearson, spearman, token_labels
    from hooksteer.psr.trainer import response_gates

    norms = record.delta_norms(layer)
    rows = {f"‖Δ_t‖ (layer {layer})": norms}
    corr = {}
    for name, psr in psrs.items():
        lam = response_gates(model, psr, record)[layer if layer in psr.layers else psr.layers[-1]]
        rows[f"λ_t {name}"] = lam
        varies = lam.numel() > 1 and float(lam.std()) > 0
        corr[name] = {"pearson": pearson(lam, norms) if varies else None,
                      "spearman": spearman(lam, norms) if varies else None}
    heatmap_png(token_labels(model, record.pair.response), rows, path,
                title=f"{concept}: where prompt steering acts (‖Δ_t‖) vs PSR gates λ_t (rows scaled to their max)")
    return corr


def fidelity_plot(curves: dict[str, dict[str, list[float]]], layers: list[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for i, (name, parts) in enumerate(curves.items()):
        color = f"C{i % 10}"
        for part, style in (("train", "-"), ("held_out", "--")):
            ys = parts.get(part)
            if ys and any(math.isfinite(y) for y in ys):
                ax.plot(layers, ys, style, color=color, label=f"{name} ({part.replace('_', '-')})")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("layer")
    ax.set_ylabel("‖A_l^PSR − A_l(x'y')‖ / ‖Δ_l‖   (1 = unsteered)")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- report
def score_rows(result: Any, methods: Sequence[str], concepts: Sequence[str]) -> tuple[dict[str, Any], list[dict]]:
    """Per method: mean and bootstrap interval over concepts of each rating (report half), plus search info."""
    from hooksteer.evaluate.stats import bootstrap_ci

    rows = [{**c.report, "method": c.method, "concept_id": c.concept_id, **{
        k: v for k, v in c.info.items() if k.startswith(("alpha", "added_rel", "dead_share", "search_report",
                                                          "search_selection", "search_tested", "search_target"))}}
            for c in result.concepts]
    table = {}
    for method in methods:
        mine = {r["concept_id"]: r for r in rows if r["method"] == method}
        entry: dict[str, Any] = {}
        for key in ("concept", "instruction", "fluency", "score"):
            values = [mine[c][key] for c in concepts]
            entry[key] = bootstrap_ci(values, seed=0).to_dict()
        alt = [mine[c].get("search_report_best_score_score") for c in concepts]
        if all(v is not None for v in alt):
            entry["score_best_score_rule"] = bootstrap_ci([float(v) for v in alt], seed=0).to_dict()
        alphas = _finite([mine[c].get("alpha") for c in concepts])
        entry["alpha_median"] = statistics.median(alphas) if alphas else None
        entry["added_rel_chosen"] = _mean([mine[c].get(f"added_rel_{mine[c].get('search_rule', 'coherence')}")
                                           for c in concepts])
        entry["dead_share_generation"] = _mean([mine[c].get(f"dead_share_{mine[c].get('search_rule', 'coherence')}")
                                                for c in concepts])
        entry["target_missed"] = sum(1 for c in concepts
                                     if mine[c].get("search_selection_coherence_fluency") is not None
                                     and mine[c]["search_selection_coherence_fluency"] < mine[c].get("search_target", 0))
        table[method] = entry
    return table, rows


def paired(rows: Sequence[dict], a: str, b: str, concepts: Sequence[str], key: str = "score") -> dict[str, Any]:
    from hooksteer.evaluate.stats import paired_difference_ci, per_concept_scores

    diff = paired_difference_ci(per_concept_scores(rows, a, concepts, key), per_concept_scores(rows, b, concepts, key),
                                seed=0)
    return {"a": a, "b": b, **diff.to_dict()}


def ci_text(d: dict[str, Any] | None) -> str:
    if not d:
        return "—"
    return f"{d['mean']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def markdown(report: dict[str, Any]) -> str:
    from hooksteer.evaluate.report import table

    cfg = report["config"]
    data = report["data"]
    lines = ["# PSR vs prompt steering vs DiffMean vs the constant-vector floor", "",
             f"Model `{report['model']}`, judge `{report['judge']}`; S-PSR / DiffMean layer {report['layer']}, "
             f"A-PSR layers {report['apsr_layers'][0]}–{report['apsr_layers'][-1]} ({len(report['apsr_layers'])}), "
             f"end-to-end training from layer {report['train_from']}; PSR positions `{cfg['positions']}` "
             f"(= the {report['template_tokens']} assistant-turn template tokens + generated tokens when 'response'). "
             f"{data['n_concepts']} held-out concepts × {data['n_eval_prompts']} held-out prompts (strength chosen on "
             f"half, reported on the other half), {cfg['max_new_tokens']} greedy tokens, seed {cfg['seed']}; "
             f"{len(data.get('dropped_concepts', []))} drawn concepts dropped for fewer than 2 accepted sampled teacher "
             "answers. "
             f"Sampled teacher: {data['n_teacher_examples']} accepted answers (every accepted candidate, "
             f"{cfg['train_prompts']} prompts × {cfg['teacher_candidates']} samples per concept); distillation "
             f"teacher: {data['n_distill_records']} greedy answers ({cfg['distill_prompts']} prompts per concept, "
             f"top-{cfg['top_k']}).", "",
             f"Strength rule for every steered method: raise it on the selection half until the mean fluency drops "
             f"below {cfg['coherence_target']} (grid PSR α {cfg['psr_grid']}, DiffMean factor {cfg['diffmean_grid']}, "
             f"then {cfg['refine']} bisection step(s)); reported rule: `{cfg['rule']}`. Intervals: bootstrap 95 % over "
             "concepts.", "", "## Steering scores (report half)", ""]
    body = []
    for m, r in sorted(report["scores"].items(), key=lambda kv: -kv[1]["score"]["mean"]):
        body.append([m, ci_text(r["concept"]), ci_text(r["instruction"]), ci_text(r["fluency"]), ci_text(r["score"]),
                     ci_text(r.get("score_best_score_rule")), fmt(r.get("alpha_median"), 2),
                     fmt(r.get("added_rel_chosen")), fmt(r.get("dead_share_generation")), str(r.get("target_missed", ""))])
    lines.append(table(body, ("method", "concept", "instruction", "fluency", "score", "score (best-score rule)",
                              "median α / factor", "added ‖·‖/‖h‖ per layer", "dead gates (generation)",
                              "concepts below target")))
    lines += ["", "*added ‖·‖/‖h‖*: mean over the steered tokens of ‖α·λ_t·z‖ / ‖h_t‖ while generating at the chosen "
              "strength, averaged over the steered layers (DiffMean: its single layer). *score (best-score rule)*: the "
              "report half at the strength with the best selection-half score.", "",
              "## Paired differences (score, bootstrap 95 % over concepts)", ""]
    body = [[f"{d['a']} − {d['b']}", f"{d['mean']:+.3f}", f"[{d['low']:+.3f}, {d['high']:+.3f}]",
             "yes" if d["excludes_zero"] else "no"] for d in report["paired"]]
    lines.append(table(body, ("difference", "mean", "95 % interval", "excludes 0")))
    lines += ["", "## PSR fidelity, gate health and generalisation (means over concepts)", ""]
    body = []
    for m, r in report["psr_training"].items():
        body.append([m, fmt(r.get("n_train"), 1), fmt(r.get("rel_error_top_train")), fmt(r.get("rel_error_top_held_out")),
                     fmt(r.get("rel_error_last_held_out")), fmt(r.get("local_r2_mean_train")),
                     fmt(r.get("dead_share_max_train")), fmt(r.get("dead_layers_train"), 1),
                     fmt(r.get("nll_plain_held_out")), fmt(r.get("nll_psr_held_out")), fmt(r.get("nll_prompted_held_out")),
                     fmt(r.get("nll_gap_closed_held_out")), fmt(r.get("kl_held_out")), fmt(r.get("train_seconds"), 1)])
    lines.append(table(body, ("PSR", "train responses", "rel. error top PSR layer (train)", "(held-out)",
                              "rel. error last layer (held-out)", "local R² (mean over layers)", "max dead share",
                              "layers with a dead example", "NLL unsteered", "NLL PSR", "NLL prompted",
                              "share of NLL gap closed (held-out)", "KL to teacher (held-out)", "train s")))
    lines += ["", "Relative error ‖A_l^PSR − A_l(x'y')‖ / ‖Δ_l‖ on the span tokens (1 = what the unsteered model "
              "does, 0 = exactly the prompted activations); *local R²*: share of each layer's local residual "
              "A_l(x'y') − H_l (H_l steered by the layers below) its own term explains; NLL of the held-out teacher "
              "responses per token (MSE / likelihood / floor: sampled answers; distill: greedy prompted answers); "
              "*share of gap closed* = (NLL unsteered − NLL PSR) / (NLL unsteered − NLL prompted). Per-layer curves: "
              "`fidelity_per_layer.png`.", "", "## Teacher: how concentrated prompt steering is over tokens "
              f"(layer {report['layer']}, means over concepts)", ""]
    t = report["teacher_summary"]
    lines.append(table([[k, fmt(v)] for k, v in t.items()], ("quantity", "value")))
    lines += ["", "Uniform Δ would give a top-10% share of 0.10 and a Gini of 0.", "", "## Timing", "",
              table([[k, f"{v:.0f}"] for k, v in report["seconds"].items()], ("stage", "seconds")), "",
              "## Verdict", "", report["verdict"], ""]
    return "\n".join(lines)


def verdict(report: dict[str, Any]) -> str:
    scores = {m: r["score"]["mean"] for m, r in report["scores"].items()}
    order = " > ".join(f"{m} {s:.3f}" for m, s in sorted(scores.items(), key=lambda kv: -kv[1]))
    parts = [f"Ranking ({report['data']['n_concepts']} concepts): {order}."]
    for d in report["paired"]:
        if d["excludes_zero"]:
            parts.append(f"{d['a']} {'beats' if d['mean'] > 0 else 'loses to'} {d['b']} "
                         f"({d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]).")
    undecided = [d for d in report["paired"] if not d["excludes_zero"]]
    if undecided:
        parts.append(f"{len(undecided)} of {len(report['paired'])} paired differences are not separable from noise "
                     "(interval includes 0).")
    parts += [diagnosis(name, row) for name, row in report["psr_training"].items()]
    return " ".join(p for p in parts if p)


def diagnosis(name: str, row: dict[str, Any]) -> str:
    """Where a PSR stands on fidelity (NLL gap closed, relative error), generalisation (train vs held-out
    error) and gate health (dead shares), from its training diagnostics."""
    bits = []
    gap, train, held = row.get("nll_gap_closed_held_out"), row.get("rel_error_top_train"), row.get("rel_error_top_held_out")
    if gap is not None and math.isfinite(gap):
        bits.append(f"closes {gap:.0%} of the held-out NLL gap between unsteered and prompted")
    if train is not None and held is not None and math.isfinite(train) and math.isfinite(held):
        bits.append(f"relative error at its top layer {train:.2f} on training responses vs {held:.2f} held out")
    dead = row.get("dead_share_max_train")
    if dead is not None and math.isfinite(dead):
        bits.append(f"largest dead-gate share over layers {dead:.2f}")
    return f"{name}: " + "; ".join(bits) + "." if bits else ""


def rerender(folder: Path) -> None:
    """Rewrite ``results.md`` (and the verdict in ``results.json``) from a finished run's ``results.json``."""
    report = json.loads((folder / "results.json").read_text())
    report["verdict"] = verdict(report)
    (folder / "results.json").write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    (folder / "results.md").write_text(text)
    print(text)


# ---- main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings, args = parse_settings(argv)
    s, tiny = settings, args.tiny
    if args.rerender is not None:
        rerender(args.rerender)
        return {}
    estimate = estimate_seconds(s)
    log("time estimate (shared 2-core CPU, 1 thread): " + ", ".join(f"{k} {v / 60:.0f} min" for k, v in estimate.items()))
    if args.estimate_only:
        return {"estimate": estimate}
    out = Path(s.out)  # type: ignore[arg-type]
    # what common's helpers read (run_info writes it as results.json's "config"): the settings and the actions
    run = argparse.Namespace(**{**dataclasses.asdict(s), "out": out, "tiny": tiny,
                                "estimate_only": args.estimate_only, "rerender": args.rerender})
    began = common.start_run(run)
    from hooksteer.settings import save_settings

    save_settings(settings, out / "settings.json")

    import analysis.token_effects  # noqa: F401  (imported now: a long run must not fail on a late import)
    import hooksteer.evaluate.stats  # noqa: F401
    import hooksteer.psr.trainer  # noqa: F401
    from hooksteer.distill import DistillConfig, build_distill_teacher
    from hooksteer.evaluate.methods import DiffMeanMethod, GenerationSettings, PromptSteering, pool_texts_for
    from hooksteer.evaluate.protocol import evaluate
    from hooksteer.hypersteer.config import default_layer
    from hooksteer.psr import PSRConfig
    from hooksteer.psr.evaluation import PSRMethod, PSRTeacherData, accepted_examples
    from hooksteer.psr.joint import JointSearch
    from hooksteer.psr.search import AlphaSearch, CachedJudge

    seconds: dict[str, float] = {}
    stage = time.perf_counter()
    log("loading model and data ...")
    model = common.load_model(tiny, s.seed)
    generator = model if s.model_class == "hooked" else common.load_bridge(tiny, s.seed)
    generator.requires_grad_(False)
    n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    layer = s.layer if s.layer is not None else default_layer(n_layers)
    apsr_layers = s.apsr_layers or list(range(n_layers))
    train_from = s.train_from if s.train_from is not None else layer
    concepts, prompts = load_data(s, tiny)
    split = common.save_split(concepts, prompts, out / "split.json", seed=s.seed, held_out=len(concepts),
                              held_in=0, eval_prompts=s.eval_prompts)
    eval_concepts = split.select(concepts, split.held_out_concepts)
    train_pool = split.select(prompts, split.train_prompts)
    eval_prompts = split.select(prompts, split.eval_prompts)
    sampled_prompts, distill_prompts = train_pool[: s.train_prompts], train_pool[: s.distill_prompts]
    judge = CachedJudge(common.make_judge(tiny, model))
    seconds["load"] = time.perf_counter() - stage

    stage = time.perf_counter()
    log(f"sampled teacher: {len(eval_concepts)} concepts × {len(sampled_prompts)} prompts × {s.teacher_candidates} ...")
    result, teacher_stats = common.teacher_targets(run, generator, judge, eval_concepts, sampled_prompts,
                                                   out / "teacher.jsonl")
    from hooksteer.data.teacher import TeacherConfig

    examples = accepted_examples(result, TeacherConfig(**teacher_stats["settings"]))
    seconds["teacher_sampled"] = time.perf_counter() - stage
    missing = [c.id for c in eval_concepts if len(examples.get(c.id, [])) < 2]
    if missing:
        log(f"fewer than 2 accepted sampled answers for {missing}: these concepts are dropped")
        eval_concepts = [c for c in eval_concepts if c.id not in missing]
    eval_concepts = eval_concepts[: s.eval_concepts]
    if not eval_concepts:
        raise SystemExit("no concept has teacher answers: nothing to train PSR on")
    stage = time.perf_counter()
    log(f"distillation teacher: {len(eval_concepts)} concepts × {len(distill_prompts)} prompts ...")
    distill = build_distill_teacher(model, [(c, b) for c in eval_concepts for b in distill_prompts],
                                    DistillConfig(max_new_tokens=s.teacher_tokens, top_k=s.top_k,
                                                  batch_size=s.teacher_batch),
                                    cache_dir=out / "distill_cache", generator=generator, progress=not tiny)
    seconds["teacher_distill"] = time.perf_counter() - stage
    ids = [c.id for c in eval_concepts]
    log(f"teacher: {sum(len(examples[c]) for c in ids)} accepted sampled answers, {len(distill)} distillation records")

    all_layers = sorted({layer, *apsr_layers})
    data_s = PSRTeacherData(model, {c: examples[c] for c in ids}, all_layers, max_response_tokens=s.teacher_tokens,
                            prefix_tokens="auto", nll=True)
    data_d = PSRTeacherData.from_distill(model, distill.select(ids), all_layers,
                                         concepts={c.id: c for c in eval_concepts}, prefix_tokens="auto", nll=True)
    common_cfg = {"d_model": d_model, "lr": s.lr, "batch_size": s.batch_size, "seed": s.seed,
                  "positions": s.positions, "local_steps": s.local_steps,
                  "held_out_fraction": s.held_out_fraction, "eval_every": s.eval_every, "patience": s.patience}
    single = {"layers": [layer], "variant": "single"}
    adaptive = {"layers": apsr_layers, "variant": "adaptive"}
    e2e = {"steps": s.steps}
    psr_methods = [
        PSRMethod(data_s, PSRConfig(**single, loss="mse", steps=0, **common_cfg)),
        PSRMethod(data_s, PSRConfig(**single, loss="likelihood", **e2e, **common_cfg)),
        PSRMethod(data_d, PSRConfig(**single, loss="distill", **e2e, **common_cfg)),
        PSRMethod(data_s, PSRConfig(**adaptive, loss="mse", steps=0, **common_cfg)),
        PSRMethod(data_s, PSRConfig(**adaptive, loss="likelihood", train_from_layer=train_from, **e2e, **common_cfg)),
        PSRMethod(data_d, PSRConfig(**adaptive, loss="distill", train_from_layer=train_from, **e2e, **common_cfg)),
        PSRMethod(data_s, PSRConfig(**adaptive, loss="mse", steps=0, init="mean_delta",
                                    **{**common_cfg, "local_steps": 0}), name="constant-floor"),
    ]
    for method in psr_methods:  # saved PSRs (and their diagnostics) are reloaded by a rerun with the same --out
        method.save_dir = out / "psrs" / method.name
    by_name = {m.name: m for m in psr_methods}
    variants = []
    for positions in s.position_variants:
        if positions == s.positions:
            continue
        base = by_name["a-psr-distill"]
        variant = PSRMethod(base.data, base.psr_config, name=f"a-psr-distill@{positions}", positions=positions)
        variant.psrs, variant.training = base.psrs, base.training  # the same trained PSRs, other positions
        variants.append(variant)

    stage = time.perf_counter()
    log(f"training {len(psr_methods)} PSRs per concept ({len(ids)} concepts, {len(all_layers)} layers) ...")
    previous = json.loads((out / "training.json").read_text()) if (out / "training.json").is_file() else {}
    teacher: dict[str, Any] = {}
    heat: dict[str, Any] = {}
    for i, concept in enumerate(eval_concepts):
        t0 = time.perf_counter()
        for method in psr_methods:
            method.train(concept)
        if concept.id in previous.get("teacher", {}) and all("loaded_from" in m.training[concept.id]
                                                              for m in psr_methods):
            teacher[concept.id] = previous["teacher"][concept.id]  # a rerun: the PSRs were loaded
            heat[concept.id] = previous.get("heatmap_correlations", {}).get(concept.id)
        else:
            teacher[concept.id] = teacher_analysis(data_s.records(concept.id), layer, None)
        if i < s.heatmaps and concept.id not in heat:
            heat[concept.id] = draw_heatmap(model, data_s.records(concept.id)[0],
                                            {m.name: m.psrs[concept.id] for m in psr_methods if m.data is data_s},
                                            layer, out / f"heatmap_{concept.id}.png", concept.title)
        data_s.release(concept.id)
        data_d.release(concept.id)
        (out / "training.json").write_text(json.dumps(  # progress on disk: the diagnostics survive a crash later on
            {"teacher": teacher, "heatmap_correlations": heat,
             "psr_training_per_concept": {m.name: m.training for m in psr_methods}}, indent=1, default=str))
        done = time.perf_counter() - stage
        log(f"  {concept.id}: {time.perf_counter() - t0:.0f} s ({i + 1}/{len(ids)}, ETA training "
            f"{done / (i + 1) * (len(ids) - i - 1) / 60:.0f} min)")
    seconds["psr_training"] = time.perf_counter() - stage

    generation = GenerationSettings(max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch_size)
    joint = JointSearch(generation, seed=s.seed) if s.joint else None
    search = {"judge": judge, "prompts": eval_prompts, "settings": generation, "seed": s.seed,
              "target": s.coherence_target, "refine": s.refine, "rule": s.rule, "joint": joint}
    diffmean = DiffMeanMethod(layer=layer, texts_for=pool_texts_for(list(concepts)))
    methods: list[Any] = [PromptSteering(), AlphaSearch(diffmean, grid=s.diffmean_grid, **search)]
    methods += [AlphaSearch(m, grid=s.psr_grid, **search) for m in [*psr_methods, *variants]]
    stage = time.perf_counter()
    log(f"evaluating {[m.name for m in methods]} on {len(ids)} concepts × {len(eval_prompts)} held-out prompts ...")
    evaluation = evaluate(generator, methods, eval_concepts, eval_prompts, judge=judge, factors=[1.0],
                          max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch_size, seed=s.seed,
                          out_dir=out / "evaluation", progress=not tiny)
    seconds["evaluate"] = time.perf_counter() - stage

    names = [m.name for m in methods]
    scores, rows = score_rows(evaluation, names, ids)
    comparisons = [(m.name, "prompt") for m in psr_methods] + [(m.name, "diffmean") for m in psr_methods]
    comparisons += [(m.name, "constant-floor") for m in psr_methods if m.name != "constant-floor"]
    comparisons += [("diffmean", "prompt"), *[(v.name, "a-psr-distill") for v in variants]]
    paired_rows = [paired(rows, a, b, ids) for a, b in comparisons]

    psr_training: dict[str, Any] = {}
    for m in [*psr_methods, *variants]:
        if m in variants:
            continue
        info = list(m.training.values())
        keys = sorted({k for r in info for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)})
        summary = {k: _mean([r.get(k) for r in info]) for k in keys}
        gaps = [(r["nll_plain_held_out"] - r["nll_psr_held_out"]) / (r["nll_plain_held_out"] - r["nll_prompted_held_out"])
                for r in info if all(r.get(k) is not None for k in ("nll_plain_held_out", "nll_psr_held_out",
                                                                     "nll_prompted_held_out"))
                and abs(r["nll_plain_held_out"] - r["nll_prompted_held_out"]) > 1e-6]
        summary["nll_gap_closed_held_out"] = _mean(gaps)
        psr_training[m.name] = summary

    fidelity_ids = ids[: s.fidelity_concepts] if s.fidelity_concepts else ids
    curves = {}
    for m in psr_methods:
        per_concept = [m.training[c].get("rel_error_per_layer", {}) for c in fidelity_ids]
        curves[m.name] = {part: [_mean([pc.get(str(x), {}).get(part) for pc in per_concept]) for x in all_layers]
                          for part in ("train", "held_out")}
    fidelity_plot(curves, all_layers, out / "fidelity_per_layer.png",
                  f"per-layer fidelity, mean over {len(fidelity_ids)} concepts (solid: train, dashed: held-out)")
    teacher_summary = {k: _mean([t[k] for t in teacher.values()]) for k in ("top10_share", "gini", "mean_delta_norm",
                                                                              "mean_resid_norm", "n_tokens")}
    dead_per_layer = {m.name: {str(x): _mean([m.training[c].get("dead_share_per_layer", {}).get(str(x)) for c in ids])
                               for x in m.psr_config.layers} for m in psr_methods}
    report = {
        **common.run_info("psr_eval", run, argv, model, judge),
        "layer": layer, "apsr_layers": apsr_layers, "train_from": train_from,
        "template_tokens": data_s.prefix_tokens, "estimate_seconds": estimate,
        "data": {"n_concepts": len(ids), "concepts": ids, "dropped_concepts": missing,
                 "n_train_prompts": len(sampled_prompts),
                 "n_distill_prompts": len(distill_prompts), "n_eval_prompts": len(eval_prompts),
                 "eval_prompts": [p.text for p in eval_prompts],
                 "n_teacher_examples": sum(len(examples[c]) for c in ids),
                 "teacher_examples_per_concept": {c: len(examples[c]) for c in ids},
                 "n_distill_records": len(distill.select(ids)), "teacher": teacher_stats, "distill": distill.stats},
        "scores": scores, "paired": paired_rows, "per_concept": rows,
        "psr_training": psr_training, "psr_training_per_concept": {m.name: m.training for m in psr_methods},
        "fidelity_curves": {"layers": all_layers, **curves}, "dead_share_per_layer": dead_per_layer,
        "teacher": teacher, "teacher_summary": teacher_summary, "heatmap_correlations": heat,
        "judge_calls": judge.calls,
        "seconds": seconds,
    }
    report["verdict"] = verdict(report)
    common.save_report(report, out, began, markdown)
    return report


if __name__ == "__main__":
    main()
