"""Benchmark: HyperSteer vs prompt steering vs DiffMean on held-out (and held-in) concepts, in one run.

Steps (every setting is a command-line flag; the defaults are small):

1. split   - concepts (Wikipedia vital articles) into train / held-in / held-out and base prompts into
             train / eval with :func:`hooksteer.data.splits.make_split` (saved as ``split.json``);
2. teacher - teacher targets (prompt-steered completions filtered by the judge) for train concepts x
             train prompts with :func:`hooksteer.data.teacher.generate_teacher_targets`, cached as JSONL
             (``teacher.jsonl``; a rerun with the same settings generates nothing). Targets for held-out
             concepts x eval prompts are also made, only for the eval *loss* (never trained on);
3. train   - each requested HyperSteer variant with :class:`~hooksteer.hypersteer.HyperSteerTrainer`
             for ``--steps`` optimizer steps (train/eval loss history saved);
4. evaluate - prompt steering, DiffMean and every HyperSteer variant
             (:class:`hooksteer.hypersteer.evaluation.HyperSteerMethod`) in ONE
             :func:`hooksteer.evaluate.protocol.evaluate` call on held-out + held-in concepts x eval prompts,
             same judge, factors and seed (AxBench protocol: factor chosen on half the prompts, reported on
             the other half); scores are then averaged per concept role;
5. timing  - seconds per new HyperSteer vector (one ``hyper.vector(s, x)`` call; median over unseen
             held-out pairs, plus the batched cost per vector) vs seconds to build one DiffMean vector for a
             new concept (contrast texts -> activations -> mean difference).

Outputs under ``--out`` (default ``runs/benchmarks/hypersteer_eval``): ``results.json`` (config +
results), ``results.md`` (tables), ``split.json``, ``teacher.jsonl``, ``hyper-<variant>/`` (trained H +
history) and ``evaluation/`` (the protocol's own results, generations and factor-sweep plot).

``--tiny`` runs the same pipeline on a tiny random model (:func:`hooksteer.testing.tiny_model`) with
hand-made concepts and a cheap keyword judge in well under a minute (a smoke test of the wiring; its
numbers mean nothing).

Usage::

    .venv/bin/python benchmarks/hypersteer_eval.py --tiny
    .venv/bin/python benchmarks/hypersteer_eval.py                      # small real run (SmolLM2-135M, CPU)
    .venv/bin/python benchmarks/hypersteer_eval.py --variants no_context in_context cross_attention --steps 200
"""

from __future__ import annotations

import argparse
import json
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

DEFAULT_OUT = REPO / "runs" / "benchmarks" / "hypersteer_eval"


# ============================================================================ arguments
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random model + keyword judge (< 1 minute smoke run)")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT.relative_to(REPO)}, "
                   "or .../tiny with --tiny)")
    p.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: CUDA when available, else CPU)")
    p.add_argument("--seed", type=int, default=0, help="split / training / evaluation seed")
    # data
    p.add_argument("--concept-seed", type=int, default=0, help="seed of load_concepts' shuffle")
    p.add_argument("--train-concepts", type=int, default=40, help="training concepts")
    p.add_argument("--held-out", type=int, default=5, help="held-out concepts (never trained on)")
    p.add_argument("--held-in", type=int, default=3, help="held-in concepts (a subset of the training concepts)")
    p.add_argument("--prompt-sources", nargs="+", default=["hand-written"],
                   help="base-prompt sources (hand-written, mt-bench, writingbench)")
    p.add_argument("--train-prompts", type=int, default=4, help="train base prompts")
    p.add_argument("--eval-prompts", type=int, default=4, help="eval base prompts (>= 2: selection + report halves)")
    # teacher
    p.add_argument("--teacher-candidates", type=int, default=2, help="sampled candidates per (concept, prompt)")
    p.add_argument("--teacher-tokens", type=int, default=32, help="max new tokens of a teacher target")
    p.add_argument("--teacher-temperature", type=float, default=0.8)
    p.add_argument("--teacher-batch", type=int, default=16, help="generation batch (candidates) of the teacher")
    p.add_argument("--teacher-min-concept", type=float, default=1.0, help="judge concept score a target needs")
    p.add_argument("--teacher-min-fluency", type=float, default=1.0, help="judge fluency score a target needs")
    p.add_argument("--teacher-cache", type=Path, default=None, help="teacher JSONL cache (default OUT/teacher.jsonl)")
    p.add_argument("--teacher-model-class", choices=["hooked", "bridge"], default="hooked",
                   help="who writes teacher targets: the HookedTransformer being steered (default) or a "
                        "TransformerBridge on the same weights (at batch 16 its fast path generated 2.6x (CPU) and 1.9x "
                        "(H200) the HookedTransformer's tokens/s in benchmarks/generation.py)")
    p.add_argument("--no-eval-loss", action="store_true", help="skip teacher targets for the held-out eval loss")
    # hypersteer
    p.add_argument("--variants", nargs="+", default=["cross_attention"],
                   choices=["no_context", "in_context", "cross_attention"])
    p.add_argument("--n-blocks", type=int, default=2, help="H blocks")
    p.add_argument("--pooling", choices=["last", "mean"], default="last", help="what H's head reads (see HyperSteerConfig)")
    p.add_argument("--layer", type=int, default=None, help="injection layer (default ~2/3 of the depth)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per variant")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=20, help="eval-loss interval in steps (0 = start/end only)")
    p.add_argument("--hyper-magnitude", default="resid_norm",
                   help="HyperSteer scale: resid_norm (same factor meaning as DiffMean), trained, or a number")
    # evaluation
    p.add_argument("--factors", type=float, nargs="+", default=[0.1, 0.2, 0.35],
                   help="steering factors (x mean residual norm at each method's site)")
    p.add_argument("--diffmean-layer", type=int, default=None, help="DiffMean layer (default: a third of the depth)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per evaluated answer")
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--no-held-in", action="store_true", help="evaluate held-out concepts only")
    # timing
    p.add_argument("--timing-vectors", type=int, default=8, help="new (concept, prompt) pairs timed for HyperSteer")
    p.add_argument("--timing-concepts", type=int, default=4, help="new concepts timed for DiffMean")
    args = p.parse_args(argv)
    if args.tiny:
        tiny_defaults(args, p)
    if args.eval_prompts < 2:
        p.error("--eval-prompts must be >= 2 (the protocol needs a selection and a report half)")
    if args.out is None:
        args.out = DEFAULT_OUT / "tiny" if args.tiny else DEFAULT_OUT
    return args


def tiny_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Shrink every setting the user left at its default (explicit flags win)."""
    tiny = {"train_concepts": 6, "held_out": 2, "held_in": 1, "train_prompts": 3, "eval_prompts": 2,
            "teacher_candidates": 2, "teacher_tokens": 6, "steps": 3, "batch_size": 4, "eval_every": 3,
            "factors": [0.5, 2.0], "max_new_tokens": 4, "timing_vectors": 2, "timing_concepts": 2,
            "n_blocks": 1, "lr": 1e-3, "warmup_steps": 0, "teacher_min_concept": 0.0,
            "teacher_min_fluency": 0.0}
    common.apply_tiny_defaults(args, parser, tiny)


# ============================================================================ steps
def load_data(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """All concepts needed (train + held-out) and all base prompts."""
    n_concepts = args.train_concepts + args.held_out
    concepts, prompts = common.load_concepts_and_prompts(args, n_concepts)
    n_prompts = args.train_prompts + args.eval_prompts
    if len(concepts) < n_concepts or len(prompts) < n_prompts:
        raise SystemExit(f"need {n_concepts} concepts and {n_prompts} base prompts, have {len(concepts)} and "
                         f"{len(prompts)}")
    # choose the prompts used by the split deterministically (split seed), so that the split has exactly
    # train_prompts + eval_prompts of them
    return concepts, common.pick_prompts(prompts, args.seed, n_prompts)


def teacher_examples(args: argparse.Namespace, model: Any, judge: Any, concepts: Sequence[Any],
                     prompts: Sequence[Any], cache: Path) -> tuple[list[Any], dict[str, Any]]:
    """Teacher examples for every (concept, prompt) pair, and the generation stats."""
    result, stats = common.teacher_targets(args, model, judge, concepts, prompts, cache)
    return result.examples, stats


def train_variant(args: argparse.Namespace, model: Any, variant: str, train: list[Any], held: list[Any],
                  out: Path) -> tuple[Any, dict[str, Any]]:
    from hooksteer.hypersteer import HyperSteer, HyperSteerConfig, HyperSteerTrainer

    config = HyperSteerConfig(variant=variant, n_blocks=args.n_blocks, layer=args.layer, lr=args.lr, pooling=args.pooling,
                              batch_size=args.batch_size, max_steps=args.steps, warmup_steps=args.warmup_steps,
                              seed=args.seed, eval_every=args.eval_every, log_every=max(1, min(5, args.steps)),
                              save_every=0, extra={"trained_steps": args.steps})
    torch.manual_seed(args.seed)
    hyper = HyperSteer(model, config)
    # output_dir=None: no resumable checkpoints (optimizer state is ~2x H's size); H and history saved below
    trainer = HyperSteerTrainer(hyper, train, held or None, output_dir=None, progress=not args.tiny)
    result = trainer.train()
    hyper = trainer.hyper
    hyper.save(out)
    (out / "history.json").write_text(json.dumps(result.to_dict(), indent=2))
    hyper.eval()
    model.requires_grad_(False)
    info = {"variant": variant, "hook_name": hyper.hook_name, "n_blocks": hyper.config.n_blocks,
            "h_parameters": sum(p.numel() for p in hyper.parameters()), "n_train_examples": len(train),
            "n_eval_examples": len(held), **result.to_dict()}
    first = next((e["eval_loss"] for e in result.eval_loss if e["step"] == 0), None)
    last = result.eval_loss[-1]["eval_loss"] if result.eval_loss else None
    info["eval_loss_start"], info["eval_loss_end"] = first, last
    return hyper, info


def time_hypersteer(hyper: Any, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Median seconds of one ``hyper.vector(s, x)`` call for unseen pairs (after a warm-up), and batched cost."""
    from hooksteer.hypersteer.timing import time_vector_inference

    return time_vector_inference(hyper, pairs)


def time_diffmean(model: Any, method: Any, concepts: Sequence[Any], pool: Sequence[Any]) -> dict[str, Any]:
    """Seconds to build one DiffMean vector for a new concept: contrast texts, activations, mean difference
    (``make_vector``), and separately the residual-norm scale reference that steering also needs."""
    hook_name = method.site_for(model)
    texts_for = method.texts_for
    positive, negative = texts_for(concepts[0], pool)
    method.make_vector(model, hook_name, concepts[0], positive, negative)  # warm-up
    build, scale, sizes = [], [], []
    for concept in concepts:
        start = time.perf_counter()
        positive, negative = texts_for(concept, pool)
        vector = method.make_vector(model, hook_name, concept, positive, negative)
        build.append(time.perf_counter() - start)
        start = time.perf_counter()
        method.magnitude_for(model, hook_name, vector.unit().vector.float(), positive, negative)
        scale.append(time.perf_counter() - start)
        sizes.append(len(positive) + len(negative))
    return {"seconds_per_vector": statistics.median(build), "seconds_scale_reference": statistics.median(scale),
            "n_concepts": len(concepts), "mean_texts_per_vector": sum(sizes) / len(sizes), "hook_name": hook_name,
            "single_seconds": build}


def role_summary(result: Any, roles: dict[str, str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per role (held_out / held_in) and method: mean report-half ratings at the chosen factor."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for role in ("held_out", "held_in"):
        rows = {}
        for method in result.methods:
            picked = [c for c in result.concepts if c.method == method and roles.get(c.concept_id) == role]
            if not picked:
                continue
            rows[method] = {key: sum(c.report[key] for c in picked) / len(picked)
                            for key in ("concept", "instruction", "fluency", "score")}
            rows[method]["n_concepts"] = len(picked)
            rows[method]["chosen_factors"] = [c.chosen_factor for c in picked]
            rows[method]["collapsed_cells"] = sum(len(c.collapsed_factors) for c in picked)
        if rows:
            out[role] = rows
    return out


# ============================================================================ report
def markdown(report: dict[str, Any]) -> str:
    from hooksteer.evaluate.report import table

    lines = ["# HyperSteer vs prompt steering vs DiffMean", ""]
    cfg = report["config"]
    lines.append(f"Model `{report['model']}`, judge `{report['judge']}`, seed {cfg['seed']}, factors {cfg['factors']}, "
                 f"{cfg['max_new_tokens']} new tokens (greedy). {report['data']['n_train_concepts']} train concepts × "
                 f"{report['data']['n_train_prompts']} train prompts → {report['data']['n_train_examples']} teacher "
                 f"examples; evaluated on {report['data']['n_held_out']} held-out and {report['data']['n_held_in']} "
                 f"held-in concepts × {report['data']['n_eval_prompts']} eval prompts (factor chosen on half of "
                 "them, scores on the other half).")
    lines.append("")
    for role, title in (("held_out", "Held-out concepts"), ("held_in", "Held-in concepts")):
        rows = report["scores"].get(role)
        if not rows:
            continue
        lines += [f"## {title}", ""]
        lines.append(common.score_table(rows))
        lines.append("")
    lines += ["## Training", ""]
    body = [[v["variant"], str(v["steps"]), str(v["n_train_examples"]), fmt(v.get("train_loss_end")),
             fmt(v["eval_loss_start"]), fmt(v["eval_loss_end"]), fmt(v["seconds"], 1),
             fmt(v.get("separation", {}).get("between_concepts")), fmt(v.get("separation", {}).get("within_concept"))]
            for v in report["training"].values()]
    lines.append(table(body, ("variant", "steps", "train examples", "last train loss", "eval loss (start)",
                              "eval loss (end)", "seconds", "cos between concepts", "cos within concept")))
    lines += ["", "Eval loss: target cross-entropy on held-out concepts × eval prompts (teacher targets, never "
              "trained on). Cosines (`hooksteer.hypersteer.diagnostics.vector_separation`): mean cosine of H's "
              "vectors for two different held-out concepts at the same eval prompt (1.0 = H ignores the steering "
              "prompt), and for one concept at two different eval prompts (context variants only).", "",
              "## Seconds per new steering vector", ""]
    t = report["timing"]
    body = [[f"hypersteer-{name}", fmt(v["seconds_per_vector"], 4), fmt(v["seconds_per_vector_batched"], 4),
             "one vector per (concept, base prompt)"] for name, v in t["hypersteer"].items()]
    d = t["diffmean"]
    body.append(["diffmean", fmt(d["seconds_per_vector"], 4), "—",
                 f"one vector per concept ({d['mean_texts_per_vector']:.0f} contrast texts); +"
                 f"{d['seconds_scale_reference']:.3f} s for the residual-norm scale"])
    lines.append(table(body, ("method", "s / new vector", "s / vector (batched)", "note")))
    lines += ["", "## Verdict", "", report["verdict"], ""]
    return "\n".join(lines)


def verdict(scores: dict[str, dict[str, dict[str, float]]]) -> str:
    parts = []
    for role, label in (("held_out", "held-out"), ("held_in", "held-in")):
        rows = scores.get(role)
        if not rows:
            continue
        ranked = common.rank_by_score(rows)
        best, best_row = ranked[0]
        ties = [m for m, r in ranked if abs(r["score"] - best_row["score"]) < 1e-9]
        order = common.ranking_text(ranked)
        n = int(best_row["n_concepts"])
        head = f"tie between {', '.join(ties)}" if len(ties) > 1 else f"**{best}** wins"
        parts.append(f"On {label} concepts ({n}): {head} ({order}).")
    parts.append("Small run: few concepts and prompts, so differences of ~0.1-0.2 are within noise.")
    return " ".join(parts)


# ============================================================================ main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    began = common.start_run(args)
    out: Path = args.out

    from hooksteer.evaluate.methods import DiffMeanMethod, PromptSteering, pool_texts_for
    from hooksteer.hypersteer.diagnostics import vector_separation
    from hooksteer.hypersteer.evaluation import HyperSteerMethod

    # ---- model, data, split
    log("loading model and data ...")
    model = common.load_model(args.tiny, args.seed, args.model, args.device)
    concepts, prompts = load_data(args)
    split = common.save_split(concepts, prompts, out / "split.json", seed=args.seed, held_out=args.held_out,
                              held_in=args.held_in, eval_prompts=args.eval_prompts)
    train_concepts = split.select(concepts, split.train_concepts)
    held_out = split.select(concepts, split.held_out_concepts)
    held_in = [] if args.no_held_in else split.select(concepts, split.held_in_concepts)
    train_prompts = split.select(prompts, split.train_prompts)
    eval_prompts = split.select(prompts, split.eval_prompts)
    judge = common.make_judge(args.tiny, model)

    # ---- teacher targets
    cache = args.teacher_cache or out / "teacher.jsonl"
    log(f"teacher targets: {len(train_concepts)} concepts × {len(train_prompts)} prompts (cache {cache}) ...")
    start = time.perf_counter()
    writer = model if args.teacher_model_class == "hooked" else common.load_bridge(args.tiny, args.seed, args.device)
    train_examples, teacher_stats = teacher_examples(args, writer, judge, train_concepts, train_prompts, cache)
    split.check_examples(train_examples)
    eval_examples, eval_teacher_stats = [], {}
    if not args.no_eval_loss:
        eval_examples, eval_teacher_stats = teacher_examples(args, writer, judge, held_out, eval_prompts, cache)
    del writer
    teacher_seconds = time.perf_counter() - start
    log(f"teacher: {len(train_examples)} train examples (pair hit rate {teacher_stats['pair_hit_rate']:.2f}), "
        f"{len(eval_examples)} held-out eval-loss examples, {teacher_seconds:.0f} s")
    if not train_examples:
        raise SystemExit("no teacher target passed the judge: nothing to train on")

    # ---- train
    hypers, training = {}, {}
    for variant in args.variants:
        log(f"training {variant} ({args.steps} steps) ...")
        hyper, info = train_variant(args, model, variant, train_examples, eval_examples, out / f"hyper-{variant}")
        if info["train_loss"]:
            info["train_loss_end"] = info["train_loss"][-1]["loss"]
        if len(held_out) > 1:  # does H tell the held-out concepts apart? (1.0 = it ignores the steering prompt)
            info["separation"] = vector_separation(hyper, [c.steering_prompts[0] for c in held_out],
                                                   [p.text for p in eval_prompts])
        hypers[variant], training[variant] = hyper, info
        log(f"  {variant}: eval loss {fmt(info['eval_loss_start'])} → {fmt(info['eval_loss_end'])}, "
            f"{info['seconds']:.0f} s")

    # ---- evaluate (one call: all methods, same judge / factors / seed)
    pool = list(concepts)  # fixed negatives for DiffMean, however few concepts are evaluated
    texts_for = pool_texts_for(pool)
    magnitude: Any = args.hyper_magnitude
    try:
        magnitude = float(magnitude)
    except ValueError:
        pass
    diffmean = DiffMeanMethod(layer=args.diffmean_layer, texts_for=texts_for)
    methods = [PromptSteering(), diffmean,
               *(HyperSteerMethod(h, magnitude=magnitude, texts_for=texts_for) for h in hypers.values())]
    eval_concepts = [*held_out, *held_in]
    roles = {c.id: "held_out" for c in held_out} | {c.id: "held_in" for c in held_in}
    log(f"evaluating {[m.name for m in methods]} on {len(held_out)} held-out + {len(held_in)} held-in concepts × "
        f"{len(eval_prompts)} prompts, factors {args.factors} ...")
    result, eval_seconds = common.run_evaluation(args, model, methods, eval_concepts, eval_prompts, judge)
    scores = role_summary(result, roles)

    # ---- timing
    log("timing new vectors ...")
    pairs = [(c.steering_prompts[0], p.text) for c in held_out for p in eval_prompts][: args.timing_vectors]
    pairs = pairs or [(held_out[0].steering_prompts[0], eval_prompts[0].text)]
    timing = {"hypersteer": {v: time_hypersteer(h, pairs) for v, h in hypers.items()},
              "diffmean": time_diffmean(model, diffmean, held_out[: args.timing_concepts] or held_out, pool)}

    hyper_info = {c.method: {} for c in result.concepts}
    for c in result.concepts:
        if c.info.get("natural_factor") is not None:
            hyper_info[c.method].setdefault("natural_factor", []).append(c.info["natural_factor"])
            hyper_info[c.method].setdefault("mean_delta_norm", []).append(c.info["mean_delta_norm"])
    report = {
        **common.run_info("hypersteer_eval", args, argv, model, judge),
        "data": {"n_train_concepts": len(train_concepts), "n_train_prompts": len(train_prompts),
                 "n_held_out": len(held_out), "n_held_in": len(held_in), "n_eval_prompts": len(eval_prompts),
                 "n_train_examples": len(train_examples), "n_eval_loss_examples": len(eval_examples),
                 "held_out": [c.id for c in held_out], "held_in": [c.id for c in held_in],
                 "eval_prompts": [p.text for p in eval_prompts], "train_prompts": [p.text for p in train_prompts],
                 "teacher": teacher_stats, "teacher_eval_loss": eval_teacher_stats},
        "training": training,
        "scores": scores,
        "per_concept": [{"method": c.method, "concept": c.concept_id, "role": roles.get(c.concept_id),
                         "chosen_factor": c.chosen_factor, **c.report} for c in result.concepts],
        "hypersteer_vectors": {m: {k: sum(v) / len(v) for k, v in d.items()} for m, d in hyper_info.items() if d},
        "timing": timing,
        "seconds": {"teacher": teacher_seconds, "evaluate": eval_seconds, "total": time.perf_counter() - began},
    }
    report["verdict"] = verdict(scores)
    common.save_report(report, out, began, markdown)
    return report


if __name__ == "__main__":
    main()
