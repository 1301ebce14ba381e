"""``hooksteer train-psr``: train a PSR for one concept from teacher examples (SteeringExample JSONL).

Example:
    hooksteer train-psr --examples runs/teacher/examples.jsonl --concept volcano \\
        --variant single --loss mse --layer 20 --out runs/psr/volcano
    hooksteer train-psr --examples ex.jsonl --variant adaptive --loss distill --train-from-layer 20 --out runs/psr/a

With ``--loss distill`` the examples give the steering prompt and the base prompts only: the responses are the
prompted model's own greedy answers and the targets its top-k next-token log-probs
(:func:`hooksteer.distill.build_distill_teacher`, cached under ``OUT/distill_cache``).

Writes ``psr_config.json`` + ``psr.safetensors`` (reload with ``hooksteer.psr.PSR.load``), ``history.json``,
``fit.json`` (teacher fit: R² of λz vs Δ, constant-vector R², λ–‖Δ‖ correlation) and ``config.json``
(the command's settings).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run", "parse_layers"]


def parse_layers(text: str) -> list[int]:
    """``"20"`` → [20]; ``"12-20"`` → 12..20; ``"4,8,12"`` → [4, 8, 12].

    Example:
        >>> parse_layers("3-5"), parse_layers("1,4")
        ([3, 4, 5], [1, 4])
    """
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            low, high = (int(x) for x in part.split("-", 1))
            layers.extend(range(low, high + 1))
        elif part:
            layers.append(int(part))
    if not layers:
        raise argparse.ArgumentTypeError(f"no layers in {text!r}")
    return sorted(set(layers))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train-psr`` on an ``argparse`` subparsers object."""
    from hooksteer.models import DEFAULT_MODEL

    p = subparsers.add_parser("train-psr", help="train a PSR (prompt steering replacement) from teacher examples")
    p.add_argument("--examples", required=True, help="JSONL of SteeringExample records (target = prompt-steered answer)")
    p.add_argument("--concept", help="concept_id to train on (default: the only concept in the file)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="base model, or tiny:llama / tiny:gpt2 for tests")
    p.add_argument("--variant", choices=["single", "adaptive"], default="single", help="S-PSR or A-PSR")
    p.add_argument("--loss", choices=["mse", "likelihood", "distill"], default="mse")
    p.add_argument("--init", choices=["fit", "mean_delta", "random"], default="fit",
                   help="layer-by-layer fit of the local residual (default), constant mean, or random gate")
    p.add_argument("--local-steps", type=int, default=150, help="Adam steps per layer on its local MSE (init=fit)")
    p.add_argument("--positions", choices=["response", "generated", "after_sink", "all"], default="response",
                   help="where the PSR steers (response = assistant-turn template tokens + generated tokens)")
    p.add_argument("--train-from-layer", type=int, default=None,
                   help="end-to-end training updates only PSR layers >= this (default: all)")
    p.add_argument("--held-out-fraction", type=float, default=0.0,
                   help="share of base prompts held out for early stopping")
    p.add_argument("--top-k", type=int, default=32, help="teacher log-probs kept per token (--loss distill)")
    p.add_argument("--layer", type=int, default=None, help="S-PSR layer (default: 2/3 of the depth)")
    p.add_argument("--layers", type=parse_layers, default=None,
                   help="A-PSR layers, e.g. '12-20' (default: every layer)")
    p.add_argument("--steps", type=int, default=100, help="end-to-end steps after the initialisation")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--regulariser", type=float, default=0.0, help="weight of max(0, 1 - Σλ) (0 = off)")
    p.add_argument("--max-response-tokens", type=int, default=64)
    p.add_argument("--style", default="split", help="how the instruction enters x' (see hooksteer.data.teacher)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from hooksteer.hypersteer.config import default_layer
    from hooksteer.hypersteer.run import load_base_model, read_examples
    from hooksteer.io import atomic_write_files
    from hooksteer.psr.model import PSRConfig
    from hooksteer.psr.teacher import (
        compute_teacher,
        encode_examples,
        pairs_from_distill,
        template_suffix_length,
    )
    from hooksteer.psr.trainer import fit_metrics, train_psr

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    examples = read_examples(args.examples)
    concepts = sorted({e.concept_id for e in examples})
    concept = args.concept or (concepts[0] if len(concepts) == 1 else None)
    if concept is None:
        raise ValueError(f"{args.examples} holds several concepts {concepts}: choose one with --concept")
    examples = [e for e in examples if e.concept_id == concept]
    if not examples:
        raise ValueError(f"no examples for concept {concept!r} in {args.examples} (concepts: {concepts})")
    model = load_base_model(args.model)
    model.requires_grad_(False)
    n_layers = int(model.cfg.n_layers)
    layer = args.layer if args.layer is not None else default_layer(n_layers)
    if args.variant == "single":
        layers = [layer]
    else:
        layers = args.layers or list(range(n_layers))
    if max(layers) >= n_layers or min(layers) < 0:
        raise ValueError(f"layers {layers} outside 0..{n_layers - 1}: the model has {n_layers} layers")
    config = PSRConfig(layers=layers, d_model=int(model.cfg.d_model), variant=args.variant, loss=args.loss,
                       steps=args.steps, lr=args.lr, batch_size=args.batch_size, regulariser=args.regulariser,
                       seed=args.seed, concept_id=concept, steering_prompt=examples[0].steering_prompt,
                       model_name=str(args.model), init=args.init, local_steps=args.local_steps,
                       positions=args.positions, train_from_layer=args.train_from_layer,
                       held_out_fraction=args.held_out_fraction)
    if args.loss == "distill":
        pairs = pairs_from_distill(model, _distill_data(model, examples, args))
    else:
        pairs = encode_examples(model, examples, style=args.style, max_response_tokens=args.max_response_tokens)
    prefix = template_suffix_length(model) if args.positions == "response" else 0
    records = compute_teacher(model, pairs, layers, progress=not args.no_progress, prefix_tokens=prefix)
    psr, result = train_psr(model, records, config, progress=not args.no_progress)
    out = Path(args.out)
    psr.save(out)
    fit = fit_metrics(psr, records)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    top = result.fidelity.get("layers", {}).get(str(layers[-1]), {})
    atomic_write_files({out / "history.json": json.dumps(result.to_dict(), indent=2).encode(),
                        out / "fit.json": json.dumps(fit, indent=2).encode(),
                        out / "config.json": json.dumps({"command": "train-psr", **settings}, indent=2,
                                                        default=str).encode()})
    loss = (f"loss {result.initial.get('loss'):.4g} -> {result.final.get('loss'):.4g}; " if "loss" in result.final
            else "")
    print(f"{config.short_name} on {concept!r}: {len(records)} teacher examples, layers {layers}; {loss}"
          f"relative error at layer {layers[-1]} {top.get('rel_error_train', float('nan')):.3f} (1 = unsteered); "
          f"teacher fit R² {fit['r2']:.3f} (constant vector {fit['r2_constant']:.3f}), corr(λ, ‖Δ‖) "
          f"{fit['lambda_delta_pearson']:.3f}; saved to {out} ({time.perf_counter() - start:.0f} s)")
    return 0


def _distill_data(model: Any, examples: list[Any], args: argparse.Namespace) -> Any:
    """Distillation records for the examples' (steering prompt, base prompt) pairs (the model's own answers)."""
    from hooksteer.data.schema import BasePrompt, Concept
    from hooksteer.distill import DistillConfig, build_distill_teacher

    concept = Concept(id=examples[0].concept_id, title=examples[0].concept_id,
                      steering_prompts=[examples[0].steering_prompt])
    bases = list({e.base_prompt: BasePrompt(id=e.base_prompt_id or str(i), text=e.base_prompt)
                  for i, e in enumerate(examples)}.values())
    config = DistillConfig(max_new_tokens=args.max_response_tokens, top_k=args.top_k, style=args.style)
    return build_distill_teacher(model, [(concept, b) for b in bases], config,
                                 cache_dir=Path(args.out) / "distill_cache", progress=not args.no_progress)
