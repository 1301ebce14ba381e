"""HyperSteer part of ``hooksteer demo``: train (or load) a small HyperSteer, steer held-out concepts.

:func:`run_hypersteer_demo` (all settings in one :class:`HyperSteerDemoSettings`, the same object the CLI
builds from its ``--hypersteer-*`` flags, saved as ``hypersteer/settings.json``):

1. loads a saved HyperSteer from ``out_dir/hypersteer/`` when one is there (and its ``demo.json`` says
   which concepts were held out), otherwise
2. splits Wikipedia vital-article concepts, writes distillation records for the training concepts
   (:func:`hooksteer.hypersteer.dataset.build_distill_dataset`: the prompt-steered model's greedy answer
   and its next-token distributions; no sampling, no judge), trains a small HyperSteer to match them
   (``loss="distill"``) and saves it. The held-out eval KL (held-out concepts × eval prompts, never trained
   on) is printed before and after training, next to no steering;
3. for each held-out concept, generates greedily for one base prompt: unsteered, prompt-steered (the
   steering prompt in the user turn) and HyperSteer-steered (H's vector for the steering prompt, at
   ``factor ×`` its trained norm, added at every position with :func:`hooksteer.steer`), prints them side by
   side and writes ``hypersteer_generations.json``, with the mean cosine between H's vectors for different
   concepts and the answers' lengths; with ``fit_steer`` (default) a fourth column steers with
   :class:`~hooksteer.hypersteer.FitSteer`: the concept's A-PSR fitted in closed form to the prompted model's
   activations on its answers to the training base prompts (nothing trained, seconds per concept). By default it
   is fitted as the benchmarks' best HyperSteer: reading each concept's reference text first
   (``fit_background_chars=600``), steering once the answer's first 9 tokens are written and stopping after its
   32nd (``fit_positions="generated+8:32"``).

Example:
    >>> from hooksteer.hypersteer.demo import HyperSteerDemoSettings, run_hypersteer_demo   # doctest: +SKIP
    >>> report = run_hypersteer_demo(None, HyperSteerDemoSettings(train_concepts=40), out_dir="runs/demo")  # doctest: +SKIP
    >>> report["eval_kl_before"], report["eval_kl_after"]                                                  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hooksteer.hypersteer.diagnostics import mean_pairwise_cosine
from hooksteer.hypersteer.fit_steer import LEARNED_ALPHA

DEMO_FILE = "demo.json"
GENERATIONS_FILE = "hypersteer_generations.json"
SETTINGS_FILE = "settings.json"
HYPER_DIR = "hypersteer"


@dataclass
class HyperSteerDemoSettings:
    """Every setting of the HyperSteer demo (CLI flags ``--hypersteer-<name>``)."""

    train_concepts: int = field(default=40, metadata={"help": "Wikipedia concepts H is trained on"})
    held_out: int = field(default=3, metadata={"help": "held-out concepts shown (never trained on)"})
    train_prompts: int = field(default=4, metadata={"help": "base prompts per training concept"})
    eval_prompts: int = field(default=2, metadata={"help": "held-out base prompts (eval KL; the first is shown)"})
    variant: str = field(default="no_context", metadata={
        "help": "HyperSteer variant", "choices": ["no_context", "in_context", "cross_attention"]})
    n_blocks: int = field(default=1, metadata={"help": "H blocks"})
    freeze_blocks: bool = field(default=False, metadata={"help": "keep H's blocks at the base model's weights (H "
                                                                 "reads the model's own layer-n_blocks features)"})
    pooling: str = field(default="mean", metadata={"help": "what H's head reads", "choices": ["mean", "last"]})
    prior_gain: float | None = field(default=None, metadata={
        "help": "starting gain of the direction prior Δ += g·(x − μ)/‖x − μ‖ (none: no prior)"})
    layer: int | None = field(default=None, metadata={"help": "injection layer (default ~2/3 of the depth)"})
    epochs: float = field(default=3.0, metadata={"help": "training epochs (ignored when steps is set)"})
    steps: int | None = field(default=None, metadata={"help": "training steps"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate of H's blocks"})
    head_lr: float | None = field(default=None, metadata={"help": "learning rate of the head's weight (none: lr)"})
    head_bias_lr: float = field(default=2e-2, metadata={"help": "learning rate of the head's bias (shared part)"})
    batch_size: int = field(default=8, metadata={"help": "training batch size"})
    teacher_tokens: int = field(default=32, metadata={"help": "tokens of each distilled answer"})
    top_k: int = field(default=32, metadata={"help": "teacher log-probs kept per token"})
    factor: float = field(default=1.0, metadata={"help": "steering strength, × the vector's trained norm"})
    max_new_tokens: int = field(default=40, metadata={"help": "tokens per shown answer (greedy)"})
    base_prompt: str | None = field(default=None, metadata={"help": "request answered for every concept "
                                                                    "(default: the first eval prompt)"})
    fit_steer: bool = field(default=True, metadata={
        "help": "also steer each held-out concept with FitSteer (its A-PSR fitted in closed form to the prompted "
                "model's activations on its answers to the training base prompts; nothing trained)"})
    fit_background_chars: int = field(default=600, metadata={
        "help": "FitSteer: characters of the concept's reference text the prompted model reads before the steering "
                "prompt while FitSteer fits (the reference_text teacher; FitSteer.write_prompt(background=...)); "
                "0: the steering prompt alone; default 600, as the benchmarks' best HyperSteer"})
    fit_positions: str = field(default="generated+8:32", metadata={
        "help": "FitSteer: where its A-PSR steers (a PSR positions mode: response = from the first answer token; "
                "default generated+8:32: the answer's first 9 tokens unsteered, then steered up to its 32nd, as the "
                "benchmarks' best HyperSteer; generated+8 steers to the end)"})
    fit_alpha: float = field(default=LEARNED_ALPHA, metadata={
        "help": "FitSteer's strength α (1 = as fitted; default: the α learned across concepts, LEARNED_ALPHA)"})
    retrain: bool = field(default=False, metadata={"help": "train a new H even if OUT/hypersteer/ holds one"})
    seed: int = field(default=0, metadata={"help": "split and training seed"})

    def __post_init__(self) -> None:
        for name in ("factor", "fit_alpha"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0 and torch.isfinite(torch.tensor(float(value)))):
                raise ValueError(f"{name} must be a positive number, got {value}")
        for name in ("train_concepts", "held_out", "train_prompts", "eval_prompts", "batch_size", "max_new_tokens",
                     "teacher_tokens", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        from hooksteer.psr.hooks import check_mode

        if not isinstance(self.fit_positions, str):
            raise ValueError(f"fit_positions must be a PSR positions mode, got {self.fit_positions!r}")
        check_mode(self.fit_positions)
        if self.fit_background_chars < 0:
            raise ValueError(f"fit_background_chars must be >= 0 (0: no background), got {self.fit_background_chars}")
        if self.n_blocks < 0 or (self.steps is not None and self.steps < 1) or self.epochs <= 0 or self.lr <= 0:
            raise ValueError("n_blocks must be >= 0, steps >= 1, epochs and lr > 0")


def _log(message: str, verbose: bool) -> None:
    if verbose:
        print(message, flush=True)


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _build_and_train(model: Any, hyper_dir: Path, s: HyperSteerDemoSettings, generator: Any, verbose: bool
                     ) -> tuple[Any, dict[str, Any]]:
    import math

    from hooksteer.hypersteer import HyperSteer, HyperSteerConfig, HyperSteerTrainer
    from hooksteer.hypersteer.bounds import ConceptVectors
    from hooksteer.hypersteer.dataset import DistillDataSettings, build_distill_dataset
    from hooksteer.hypersteer.trainer import mean_loss

    data_settings = DistillDataSettings(train_concepts=s.train_concepts, held_out=s.held_out,
                                        train_prompts=s.train_prompts, eval_prompts=s.eval_prompts, seed=s.seed,
                                        teacher_tokens=s.teacher_tokens, top_k=s.top_k)
    _log(f"Distillation records (the prompt-steered model's greedy answers and next-token distributions): "
         f"{s.train_concepts} train concepts × {s.train_prompts} prompts ...", verbose)
    started = time.perf_counter()
    data = build_distill_dataset(model, data_settings, cache_dir=hyper_dir / "teacher", generator=generator,
                                 progress=verbose)
    teacher_seconds = time.perf_counter() - started
    train, held = data.train.records, data.held_out.records
    steps = s.steps or max(1, math.ceil(s.epochs * len(train) / s.batch_size))
    config = HyperSteerConfig(variant=s.variant, n_blocks=s.n_blocks, freeze_blocks=s.freeze_blocks, layer=s.layer,
                              prior_gain=s.prior_gain,
                              lr=s.lr, head_lr=s.head_lr, head_bias_lr=s.head_bias_lr, pooling=s.pooling,
                              loss="distill", batch_size=s.batch_size, max_steps=steps,
                              warmup_steps=min(10, steps // 5), seed=s.seed, eval_every=0,
                              log_every=max(1, steps // 5), save_every=0,
                              extra={"trained_steps": steps, "trained_by": "hooksteer demo"})
    torch.manual_seed(s.seed)
    hyper = HyperSteer(model, config)
    unsteered = ConceptVectors.floor(model, config)
    kl_none, kl_before = mean_loss(unsteered, held), mean_loss(hyper, held)
    _log(f"  {len(train)} training records, {len(held)} held-out records ({teacher_seconds:.0f} s)", verbose)
    _log(f"Training a {s.n_blocks}-block {s.variant} HyperSteer at {hyper.hook_name} for {steps} steps "
         "(KL to the prompt-steered model) ...", verbose)
    result = HyperSteerTrainer(hyper, train, None, output_dir=None, progress=verbose).train()
    hyper.eval()
    model.requires_grad_(False)
    kl_after = mean_loss(hyper, held)
    meta = {
        "held_out_concepts": [c.to_dict() for c in data.held_out_concepts],
        "train_concepts": [c.id for c in data.train_concepts],
        "eval_prompts": [p.text for p in data.eval_prompts],
        "train_prompts": [p.text for p in data.train_prompts],
        "n_train_examples": len(train), "n_eval_examples": len(held),
        "eval_kl_unsteered": kl_none, "eval_kl_before": kl_before, "eval_kl_after": kl_after,
        "train_loss": result.train_loss, "steps": result.steps, "train_seconds": result.seconds,
        "teacher_seconds": teacher_seconds, "teacher_stats": data.train.stats, "split": data.split.to_dict(),
    }
    hyper.save(hyper_dir)
    _write_json(hyper_dir / DEMO_FILE, meta)
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


def _words(text: str) -> int:
    return len(text.split())


def _fit_steer_rows(model: Any, generator: Any, rows: list[dict[str, Any]], probe_prompts: Sequence[str],
                    s: HyperSteerDemoSettings, verbose: bool, backgrounds: Mapping[str, str] | None = None
                    ) -> dict[str, Any]:
    """Add each row's FitSteer answer (``row["fit_steer"]``): the concept's A-PSR on every layer, fitted to the
    prompted model's answers to ``probe_prompts`` (reading ``backgrounds[concept_id]`` first, when given), steering
    at α = ``fit_alpha``; returns its timing and the between-concept cosine of the fitted directions."""
    from hooksteer.generation import generate_texts
    from hooksteer.hypersteer.fit_steer import FitSteer, direction_separation

    if not probe_prompts:
        raise ValueError("FitSteer needs base prompts to read the prompted model's answers on (demo.json lists none)")
    _log(f"FitSteer: fitting each held-out concept's A-PSR to the prompted model's answers to {len(probe_prompts)} "
         f"base prompts (no training), steering at α = {s.fit_alpha:g}, positions {s.fit_positions} ...", verbose)
    fit = FitSteer(model, range(int(model.cfg.n_layers)))
    psrs, started = {}, time.perf_counter()
    for row in rows:
        context = ({"background": backgrounds[row["concept_id"]], "background_chars": s.fit_background_chars}
                   if backgrounds else {})
        psr = fit.write_prompt(row["steering_prompt"], probe_prompts, max_new_tokens=s.teacher_tokens, **context)
        with psr.steer(generator, alpha=s.fit_alpha, positions=s.fit_positions):
            row["fit_steer"] = generate_texts(generator, [row["base_prompt"]], max_new_tokens=s.max_new_tokens)[0]
        psrs[row["concept_id"]] = psr
    seconds = time.perf_counter() - started
    cosine = direction_separation(psrs)["between_concepts"] if len(psrs) > 1 else None
    if cosine is not None:
        _log(f"FitSteer: {seconds / len(rows):.1f} s per concept; mean cosine between the concepts' fitted directions "
             f"{cosine:.3f}", verbose)
    return {"layers": fit.config.layers, "alpha": s.fit_alpha, "background_chars": s.fit_background_chars,
            "positions": s.fit_positions,
            "seconds_per_concept": seconds / len(rows),
            "mean_direction_cosine": cosine, "answer_words_mean": sum(_words(r["fit_steer"]) for r in rows) / len(rows)}


def run_hypersteer_demo(
    model: Any | None = None,
    settings: HyperSteerDemoSettings | None = None,
    *,
    out_dir: str | Path = "runs/demo",
    generator: Any = None,
    verbose: bool = True,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or load) a small HyperSteer and show it steering held-out concepts next to the baselines.

    Args:
        model: a ``HookedTransformer`` (``None``: the embedded SmolLM2-135M-Instruct).
        settings: :class:`HyperSteerDemoSettings` (default: its defaults).
        out_dir: the trained H goes to ``out_dir/hypersteer/`` and is reused by later runs; the side-by-side
            generations go to ``out_dir/hypersteer_generations.json``.
        generator: the same network as another model object for faster generation (e.g. its
            ``TransformerBridge``); default ``model``.
        verbose: progress messages and bars.
        print_fn: where the side-by-side text goes.

    Returns:
        A report dict (also the JSON file): eval KLs, seconds, and one row per held-out concept.
    """
    import hooksteer as hs
    from hooksteer.data.schema import Concept
    from hooksteer.data.teacher import steered_chat_prompt
    from hooksteer.display import side_by_side
    from hooksteer.generation import generate_texts
    from hooksteer.settings import save_settings

    s = settings or HyperSteerDemoSettings()
    started = time.perf_counter()
    model = model if model is not None else hs.load_model(progress=verbose)
    generator = generator if generator is not None else model
    out_dir = Path(out_dir)
    hyper_dir = out_dir / HYPER_DIR
    loaded = None if s.retrain else load_demo_hypersteer(model, hyper_dir)
    if loaded is not None:
        hyper, meta = loaded
        trained_now = False
        _log(f"Loaded the HyperSteer saved in {hyper_dir}/ ({meta.get('steps')} training steps; "
             "pass --hypersteer-retrain to train a new one)", verbose)
    else:
        hyper, meta = _build_and_train(model, hyper_dir, s, generator, verbose)
        save_settings(s, hyper_dir / SETTINGS_FILE)
        trained_now = True
    none_kl, before, after = meta.get("eval_kl_unsteered"), meta.get("eval_kl_before"), meta.get("eval_kl_after")
    if before is not None and after is not None:
        _log(f"Held-out eval KL to the prompt-steered model (unseen concepts): no steering {none_kl:.3f}, untrained "
             f"H {before:.3f}, trained H {after:.3f} after {meta['steps']} steps", verbose)
    concepts = [Concept.from_dict(c) for c in meta["held_out_concepts"]]
    request = s.base_prompt or meta["eval_prompts"][0]
    generation = {"max_new_tokens": s.max_new_tokens, "do_sample": False}
    unsteered = generate_texts(generator, [request], **generation)[0]
    prompted = generate_texts(generator, [steered_chat_prompt(model, c.steering_prompt, request) for c in concepts],
                              chat=False, **generation)
    raw_vectors = hyper.vector([c.steering_prompt for c in concepts], request)  # one batched pass through H
    rows, vectors = [], []
    for concept, prompt_steered, raw in zip(concepts, prompted, raw_vectors, strict=True):
        vectors.append(raw.vector)
        with hs.steer(generator, raw * s.factor):
            hyper_steered = generate_texts(generator, [request], **generation)[0]
        rows.append({"concept": concept.title, "concept_id": concept.id, "steering_prompt": concept.steering_prompt,
                     "base_prompt": request, "unsteered": unsteered, "prompt_steered": prompt_steered,
                     "hypersteer": hyper_steered, "hypersteer_norm": raw.norm() * s.factor})
    backgrounds = {c.id: c.text for c in concepts} if s.fit_background_chars else None
    fit_report = (_fit_steer_rows(model, generator, rows, meta["train_prompts"], s, verbose, backgrounds)
                  if s.fit_steer else None)
    for row in rows:
        columns = {"unsteered": row["unsteered"], f"prompt-steered ({row['concept']})": row["prompt_steered"],
                   f"HyperSteer ({row['concept']}, held out)": row["hypersteer"]}
        if "fit_steer" in row:
            columns[f"FitSteer ({row['concept']}, nothing trained)"] = row["fit_steer"]
        print_fn(side_by_side(row["base_prompt"], columns))
        print_fn("")
    mean_cosine = mean_pairwise_cosine(torch.stack(vectors)) if len(vectors) > 1 else None
    if mean_cosine is not None:
        _log(f"Mean cosine between HyperSteer's vectors for different held-out concepts: {mean_cosine:.3f} "
             "(1.0 would mean H ignores the steering prompt)", verbose)
    if len(rows) > 1 and len({row["hypersteer"] for row in rows}) == 1:
        _log("Note: HyperSteer wrote the same answer for every held-out concept.", verbose)
    lengths = {"unsteered": _words(unsteered), "hypersteer_mean": sum(_words(r["hypersteer"]) for r in rows) / len(rows),
               "prompt_steered_mean": sum(_words(r["prompt_steered"]) for r in rows) / len(rows)}
    report = {"hook_name": hyper.hook_name, "variant": hyper.config.variant, "factor": s.factor,
              "mean_vector_cosine": mean_cosine, "trained_now": trained_now, "steps": meta.get("steps"),
              "eval_kl_unsteered": none_kl, "eval_kl_before": before, "eval_kl_after": after,
              "n_train_examples": meta.get("n_train_examples"), "answer_words": lengths, "rows": rows,
              "fit_steer": fit_report,
              "settings": dataclasses.asdict(s), "seconds": round(time.perf_counter() - started, 1),
              "hypersteer_dir": str(hyper_dir)}
    _write_json(out_dir / GENERATIONS_FILE, report)
    _log(f"HyperSteer demo: wrote {out_dir / GENERATIONS_FILE} ({report['seconds']:.0f} s)", verbose)
    return report


# ------------------------------------------------------------------------------------------ CLI
PREFIX = "hypersteer-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the HyperSteer part of ``hooksteer demo``: ``--hypersteer / --no-hypersteer`` and one
    ``--hypersteer-<setting>`` flag per :class:`HyperSteerDemoSettings` field."""
    from hooksteer.settings import add_arguments as add_settings

    group = parser.add_argument_group("HyperSteer demo")
    group.add_argument("--hypersteer", action=argparse.BooleanOptionalAction, default=True,
                       help="also train (or load) a small HyperSteer and steer held-out concepts (default: on)")
    group.add_argument("--retrain-hypersteer", dest="hypersteer_retrain", action="store_true",
                       help="same as --hypersteer-retrain")
    add_settings(group, HyperSteerDemoSettings, prefix=PREFIX, skip=("max_new_tokens",))


def settings_from_args(args: argparse.Namespace) -> HyperSteerDemoSettings:
    """The demo settings from parsed flags (``--max-new-tokens`` of ``hooksteer demo`` is shared)."""
    from hooksteer.settings import from_arguments

    return from_arguments(HyperSteerDemoSettings, args, prefix=PREFIX.replace("-", "_"),
                          max_new_tokens=getattr(args, "max_new_tokens", 40))


def run_from_args(model: Any, args: argparse.Namespace, generator: Any = None) -> dict[str, Any] | None:
    """Run the HyperSteer demo with the options of :func:`add_arguments` (``None`` when ``--no-hypersteer``)."""
    if not getattr(args, "hypersteer", True):
        return None
    return run_hypersteer_demo(model, settings_from_args(args), out_dir=args.out, generator=generator)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HyperSteer demo on the embedded model (see module docstring)")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    add_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import hooksteer as hs

    run_from_args(hs.load_model(), args, generator=hs.load_bridge())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
