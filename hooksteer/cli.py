"""Command-line interface: ``hooksteer demo | diffmean | generate | evaluate | train-hypersteer | train-psr | train-sae | export-gguf``.

Every command that writes outputs saves its settings as ``config.json`` beside them.

Example:
    $ hooksteer demo                                   # love/hate DiffMean + a small HyperSteer, embedded model
    $ hooksteer diffmean --contrast-set love_hate --hook blocks.10.hook_resid_post --out love.safetensors
    $ hooksteer generate --vector love.safetensors --coefficient 6 --prompt "Tell me about your day."
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hooksteer.display import side_by_side

#: ``--positions`` of demo / generate: the named positions of ``hooksteer.hooks.types.PositionName`` (spelled out here
#: so that the CLI starts without importing torch; tests/test_cli_and_generation.py checks they agree)
POSITION_CHOICES = ("all", "prompt", "generated", "answer")

DEMO_PROMPTS = (
    "Tell me about your day.",
    "Write two sentences about the weather today.",
    "What do you think of your neighbours?",
)


# ---------------------------------------------------------------------------- output helpers
def save_config(out_dir: Path, command: str, args: argparse.Namespace, **extra: Any) -> Path:
    """Write the command's settings to ``out_dir/config.json`` (atomically: the old file or the new one)."""
    from hooksteer.io import atomic_write_json

    settings = {k: v for k, v in vars(args).items() if k != "func"}
    config = {"command": command, "settings": settings, **extra}
    return atomic_write_json(out_dir / "config.json", config, default=str)


def _default_layer(model: Any) -> int:
    """A fifth of the depth (layer 6 of SmolLM2-135M's 30).

    In a manual look at layers 6/10/15 with coefficients ±4/±8 on the love/hate vector, layer 6 at ±4
    shifted sentiment while staying fluent; deeper layers and ±8 degraded into repetition.
    """
    return max(0, round(model.cfg.n_layers / 5))


# ---------------------------------------------------------------------------- commands
def run_demo(args: argparse.Namespace) -> int:
    import hooksteer as hs
    from hooksteer.data.contrast import contrast_texts
    from hooksteer.generation import generate_texts
    from hooksteer.hooks import check_hook_name
    from hooksteer.io import atomic_write_json

    start = time.perf_counter()
    print(f"Loading {args.model} ...", flush=True)
    model = hs.load_model(args.model, progress=True)
    layer = args.layer if args.layer is not None else _default_layer(model)
    hook_name = f"blocks.{layer}.hook_resid_{args.site}"
    check_hook_name(model, hook_name)  # --layer in range, before anything is computed
    positive, negative = contrast_texts(args.contrast_set)
    print(f"Building a DiffMean vector at {hook_name} from {len(positive)}+{len(negative)} hand-written texts ...")
    vector = hs.methods.diffmean(model, positive, negative, hook_name, aggregation="mean", progress=True)
    prompts = list(args.prompt or DEMO_PROMPTS)
    columns: dict[str, list[str]] = {}
    generation = {"max_new_tokens": args.max_new_tokens, "do_sample": False, "progress": True}
    print("Generating unsteered ...")
    columns["unsteered"] = generate_texts(model, prompts, **generation)
    for sign, label in ((1.0, f"+{args.coefficient:g} x {args.contrast_set}"),
                        (-1.0, f"-{args.coefficient:g} x {args.contrast_set}")):
        if sign < 0 and not args.both_signs:
            continue
        print(f"Generating steered ({label}) ...")
        with hs.steer(model, vector * (sign * args.coefficient), positions=args.positions):
            columns[label] = generate_texts(model, prompts, **generation)
    print()
    for i, prompt in enumerate(prompts):
        print(side_by_side(prompt, {name: texts[i] for name, texts in columns.items()}))
        print()
    out_dir = Path(args.out)
    vector.save(out_dir / "vector.safetensors")
    atomic_write_json(out_dir / "generations.json",
                      [{"prompt": p, **{name: texts[i] for name, texts in columns.items()}}
                       for i, p in enumerate(prompts)])
    save_config(out_dir, "demo", args, hook_name=hook_name, vector_norm=vector.norm())
    print(f"Saved vector, generations and config to {out_dir}/ ({time.perf_counter() - start:.0f} s)")
    from hooksteer import models
    from hooksteer.hypersteer.demo import run_from_args as run_hypersteer_demo

    # the embedded model's TransformerBridge (same weights) generates faster than the HookedTransformer
    generator = models.load_bridge() if getattr(args, "hypersteer", True) and args.model == models.DEFAULT_MODEL else None
    if run_hypersteer_demo(model, args, generator) is not None:
        print(f"Demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def _read_lines(path: str) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line]


def run_diffmean(args: argparse.Namespace) -> int:
    import hooksteer as hs
    from hooksteer.data.contrast import contrast_texts
    from hooksteer.hooks import check_hook_name

    if args.contrast_set:
        positive, negative = contrast_texts(args.contrast_set)
    elif args.positive and args.negative:
        positive, negative = _read_lines(args.positive), _read_lines(args.negative)
    else:
        raise ValueError("give --contrast-set NAME, or both --positive FILE and --negative FILE")
    model = hs.load_model(args.model, progress=True)
    check_hook_name(model, args.hook)  # before anything is computed
    if args.gguf:  # refuse a site llama.cpp lacks before computing anything
        from hooksteer.llamacpp import control_vector_layer

        control_vector_layer(args.hook, model.cfg.n_layers)
    vector = hs.methods.diffmean(model, positive, negative, args.hook, aggregation=args.aggregation, progress=True)
    out = Path(args.out)
    if args.gguf:
        from hooksteer.llamacpp import export_gguf

        print(f"Wrote llama.cpp control vector {export_gguf(vector, args.gguf, model=model)}")
    vector.save(out)
    save_config(out.parent, "diffmean", args, vector_norm=vector.norm())
    print(f"Saved {vector} to {out}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    import hooksteer as hs
    from hooksteer.generation import generate_texts
    from hooksteer.hooks import check_hook_name

    model = hs.load_model(args.model, progress=True)
    steering = hs.SteeringSet.load(args.vector, model=model)
    for name in steering.hook_names:  # before generating anything
        check_hook_name(model, name)
    prompts = list(args.prompt)
    generation = {"max_new_tokens": args.max_new_tokens, "do_sample": False, "progress": True}
    unsteered = generate_texts(model, prompts, **generation)
    with hs.steer(model, steering * args.coefficient, positions=args.positions):
        steered = generate_texts(model, prompts, **generation)
    for prompt, plain, pushed in zip(prompts, unsteered, steered, strict=True):
        print(side_by_side(prompt, {"unsteered": plain, f"steered x{args.coefficient:g}": pushed}))
        print()
    return 0


SMALL_EVALUATION = {"concepts": 2, "prompts": 4, "factors": "0.1,0.2,0.4", "max_new_tokens": 24,
                    "methods": "prompt,diffmean,random"}


def _parse_floats(text: str) -> list[float]:
    return [float(part) for part in text.replace(",", " ").split()]


def _evaluation_data(args: argparse.Namespace) -> tuple[list[Any], list[Any], list[Any], Any]:
    """(evaluated concepts, negative pool for vector methods, base prompts, split), all fixed by ``--seed``.

    Concepts and prompts come from the same seeded split HyperSteer/PSR training uses
    (:func:`hooksteer.data.splits.make_split`): the evaluated concepts are *held-out* concepts, the
    base prompts are *eval* prompts, and DiffMean/PCA negatives are training concepts.
    """
    from hooksteer.data.base_prompts import load_base_prompts
    from hooksteer.data.concepts import load_concepts
    from hooksteer.data.splits import make_split

    all_concepts = load_concepts(seed=args.seed)
    all_prompts = load_base_prompts(strict=False)
    split = make_split(all_concepts, all_prompts, seed=args.seed)
    held_out = split.select(all_concepts, split.held_out_concepts)
    eval_prompts = split.select(all_prompts, split.eval_prompts)
    if len(held_out) < args.concepts or len(eval_prompts) < args.prompts:
        raise ValueError(f"the split has {len(held_out)} held-out concepts and {len(eval_prompts)} eval prompts; "
                         f"asked for {args.concepts} and {args.prompts}")
    negatives = split.select(all_concepts, split.train_concepts[: args.negatives])
    return held_out[: args.concepts], negatives, eval_prompts[: args.prompts], split


def _load_for_evaluation(args: argparse.Namespace) -> Any:
    import hooksteer as hs

    if args.model_class == "bridge":
        return hs.load_bridge(args.model)
    return hs.load_model(args.model, progress=True)


def run_evaluate(args: argparse.Namespace) -> int:
    from hooksteer.evaluate.judges import EmbeddingJudge, LMPerplexity
    from hooksteer.evaluate.methods import build_methods, pool_texts_for
    from hooksteer.evaluate.protocol import evaluate

    for key, value in SMALL_EVALUATION.items():
        if args.small and getattr(args, key) is None:
            setattr(args, key, value)
    for key, default in (("concepts", 10), ("prompts", 10), ("max_new_tokens", 64)):
        if getattr(args, key) is None:
            setattr(args, key, default)
    factors = _parse_floats(args.factors) if isinstance(args.factors, str) else args.factors
    names = [n.strip() for n in (args.methods or "prompt,diffmean,pca,random").split(",") if n.strip()]
    start = time.perf_counter()
    concepts, negatives, prompts, split = _evaluation_data(args)
    print(f"Loading {args.model} ({args.model_class}) ...", flush=True)
    model = _load_for_evaluation(args)
    texts_for = pool_texts_for([*concepts, *negatives])
    methods = build_methods(names, layer=args.layer, seed=args.seed, texts_for=texts_for)
    judge = EmbeddingJudge(perplexity=LMPerplexity(model))
    print(f"Evaluating {', '.join(names)} on {len(concepts)} concepts x {len(prompts)} base prompts, "
          f"factors {factors or 'default'} ...", flush=True)
    out_dir = Path(args.out)
    result = evaluate(model, methods, concepts, prompts, judge=judge, max_new_tokens=args.max_new_tokens,
                      do_sample=args.sample, temperature=args.temperature, batch_size=args.batch_size,
                      seed=args.seed, **({"factors": factors} if factors else {}))
    # Written only once the run succeeded, so a failed run never mixes its settings with older results.
    save_config(out_dir, "evaluate", args, concepts=[c.id for c in concepts], prompts=[p.id for p in prompts])
    split.save(out_dir / "split.json")
    result.save(out_dir)
    print()
    print(result.to_markdown())
    print(f"\nSaved results, generations, table and figure to {out_dir}/ ({time.perf_counter() - start:.0f} s)")
    return 0


def run_train_hypersteer(args: argparse.Namespace) -> int:
    from hooksteer.hypersteer.run import train_from_run_file

    train_from_run_file(args.config, examples=args.examples, eval_examples=args.eval_examples, out=args.out,
                        resume=args.resume, progress=not args.no_progress)
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from hooksteer.models import DEFAULT_MODEL

    parser = _Parser(prog="hooksteer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="build a DiffMean vector on the embedded model and compare generations")
    demo.add_argument("--model", default=DEFAULT_MODEL)
    demo.add_argument("--contrast-set", default="love_hate")
    demo.add_argument("--layer", type=int, default=None, help="block index (default: a fifth of the depth)")
    demo.add_argument("--site", choices=["pre", "mid", "post"], default="post")
    demo.add_argument("--coefficient", type=float, default=4.0)
    demo.add_argument("--positions", default="all", choices=POSITION_CHOICES)
    demo.add_argument("--one-sign", dest="both_signs", action="store_false",
                      help="skip the column steered with the negated vector")
    demo.add_argument("--max-new-tokens", type=int, default=40)
    demo.add_argument("--prompt", action="append", help="user prompt (repeatable)")
    demo.add_argument("--out", default="runs/demo")
    demo.set_defaults(func=run_demo)
    from hooksteer.hypersteer.demo import add_arguments as add_hypersteer_demo_arguments

    add_hypersteer_demo_arguments(demo)

    diff = commands.add_parser("diffmean", help="build and save a DiffMean vector")
    diff.add_argument("--model", default=DEFAULT_MODEL)
    diff.add_argument("--hook", required=True, help="hook name, e.g. blocks.10.hook_resid_post")
    diff.add_argument("--contrast-set")
    diff.add_argument("--positive", help="file with one positive text per line")
    diff.add_argument("--negative", help="file with one negative text per line")
    diff.add_argument("--aggregation", choices=["last", "mean"], default="mean")
    diff.add_argument("--out", required=True)
    diff.add_argument("--gguf", help="also write the vector as a llama.cpp control vector (.gguf)")
    diff.set_defaults(func=run_diffmean)

    gen = commands.add_parser("generate", help="generate with a saved vector, side by side with unsteered")
    gen.add_argument("--model", default=DEFAULT_MODEL)
    gen.add_argument("--vector", required=True)
    gen.add_argument("--coefficient", type=float, default=1.0)
    gen.add_argument("--positions", default="all", choices=POSITION_CHOICES)
    gen.add_argument("--prompt", action="append", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=40)
    gen.set_defaults(func=run_generate)

    ev = commands.add_parser("evaluate", help="AxBench-style comparison of steering methods (held-out factor choice)")
    ev.add_argument("--model", default=DEFAULT_MODEL)
    ev.add_argument("--model-class", choices=["bridge", "hooked"], default="bridge",
                    help="TransformerBridge (default: fast generation path) or HookedTransformer")
    ev.add_argument("--small", action="store_true", help="CI preset: 2 concepts, 4 prompts, 3 factors, 24 tokens")
    ev.add_argument("--concepts", type=int, default=None, help="number of held-out concepts (default 10)")
    ev.add_argument("--negatives", type=int, default=16, help="training concepts used only as DiffMean/PCA negatives")
    ev.add_argument("--prompts", type=int, default=None, help="number of eval base prompts, split in halves (default 10)")
    ev.add_argument("--factors", type=str, default=None, help="steering factors, e.g. '0.2,0.5,1' (× residual norm)")
    ev.add_argument("--methods", default=None, help="comma-separated: prompt,prefix,diffmean,pca,random,none")
    ev.add_argument("--layer", type=int, default=None, help="block index for vector methods (default: a third)")
    ev.add_argument("--max-new-tokens", type=int, default=None)
    ev.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (AxBench: T=1.0)")
    ev.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default="runs/eval")
    ev.set_defaults(func=run_evaluate)
    hyper = commands.add_parser("train-hypersteer", help="train a HyperSteer hypernetwork from a JSON run file")
    hyper.add_argument("config", help="JSON file: HyperSteerConfig fields + model/examples/eval_examples/out")
    hyper.add_argument("--examples", help="JSONL of SteeringExample records (overrides the run file)")
    hyper.add_argument("--eval-examples", help="JSONL of held-out SteeringExample records")
    hyper.add_argument("--out", help="output folder (default: run file's 'out', else runs/hypersteer)")
    hyper.add_argument("--resume", help="checkpoint folder to continue from, or 'latest'")
    hyper.add_argument("--no-progress", action="store_true", help="no progress bar")
    hyper.set_defaults(func=run_train_hypersteer)
    from analysis.cli_sae import add_parser as add_train_sae_parser
    from hooksteer.psr.cli import add_parser as add_train_psr_parser

    add_train_psr_parser(commands)
    add_train_sae_parser(commands)
    from hooksteer.llamacpp.cli import add_parser as add_export_gguf_parser

    add_export_gguf_parser(commands)
    return parser


def _is_user_error(error: BaseException) -> bool:
    """Errors caused by the command's input (bad values, missing or unusable files or packages), shown
    without traceback. ``SystemExit("message")`` raised by a library function counts as one too."""
    from hooksteer.packaged import PackageMissingError

    if isinstance(error, SystemExit):
        return isinstance(error.code, str)
    return isinstance(error, (ValueError, KeyError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                              PermissionError, FileExistsError, PackageMissingError))


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line ``hooksteer COMMAND: error: ...`` (exit code 2), like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        from hooksteer.cli_checks import one_line

        self.exit(2, one_line(f"{self.prog}: error: {message}") + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a bad input prints one line ``hooksteer COMMAND: error: ...`` and returns 2.

    Every argument is checked (:mod:`hooksteer.cli_checks`) before a model is loaded or a file written.
    Set ``HOOKSTEER_DEBUG=1`` to get the traceback instead.
    """
    from hooksteer.cli_checks import check_arguments, one_line

    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        return int(args.func(args) or 0)
    except (Exception, SystemExit) as error:
        if os.environ.get("HOOKSTEER_DEBUG") or not _is_user_error(error):
            raise
        if isinstance(error, SystemExit):
            message = error.code
        elif isinstance(error, KeyError) and error.args:
            message = error.args[0]
        elif isinstance(error, OSError) and error.filename is not None:
            message = f"{error.strerror or error}: {error.filename}"
        else:
            message = error
        print(one_line(f"hooksteer {args.command}: error: {message}"), file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
