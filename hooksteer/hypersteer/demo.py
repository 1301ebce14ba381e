"""HyperSteer part of ``hooksteer demo``: train (or load) a small HyperSteer, steer held-out concepts.

:func:`run_hypersteer_demo`:

1. loads a saved HyperSteer from ``out_dir/hypersteer/`` when one is there (and its ``demo.json`` says
   which concepts were held out), otherwise
2. splits Wikipedia vital-article concepts (:func:`hooksteer.data.splits.make_split`), writes teacher
   targets for the training concepts by prompt steering (:func:`hooksteer.data.teacher.generate_teacher_targets`,
   judged by the embedding judge), trains a small cross-attention HyperSteer for a few steps and saves it.
   The held-out eval loss (target cross-entropy on teacher targets of the held-out concepts, never trained
   on) is printed before and after training: with a few steps on a CPU its quality is low, and the numbers
   say so;
3. for each held-out concept, generates greedily for one base prompt: unsteered, prompt-steered (the
   steering prompt in the user turn) and HyperSteer-steered (H's vector for (steering prompt, base prompt),
   unit-normalised and scaled to ``factor ×`` the mean residual norm at H's site, added at every position
   with :func:`hooksteer.steer`), prints them side by side and writes ``hypersteer_generations.json``.

Example:
    >>> from hooksteer.hypersteer.demo import run_hypersteer_demo          # doctest: +SKIP
    >>> report = run_hypersteer_demo(None, out_dir="runs/demo", steps=30)
    >>> report["eval_loss_before"], report["eval_loss_after"]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from hooksteer.hypersteer.diagnostics import mean_pairwise_cosine

DEMO_FILE = "demo.json"
GENERATIONS_FILE = "hypersteer_generations.json"
HYPER_DIR = "hypersteer"


def _log(message: str, verbose: bool) -> None:
    if verbose:
        print(message, flush=True)


def _build_and_train(model: Any, hyper_dir: Path, *, train_concepts: int, held_out: int, train_prompts: int,
                     eval_prompts: int, steps: int, n_blocks: int, pooling: str, layer: int | None, lr: float,
                     batch_size: int,
                     teacher_candidates: int, teacher_tokens: int, min_concept: float, min_fluency: float,
                     judge: Any, seed: int, verbose: bool) -> tuple[Any, dict[str, Any]]:
    from hooksteer.data.base_prompts import load_base_prompts
    from hooksteer.data.concepts import load_concepts
    from hooksteer.data.splits import make_split
    from hooksteer.data.teacher import TeacherConfig, generate_teacher_targets
    from hooksteer.hypersteer import HyperSteer, HyperSteerConfig, HyperSteerTrainer

    concepts = load_concepts(limit=train_concepts + held_out, seed=seed)
    prompts = load_base_prompts(["hand-written"])
    split = make_split(concepts, prompts, seed=seed, held_out=held_out, held_in=0, eval_prompts=eval_prompts)
    train_c = split.select(concepts, split.train_concepts)
    out_c = split.select(concepts, split.held_out_concepts)
    train_p = split.select(prompts, split.train_prompts)[:train_prompts]
    eval_p = split.select(prompts, split.eval_prompts)
    if judge is None:
        from hooksteer.evaluate.judges import EmbeddingJudge, LMPerplexity

        judge = EmbeddingJudge(perplexity=LMPerplexity(model))
    teacher = TeacherConfig(n_candidates=teacher_candidates, max_new_tokens=teacher_tokens, seed=seed,
                            min_concept=min_concept, min_fluency=min_fluency)
    cache = hyper_dir / "teacher.jsonl"
    _log(f"Teacher targets (prompt steering, judged): {len(train_c)} train concepts × {len(train_p)} prompts × "
         f"{teacher_candidates} samples ...", verbose)
    started = time.perf_counter()
    train = generate_teacher_targets(model, [(c, p) for c in train_c for p in train_p], judge, teacher,
                                     cache_path=cache, progress=verbose)
    held = generate_teacher_targets(model, [(c, p) for c in out_c for p in eval_p], judge, teacher,
                                    cache_path=cache, progress=verbose)
    split.check_examples(train.examples)
    teacher_seconds = time.perf_counter() - started
    _log(f"  {len(train.examples)} training examples, {len(held.examples)} held-out eval-loss examples "
         f"({teacher_seconds:.0f} s)", verbose)
    if not train.examples:
        raise RuntimeError("no teacher target passed the judge, so there is nothing to train HyperSteer on; "
                           "lower min_concept/min_fluency or use more train concepts")
    config = HyperSteerConfig(variant="cross_attention", n_blocks=n_blocks, layer=layer, lr=lr, pooling=pooling,
                              batch_size=batch_size, max_steps=steps, warmup_steps=0, seed=seed,
                              eval_every=steps, log_every=max(1, steps // 5), save_every=0,
                              extra={"trained_steps": steps, "trained_by": "hooksteer demo"})
    torch.manual_seed(seed)
    hyper = HyperSteer(model, config)
    _log(f"Training a {n_blocks}-block cross-attention HyperSteer at {hyper.hook_name} for {steps} steps ...",
         verbose)
    trainer = HyperSteerTrainer(hyper, train.examples, held.examples or None, output_dir=None, progress=verbose)
    result = trainer.train()
    hyper = trainer.hyper
    hyper.eval()
    model.requires_grad_(False)
    losses = result.eval_loss
    meta = {
        "held_out_concepts": [c.to_dict() for c in out_c],
        "train_concepts": [c.id for c in train_c],
        "eval_prompts": [p.text for p in eval_p],
        "train_prompts": [p.text for p in train_p],
        "n_train_examples": len(train.examples),
        "n_eval_examples": len(held.examples),
        "eval_loss_before": losses[0]["eval_loss"] if losses else None,
        "eval_loss_after": losses[-1]["eval_loss"] if losses else None,
        "train_loss": result.train_loss,
        "steps": result.steps,
        "train_seconds": result.seconds,
        "teacher_seconds": teacher_seconds,
        "teacher_stats": {k: v for k, v in train.stats.items() if isinstance(v, int | float)},
        "split": split.to_dict(),
    }
    hyper.save(hyper_dir)
    (hyper_dir / DEMO_FILE).write_text(json.dumps(meta, indent=2))
    return hyper, meta


def load_demo_hypersteer(model: Any, hyper_dir: str | Path) -> tuple[Any, dict[str, Any]] | None:
    """The HyperSteer and demo metadata saved in ``hyper_dir``, or ``None`` if there is none."""
    from hooksteer.hypersteer import HyperSteer

    hyper_dir = Path(hyper_dir)
    if not (hyper_dir / DEMO_FILE).is_file() or not (hyper_dir / "config.json").is_file():
        return None
    try:
        meta = json.loads((hyper_dir / DEMO_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{hyper_dir / DEMO_FILE} is not valid JSON ({error}); delete the folder or pass "
                         "retrain=True") from None
    if not isinstance(meta, dict) or not meta.get("held_out_concepts"):
        raise ValueError(f"{hyper_dir / DEMO_FILE} lists no held-out concepts; delete the folder or retrain")
    return HyperSteer.load(hyper_dir, model), meta


def run_hypersteer_demo(
    model: Any | None = None,
    *,
    out_dir: str | Path = "runs/demo",
    train_concepts: int = 6,
    held_out: int = 3,
    train_prompts: int = 3,
    eval_prompts: int = 2,
    steps: int = 24,
    n_blocks: int = 1,
    pooling: str = "last",
    layer: int | None = None,
    lr: float = 3e-4,
    batch_size: int = 4,
    teacher_candidates: int = 2,
    teacher_tokens: int = 24,
    min_concept: float = 1.0,
    min_fluency: float = 1.0,
    factor: float = 0.3,
    max_new_tokens: int = 40,
    base_prompt: str | None = None,
    retrain: bool = False,
    judge: Any = None,
    seed: int = 0,
    verbose: bool = True,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or load) a small HyperSteer and show it steering held-out concepts next to the baselines.

    Args:
        model: a ``HookedTransformer`` (``None``: the embedded SmolLM2-135M-Instruct).
        out_dir: the trained H goes to ``out_dir/hypersteer/`` and is reused by later runs; the side-by-side
            generations go to ``out_dir/hypersteer_generations.json``.
        train_concepts / held_out: Wikipedia concepts to train on / to steer towards (never trained on).
        train_prompts / eval_prompts: hand-written base prompts for training / for the held-out generations.
        steps, n_blocks, pooling, layer, lr, batch_size: HyperSteer training (cross-attention variant).
        teacher_candidates, teacher_tokens, min_concept, min_fluency: teacher targets and the judge's filter.
        factor: HyperSteer strength as a fraction of the mean residual norm at its site.
        max_new_tokens: tokens per generated answer (greedy).
        base_prompt: the request answered for every held-out concept (default: the first eval prompt).
        retrain: ignore a saved H and train a new one.
        judge: teacher-target judge (default: the embedding judge with the model's own perplexity).
        seed: split, teacher and training seed.
        verbose: progress messages and bars.
        print_fn: where the side-by-side text goes.

    Returns:
        A report dict (also the JSON file): eval losses, seconds, and one row per held-out concept.
    """
    import hooksteer as hs
    from hooksteer.data.schema import Concept
    from hooksteer.data.teacher import steered_chat_prompt
    from hooksteer.display import side_by_side
    from hooksteer.evaluate.methods import residual_norm
    from hooksteer.generation import generate_texts

    if factor <= 0 or not torch.isfinite(torch.tensor(float(factor))):
        raise ValueError(f"factor must be a positive number, got {factor}")
    started = time.perf_counter()
    model = model if model is not None else hs.load_model(progress=verbose)
    out_dir = Path(out_dir)
    hyper_dir = out_dir / HYPER_DIR
    loaded = None if retrain else load_demo_hypersteer(model, hyper_dir)
    if loaded is not None:
        hyper, meta = loaded
        trained_now = False
        _log(f"Loaded the HyperSteer saved in {hyper_dir}/ ({meta.get('steps')} training steps; "
             "pass --retrain-hypersteer to train a new one)", verbose)
    else:
        hyper, meta = _build_and_train(
            model, hyper_dir, train_concepts=train_concepts, held_out=held_out, train_prompts=train_prompts,
            eval_prompts=eval_prompts, steps=steps, n_blocks=n_blocks, pooling=pooling, layer=layer, lr=lr,
            batch_size=batch_size,
            teacher_candidates=teacher_candidates, teacher_tokens=teacher_tokens, min_concept=min_concept,
            min_fluency=min_fluency, judge=judge, seed=seed, verbose=verbose)
        trained_now = True
    before, after = meta.get("eval_loss_before"), meta.get("eval_loss_after")
    if before is not None and after is not None:
        change = "lower" if after < before else "NOT lower"
        _log(f"Held-out eval loss (teacher targets of unseen concepts): {before:.3f} before training → "
             f"{after:.3f} after {meta['steps']} steps ({change}; small run, so expect little)", verbose)
    concepts = [Concept.from_dict(c) for c in meta["held_out_concepts"]]
    request = base_prompt or meta["eval_prompts"][0]
    hook_name = hyper.hook_name
    scale = residual_norm(model, [c.text or c.title for c in concepts] + [request], hook_name)
    generation = {"max_new_tokens": max_new_tokens, "do_sample": False}
    unsteered = generate_texts(model, [request], **generation)[0]
    prompted = generate_texts(model, [steered_chat_prompt(model, c.steering_prompt, request) for c in concepts],
                              chat=False, **generation)
    raw_vectors = hyper.vector([c.steering_prompt for c in concepts], request)  # one batched pass through H
    rows, units = [], []
    for concept, prompt_steered, raw in zip(concepts, prompted, raw_vectors, strict=True):
        units.append(raw.unit().vector)
        vector = raw.unit() * (factor * scale)
        with hs.steer(model, vector):
            hyper_steered = generate_texts(model, [request], **generation)[0]
        rows.append({"concept": concept.title, "concept_id": concept.id, "steering_prompt": concept.steering_prompt,
                     "base_prompt": request, "unsteered": unsteered, "prompt_steered": prompt_steered,
                     "hypersteer": hyper_steered, "hypersteer_raw_norm": raw.norm(),
                     "hypersteer_norm": vector.norm()})
    for row in rows:
        columns = {"unsteered": row["unsteered"], f"prompt-steered ({row['concept']})": row["prompt_steered"],
                   f"HyperSteer ({row['concept']}, held out)": row["hypersteer"]}
        print_fn(side_by_side(row["base_prompt"], columns))
        print_fn("")
    # how different are H's vectors for different concepts? (1.0 = H ignores the steering prompt)
    mean_cosine = mean_pairwise_cosine(torch.stack(units)) if len(units) > 1 else None
    if mean_cosine is not None:
        _log(f"Mean cosine similarity between HyperSteer's vectors for different held-out concepts: "
             f"{mean_cosine:.3f} (near 1 means H does not yet tell the concepts apart)", verbose)
    if len(rows) > 1 and len({row["hypersteer"] for row in rows}) == 1:
        _log("Note: HyperSteer wrote the same answer for every held-out concept: this little training has not "
             "taught H to distinguish concepts (it needs many more training concepts, e.g. "
             "benchmarks/hypersteer_eval.py --train-concepts 2000 on a GPU; more steps on few concepts overfit).",
             verbose)
    report = {"hook_name": hook_name, "mean_vector_cosine": mean_cosine, "factor": factor, "residual_norm": scale, "trained_now": trained_now,
              "steps": meta.get("steps"), "eval_loss_before": before, "eval_loss_after": after,
              "n_train_examples": meta.get("n_train_examples"), "rows": rows,
              "seconds": round(time.perf_counter() - started, 1), "hypersteer_dir": str(hyper_dir)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / GENERATIONS_FILE).write_text(json.dumps(report, indent=2))
    _log(f"HyperSteer demo: wrote {out_dir / GENERATIONS_FILE} ({report['seconds']:.0f} s)", verbose)
    return report


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the HyperSteer part of ``hooksteer demo`` (wired by the CLI)."""
    group = parser.add_argument_group("HyperSteer demo")
    group.add_argument("--hypersteer", action=argparse.BooleanOptionalAction, default=True,
                       help="also train (or load) a small HyperSteer and steer held-out concepts (default: on)")
    group.add_argument("--hypersteer-steps", type=int, default=24, help="HyperSteer training steps (default 24)")
    group.add_argument("--hypersteer-train-concepts", type=int, default=6, help="training concepts (default 6)")
    group.add_argument("--hypersteer-held-out", type=int, default=3, help="held-out concepts shown (default 3)")
    group.add_argument("--hypersteer-factor", type=float, default=0.3,
                       help="HyperSteer strength, fraction of the residual norm at its site (default 0.3)")
    group.add_argument("--hypersteer-pooling", choices=["last", "mean"], default="last",
                       help="what H's head reads: the last steering-prompt token (default, as in the paper) or "
                            "the mean over its tokens")
    group.add_argument("--retrain-hypersteer", action="store_true",
                       help="train a new HyperSteer even if OUT/hypersteer/ holds one")


def run_from_args(model: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    """Run the HyperSteer demo with the options of :func:`add_arguments` (``None`` when ``--no-hypersteer``)."""
    if not getattr(args, "hypersteer", True):
        return None
    return run_hypersteer_demo(
        model, out_dir=args.out, steps=args.hypersteer_steps, train_concepts=args.hypersteer_train_concepts,
        held_out=args.hypersteer_held_out, factor=args.hypersteer_factor, retrain=args.retrain_hypersteer,
        pooling=getattr(args, "hypersteer_pooling", "last"),
        max_new_tokens=getattr(args, "max_new_tokens", 40))


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HyperSteer demo on the embedded model (see module docstring)")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    add_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_from_args(None, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
