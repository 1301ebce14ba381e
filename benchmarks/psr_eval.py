"""Benchmark: S-PSR / A-PSR (MSE and likelihood) vs prompt steering vs DiffMean (vs HyperSteer) in ONE run.

Steps (every setting is a flag; the defaults are a small CPU run on the embedded SmolLM2-135M-Instruct):

1. split   - ``--concepts`` held-out concepts (Wikipedia vital articles) and base prompts into train / eval
             with :func:`hooksteer.data.splits.make_split` (``split.json``);
2. teacher - prompt-steered answers for each concept x *train* prompts, sampled and filtered by the judge
             (:func:`hooksteer.data.teacher.generate_teacher_targets`, cached in ``teacher.jsonl``);
3. Δ       - per-token teacher change A_l(x'y') − A_l(xy') on the accepted answers
             (:func:`hooksteer.psr.compute_teacher`); concentration of ‖Δ_t‖ over tokens (top-10 % share,
             Gini), cosine of Δ_t with the concept's DiffMean vector;
4. train   - per concept: S-PSR at ``--layer`` and A-PSR on ``--apsr-layers``, each with the MSE and the
             likelihood loss (:func:`hooksteer.psr.train_psr`); teacher fit (R² of λz vs Δ, next to the best
             constant vector's R²) and corr(λ_t, ‖Δ_t‖);
5. evaluate - prompt steering, DiffMean (same layer), the four PSRs (and a saved HyperSteer with
             ``--hypersteer DIR``) in one :func:`hooksteer.evaluate.protocol.evaluate` call on the *eval*
             (held-out) base prompts: factor chosen on half of them, reported on the other half.
6. heatmap - ‖Δ_t‖ next to λ_t of each PSR over one teacher response (``heatmap_<concept>.png``).

A PSR factor f means α = f / f₀ with f₀ = mean‖Δ‖ / mean‖h‖ (see :mod:`hooksteer.psr.evaluation`): at factor
f a PSR that reproduces the teacher adds on average f x a typical residual norm, as DiffMean does at f.

``--tiny`` runs the same pipeline on a tiny random model with hand-made concepts and a keyword judge in about a
minute (a smoke test of the wiring; its numbers mean nothing).

Usage::

    .venv/bin/python benchmarks/psr_eval.py --tiny
    .venv/bin/python benchmarks/psr_eval.py                   # ~15-20 min on one CPU core
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from hooksteer.psr.cli import parse_layers

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random model + keyword judge (smoke run)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concept-seed", type=int, default=0)
    p.add_argument("--concepts", type=int, default=4, help="held-out concepts evaluated")
    p.add_argument("--prompt-sources", nargs="+", default=["hand-written"])
    p.add_argument("--train-prompts", type=int, default=10, help="base prompts the teacher answers (PSR training)")
    p.add_argument("--eval-prompts", type=int, default=6, help="held-out base prompts (halves: selection/report)")
    p.add_argument("--teacher-candidates", type=int, default=2)
    p.add_argument("--teacher-tokens", type=int, default=32)
    p.add_argument("--teacher-temperature", type=float, default=0.8)
    p.add_argument("--teacher-batch", type=int, default=16)
    p.add_argument("--teacher-min-concept", type=float, default=1.0)
    p.add_argument("--teacher-min-fluency", type=float, default=1.0)
    p.add_argument("--layer", type=int, default=None, help="S-PSR / DiffMean layer (default: 2/3 of the depth)")
    p.add_argument("--apsr-layers", type=parse_layers, default=None,
                   help="A-PSR layers, e.g. '14-20' (default: the 7 layers ending at --layer)")
    p.add_argument("--steps-closed", type=int, default=200, help="steps of S-PSR + MSE (no forward pass)")
    p.add_argument("--steps", type=int, default=25, help="steps of the other PSRs (forward + backward)")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--regulariser", type=float, default=0.0)
    p.add_argument("--hypersteer", type=Path, default=None,
                   help="folder of a saved HyperSteer (trained on concepts that exclude these) to compare too")
    p.add_argument("--factors", type=float, nargs="+", default=[0.1, 0.2, 0.35, 0.5])
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=32)
    args = p.parse_args(argv)
    if args.tiny:
        tiny = {"concepts": 2, "train_prompts": 3, "eval_prompts": 2, "teacher_tokens": 8, "steps_closed": 20,
                "steps": 3, "factors": [0.5, 2.0], "max_new_tokens": 4, "teacher_min_concept": 0.0,
                "teacher_min_fluency": 0.0}
        common.apply_tiny_defaults(args, p, tiny)
    if args.eval_prompts < 2:
        p.error("--eval-prompts must be >= 2")
    if args.out is None:
        args.out = DEFAULT_OUT / "tiny" if args.tiny else DEFAULT_OUT
    return args


def load_data(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """The ``--concepts`` concepts and the train + eval base prompts."""
    concepts, prompts = common.load_concepts_and_prompts(args, args.concepts)
    n_prompts = args.train_prompts + args.eval_prompts
    if len(prompts) < n_prompts:
        raise SystemExit(f"need {n_prompts} base prompts, have {len(prompts)}")
    return concepts, common.pick_prompts(prompts, args.seed, n_prompts)


def teacher_examples(args: argparse.Namespace, model: Any, judge: Any, concepts: Sequence[Any],
                     prompts: Sequence[Any], cache: Path) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Teacher examples per concept id (every (concept, prompt) pair tried), and the generation stats."""
    result, stats = common.teacher_targets(args, model, judge, concepts, prompts, cache)
    by_concept = {c.id: [e for e in result.examples if e.concept_id == c.id] for c in concepts}
    return by_concept, stats


def teacher_analysis(records: Sequence[Any], layer: int, diffmean_unit: torch.Tensor | None) -> dict[str, float]:
    """Concentration of ‖Δ_t‖ over each response's tokens (mean over responses) and cosine with DiffMean."""
    from analysis.token_effects import concentration, projections

    stats = [concentration(r.delta_norms(layer)) for r in records]
    out = {"top10_share": statistics.mean(s["top10_share"] for s in stats),
           "gini": statistics.mean(s["gini"] for s in stats),
           "max_over_median": statistics.mean(s["max_over_median"] for s in stats),
           "mean_delta_norm": float(torch.cat([r.delta_norms(layer) for r in records]).mean()),
           "mean_resid_norm": float(torch.cat([r.plain[layer].norm(dim=-1) for r in records]).mean()),
           "n_tokens": sum(r.n_tokens for r in records)}
    if diffmean_unit is not None:
        deltas = torch.cat([r.delta[layer] for r in records])
        cos = projections(deltas, diffmean_unit) / deltas.norm(dim=-1).clamp_min(1e-8)
        out["cos_delta_diffmean"] = float(cos.mean())
        mean_delta = deltas.mean(dim=0)
        out["cos_mean_delta_diffmean"] = float(mean_delta @ diffmean_unit / mean_delta.norm().clamp_min(1e-8))
    return out


def draw_heatmap(model: Any, record: Any, psrs: dict[str, Any], layer: int, path: Path, concept: str) -> dict[str, float]:
    from analysis.token_effects import heatmap_png, pearson, spearman, token_labels
    from hooksteer.psr.trainer import response_gates

    norms = record.delta_norms(layer)
    rows = {f"‖Δ_t‖ (layer {layer})": norms}
    corr = {}
    for name, psr in psrs.items():
        lam = response_gates(model, psr, record)[psr.layers[-1]]
        rows[f"λ_t {name}"] = lam
        corr[name] = {"pearson": pearson(lam, norms) if lam.std() > 0 else float("nan"),
                      "spearman": spearman(lam, norms) if lam.std() > 0 else float("nan")}
    heatmap_png(token_labels(model, record.pair.response), rows, path,
                title=f"{concept}: where prompt steering acts (‖Δ_t‖) vs PSR gates λ_t (rows scaled to their max)")
    return corr


def markdown(report: dict[str, Any]) -> str:
    from hooksteer.evaluate.report import table

    cfg = report["config"]
    lines = ["# PSR vs prompt steering vs DiffMean", "",
             f"Model `{report['model']}`, judge `{report['judge']}`, layer {report['layer']} (A-PSR layers "
             f"{report['apsr_layers']}), seed {cfg['seed']}, factors {cfg['factors']}, {cfg['max_new_tokens']} new "
             f"tokens (greedy). {report['data']['n_concepts']} concepts; PSRs trained on teacher answers to "
             f"{report['data']['n_train_prompts']} train prompts ({report['data']['n_teacher_examples']} accepted "
             f"examples); evaluated on {report['data']['n_eval_prompts']} held-out prompts (factor chosen on half, "
             "scored on the other half).", "", "## Steering scores (report half, chosen factor)", ""]
    lines.append(common.score_table(report["scores"]))
    lines += ["", "## Teacher: how concentrated prompt steering is over tokens", ""]
    body = [[c, str(t["n_tokens"]), fmt(t["top10_share"]), fmt(t["gini"]), fmt(t["max_over_median"], 2),
             fmt(t["mean_delta_norm"], 1), fmt(t["mean_resid_norm"], 1), fmt(t.get("cos_delta_diffmean")),
             fmt(t.get("cos_mean_delta_diffmean"))] for c, t in report["teacher"].items()]
    lines.append(table(body, ("concept", "tokens", "top-10% share of Σ‖Δ‖", "Gini", "max/median", "mean ‖Δ‖",
                              "mean ‖h‖", "mean cos(Δ_t, DiffMean)", "cos(mean Δ, DiffMean)")))
    lines += ["", "Uniform Δ would give a top-10% share of 0.10 and a Gini of 0.", "",
              "## PSR training and teacher fit (means over concepts)", ""]
    body = [[m, fmt(r["initial_loss"]), fmt(r["final_loss"]), fmt(r["fit_r2"]), fmt(r["fit_r2_constant"]),
             fmt(r["fit_lambda_delta_pearson"]), fmt(r["fit_lambda_delta_spearman"]), fmt(r["fit_dead_share"]),
             fmt(r["natural_factor"]), fmt(r["train_seconds"], 1)] for m, r in report["psr_training"].items()]
    lines.append(table(body, ("method", "loss start", "loss end", "R² λz vs Δ (top layer)", "R² constant mean Δ",
                              "corr(λ, ‖Δ‖) Pearson", "Spearman", "share λ=0", "natural factor f₀", "train s")))
    lines += ["", "R² is on the training responses at the top PSR layer (for A-PSR only that layer's own term); "
              "'R² constant' is the best any constant vector can do there.", "", "## Verdict", "", report["verdict"],
              ""]
    return "\n".join(lines)


def verdict(scores: dict[str, dict[str, Any]], n: int) -> str:
    order = common.ranking_text(common.rank_by_score(scores))
    psr = {m: r["score"] for m, r in scores.items() if "psr" in m}
    parts = [f"Ranking ({n} concepts): {order}."]
    if "prompt" in scores and psr:
        best = max(psr, key=psr.get)
        rel = "above" if psr[best] > scores["prompt"]["score"] else "not above"
        parts.append(f"Best PSR ({best} {psr[best]:.3f}) is {rel} prompt steering ({scores['prompt']['score']:.3f}).")
    if "diffmean" in scores and "s-psr-mse" in scores:
        rel = "above" if scores["s-psr-mse"]["score"] > scores["diffmean"]["score"] else "below or equal to"
        parts.append(f"MSE-trained S-PSR is {rel} constant DiffMean steering.")
    parts.append("Small run: few concepts and prompts, differences of ~0.1-0.2 are within noise.")
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    began = common.start_run(args)
    out: Path = args.out

    from hooksteer.evaluate.methods import DiffMeanMethod, PromptSteering, pool_texts_for
    from hooksteer.hypersteer.config import default_layer
    from hooksteer.psr import PSRConfig
    from hooksteer.psr.evaluation import PSRMethod, PSRTeacherData

    log("loading model and data ...")
    model = common.load_model(args.tiny, args.seed)
    n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    layer = args.layer if args.layer is not None else default_layer(n_layers)
    apsr_layers = args.apsr_layers or list(range(max(0, layer - 6), layer + 1))
    concepts, prompts = load_data(args)
    split = common.save_split(concepts, prompts, out / "split.json", seed=args.seed, held_out=len(concepts),
                              held_in=0, eval_prompts=args.eval_prompts)
    eval_concepts = split.select(concepts, split.held_out_concepts)
    train_prompts = split.select(prompts, split.train_prompts)
    eval_prompts = split.select(prompts, split.eval_prompts)
    judge = common.make_judge(args.tiny, model)

    log(f"teacher targets: {len(eval_concepts)} concepts × {len(train_prompts)} train prompts ...")
    start = time.perf_counter()
    examples, teacher_stats = teacher_examples(args, model, judge, eval_concepts, train_prompts, out / "teacher.jsonl")
    teacher_seconds = time.perf_counter() - start
    missing = [cid for cid, ex in examples.items() if not ex]
    if missing:
        log(f"no accepted teacher answer for {missing}: these concepts are dropped")
        eval_concepts = [c for c in eval_concepts if c.id not in missing]
    if not eval_concepts:
        raise SystemExit("no concept has a teacher answer: nothing to train PSR on")
    log(f"teacher: {sum(len(v) for v in examples.values())} accepted answers ({teacher_seconds:.0f} s)")

    data = PSRTeacherData(model, examples, layers=sorted({layer, *apsr_layers}),
                          max_response_tokens=args.teacher_tokens)
    shared = {"d_model": d_model, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
              "regulariser": args.regulariser}
    psr_methods = [
        PSRMethod(data, PSRConfig(layers=[layer], variant="single", loss="mse", steps=args.steps_closed, **shared)),
        PSRMethod(data, PSRConfig(layers=[layer], variant="single", loss="likelihood", steps=args.steps, **shared)),
        PSRMethod(data, PSRConfig(layers=apsr_layers, variant="adaptive", loss="mse", steps=args.steps, **shared)),
        PSRMethod(data, PSRConfig(layers=apsr_layers, variant="adaptive", loss="likelihood", steps=args.steps,
                                  **shared)),
    ]
    texts_for = pool_texts_for(list(concepts))
    diffmean = DiffMeanMethod(layer=layer, texts_for=texts_for)
    methods: list[Any] = [PromptSteering(), diffmean, *psr_methods]
    if args.hypersteer is not None:
        from hooksteer.hypersteer import HyperSteer
        from hooksteer.hypersteer.evaluation import HyperSteerMethod

        methods.append(HyperSteerMethod(HyperSteer.load(args.hypersteer, model), texts_for=texts_for))

    log(f"evaluating {[m.name for m in methods]} on {len(eval_concepts)} concepts × {len(eval_prompts)} held-out "
        f"prompts, factors {args.factors} (PSRs train inside prepare()) ...")
    result, eval_seconds = common.run_evaluation(args, model, methods, eval_concepts, eval_prompts, judge)
    summary = result.summary()
    scores = {}
    for method in result.methods:
        picked = [c for c in result.concepts if c.method == method]
        scores[method] = {**summary[method], "chosen_factors": [c.chosen_factor for c in picked]}

    log("teacher analysis and heatmaps ...")
    teacher, heat = {}, {}
    for concept in eval_concepts:
        records = data.records(concept.id)
        positive, negative = texts_for(concept, [])
        unit = diffmean.make_vector(model, f"blocks.{layer}.hook_resid_post", concept, positive, negative).unit()
        teacher[concept.id] = teacher_analysis(records, layer, unit.vector.float())
        heat_psrs = {m.name: m.psrs[concept.id] for m in psr_methods if concept.id in m.psrs}
        heat[concept.id] = draw_heatmap(model, records[0], heat_psrs, layer, out / f"heatmap_{concept.id}.png",
                                        concept.title)
    psr_training = {}
    for m in psr_methods:
        rows = list(m.training.values())
        psr_training[m.name] = {k: statistics.mean(float(r[k]) for r in rows if r.get(k) is not None
                                                   and math.isfinite(float(r[k])))
                                if any(r.get(k) is not None and math.isfinite(float(r[k])) for r in rows)
                                else float("nan")
                                for k in ("initial_loss", "final_loss", "fit_r2", "fit_r2_constant",
                                          "fit_lambda_delta_pearson", "fit_lambda_delta_spearman",
                                          "fit_dead_share", "natural_factor", "train_seconds")}
    report = {
        **common.run_info("psr_eval", args, argv, model, judge),
        "layer": layer, "apsr_layers": apsr_layers,
        "data": {"n_concepts": len(eval_concepts), "concepts": [c.id for c in eval_concepts],
                 "n_train_prompts": len(train_prompts), "n_eval_prompts": len(eval_prompts),
                 "eval_prompts": [p.text for p in eval_prompts],
                 "n_teacher_examples": sum(len(examples[c.id]) for c in eval_concepts), "teacher": teacher_stats},
        "scores": scores,
        "per_concept": [{"method": c.method, "concept": c.concept_id, "chosen_factor": c.chosen_factor, **c.report,
                         **({k: v for k, v in c.info.items() if k.startswith("fit_") or k in
                             ("natural_factor", "alpha_per_factor", "n_teacher_examples")})}
                        for c in result.concepts],
        "teacher": teacher, "psr_training": psr_training, "heatmap_correlations": heat,
        "seconds": {"teacher": teacher_seconds, "evaluate_incl_training": eval_seconds},
    }
    report["verdict"] = verdict(scores, len(eval_concepts))
    common.save_report(report, out, began, markdown)
    return report


if __name__ == "__main__":
    main()
