"""Benchmark: HyperSteer distilled from prompt steering, with its bounds, against prompt steering and DiffMean.

One run, one split, one judge, one seed. Steps (every setting is a flag; see ``--help``; ``--tiny`` runs the
same pipeline on a tiny random model in well under a minute, numbers meaningless):

1. **split** concepts (Wikipedia vital articles) into train / held-in / held-out and base prompts into train /
   eval (:func:`hooksteer.data.splits.make_split`, saved as ``split.json``);
2. **teacher** (:func:`hooksteer.distill.build_distill_teacher`, cached under ``teacher/``): the prompt-steered
   model's greedy answer and its top-k next-token log-probs for train concepts × train prompts (H and the
   floor train on these), held-out concepts × train prompts (only the oracle trains on these) and
   evaluated concepts × eval prompts (eval KL only, never trained on);
3. **train** every HyperSteer variant, the **oracle** (a free vector per evaluated concept) and the **floor**
   (one vector shared by all concepts) with the same objective (``--loss distill``: KL to the prompted model)
   through :class:`~hooksteer.hypersteer.HyperSteerTrainer`;
4. **eval KL** of every trained module and of no steering on the never-trained eval pairs;
5. **diagnostics**: between-concept cosine and shared fraction of held-out vectors
   (:func:`~hooksteer.hypersteer.diagnostics.vector_separation`), cosine of H's vector with the oracle's;
6. **steering score** (AxBench protocol, :func:`hooksteer.evaluate.protocol.evaluate`: factor chosen on half of
   the eval prompts, reported on the other half) of prompt steering, DiffMean (same layer), no steering, and
   H / oracle / floor both at residual-norm factors (``--factors``) and at multiples of their trained norm
   (``--trained-factors``); bootstrap 95 % intervals over concepts, paired differences;
7. **answer length** of each method's chosen answers vs the unsteered answers to the same prompts, and
   ``samples.md`` with generations to read;
8. **scale curve** (``--curve 50 100``): H retrained on nested subsets of the training concepts, held-out
   score and eval KL per size;
9. **timing**: teacher seconds per pair and tokens/s, training tokens/s, seconds per new vector.

A time estimate is printed before anything runs (``--estimate-only`` stops there).

Outputs under ``--out``: ``settings.json``, ``split.json``, ``teacher/`` (distillation cache),
``hyper-<variant>/``, ``oracle/``, ``floor/``, ``evaluation/`` (the protocol's results and generations),
``curve/``, ``results.json``, ``results.md``, ``samples.md``.

Usage::

    .venv/bin/python benchmarks/hypersteer_eval.py --tiny
    .venv/bin/python benchmarks/hypersteer_eval.py --estimate-only
    .venv/bin/python benchmarks/hypersteer_eval.py --train-concepts 400 --held-out 20 --curve 50 100 200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):  # hooksteer / analysis, and common.py (also when loaded via importlib)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
import common  # noqa: E402
from common import fmt, log  # noqa: E402

DEFAULT_OUT = REPO / "runs" / "benchmarks" / "hypersteer_eval"
VARIANT_CHOICES = ("no_context", "in_context", "cross_attention", "read_off")


@dataclass
class HyperSteerEvalSettings:
    """Every setting of one benchmark run (saved as ``settings.json`` beside its outputs)."""

    out: str | None = field(default=None, metadata={"help": "output folder (default runs/benchmarks/hypersteer_eval)"})
    model: str | None = field(default=None, metadata={"help": "base model (default: embedded SmolLM2-135M-Instruct)"})
    threads: int = field(default=1, metadata={"help": "torch threads"})
    device: str | None = field(default=None, metadata={"help": "torch device, e.g. cuda (default: CUDA if available)"})
    seed: int = field(default=0, metadata={"help": "split / training / evaluation seed"})
    concept_seed: int = field(default=0, metadata={"help": "seed of load_concepts' shuffle"})
    train_concepts: int = field(default=100, metadata={"help": "training concepts"})
    held_out: int = field(default=20, metadata={"help": "held-out concepts (never trained on by H)"})
    held_in: int = field(default=5, metadata={"help": "held-in concepts (a subset of the training concepts)"})
    prompt_sources: list[str] = field(default_factory=lambda: ["hand-written"],
                                      metadata={"help": "base-prompt sources (hand-written, mt-bench, writingbench)"})
    train_prompts: int = field(default=4, metadata={"help": "train base prompts per concept"})
    eval_prompts: int = field(default=6, metadata={"help": "eval base prompts (half choose the factor, half report)"})
    loss: str = field(default="distill", metadata={"help": "objective of H and its bounds", "choices": ["distill", "ce"]})
    response: str = field(default="prompted", metadata={"help": "whose greedy answer is distilled",
                                                        "choices": ["prompted", "unsteered"]})
    teacher_context: str = field(default="steering_prompt", metadata={
        "help": "what the teacher reads", "choices": ["steering_prompt", "reference_text"]})
    reference_chars: int = field(default=600, metadata={
        "help": "characters of the concept's reference text the reference_text teacher reads"})
    teacher_tokens: int = field(default=32, metadata={"help": "max tokens of a teacher answer"})
    top_k: int = field(default=32, metadata={"help": "teacher log-probs kept per position"})
    teacher_batch: int = field(default=16, metadata={"help": "pairs per teacher batch"})
    teacher_cache: str | None = field(default=None, metadata={"help": "distillation cache folder (default OUT/teacher)"})
    variants: list[str] = field(default_factory=lambda: ["no_context", "cross_attention"], metadata={
        "help": f"HyperSteer variants ({', '.join(VARIANT_CHOICES)}), each optionally VARIANT:BLOCKS[:FLAG...], "
                "e.g. no_context:12:frozen (H reads the base model's own frozen layer-12 features); flags: frozen, "
                "ridge (the head fitted in closed form to the training concepts' oracle vectors instead of trained "
                "end to end), prior (the direction prior, Δ += g·(x − μ)/‖x − μ‖, g from --prior-gain), noweight "
                "(with prior: no head weight, Δ = b + g·(x − μ)/‖x − μ‖); read_off (no blocks or flags): each concept's "
                "vectors read off the model (its mean prompted-minus-unprompted activation difference on its train "
                "prompts' answers, site by site), with a gain and a bias per site trained at --bound-lr "
                "(hooksteer.hypersteer.ReadOffSteer)"})
    curve_variants: list[str] | None = field(default=None, metadata={
        "help": "variants retrained for the scale curve (none: all of --variants)"})
    n_blocks: int = field(default=2, metadata={"help": "H blocks"})
    prior_gain: float = field(default=20.0, metadata={"help": "starting gain of the direction prior (variants with "
                                                               "the prior flag)"})
    pooling: str = field(default="mean", metadata={"help": "what H's head reads", "choices": ["mean", "last"]})
    center: bool = field(default=True, metadata={"help": "centred head input, Δ = b + W(x − μ)"})
    layer: int | None = field(default=None, metadata={"help": "injection layer (default ~2/3 of the depth)"})
    layers: str | None = field(default=None, metadata={
        "help": "several injection sites, a range A-B or A+B+… (e.g. 10-29): H, the oracle and the floor write a "
                "vector for each layer, all added at once (scored at their trained norm only); none: --layer alone"})
    on_policy: bool = field(default=False, metadata={
        "help": "also train each (non-ridge) H a second round, as many steps again, on the training pairs' prompted "
                "answers plus its own answers scored by the prompted teacher (one round of on-policy distillation; "
                "scored as hypersteer-VARIANT-onpolicy)"})
    gate: str = field(default="none", metadata={
        "help": "per-token gates on H's, the oracle's and the floor's vectors at every site (A-PSR's λ(h); scored at "
                "their trained norm only): none, shared (one gate per site for every concept) or concept (H writes a "
                "gate per steering prompt; the oracle keeps one per concept)", "choices": ["none", "shared", "concept"]})
    positions: str = field(default="all", metadata={
        "help": "where H's, the oracle's and the floor's vectors are added, in training and evaluation: every token, "
                "the base prompt's tokens only (prompt), or where answer tokens are predicted (answer: the prompt's "
                "last token and the answer)", "choices": ["all", "prompt", "answer"]})
    delta_norm_factor: float | None = field(default=None, metadata={
        "help": "train H, the oracle and the floor at a fixed vector length, FACTOR × the residual norm at the layer "
                "(only the direction is learned; none: the length is learned too)"})
    token_weights: str = field(default="uniform", metadata={
        "help": "distillation token weights: uniform, or teacher_shift (each answer token by KL(teacher ‖ "
                "unsteered) there)", "choices": ["uniform", "teacher_shift"]})
    epochs: float = field(default=3.0, metadata={"help": "H training epochs (ignored when --steps is given)"})
    steps: int | None = field(default=None, metadata={"help": "H optimizer steps"})
    batch_size: int = field(default=8, metadata={"help": "training batch size"})
    lr: float = field(default=3e-4, metadata={"help": "learning rate of H's blocks and embeddings"})
    head_lr: float | None = field(default=None, metadata={"help": "learning rate of H's head weight (none: --lr)"})
    head_bias_lr: float = field(default=2e-2, metadata={"help": "learning rate of H's head bias (the shared part)"})
    warmup_steps: int = field(default=10, metadata={"help": "H warm-up steps"})
    bound_lr: float = field(default=0.05, metadata={"help": "learning rate of the oracle and floor vectors"})
    bound_epochs: float = field(default=12.0, metadata={"help": "oracle training epochs over its (few) pairs; the "
                                                                 "floor trains as many steps as H"})
    eval_every: int = field(default=0, metadata={"help": "eval-KL interval in steps during training (0: start/end)"})
    factors: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.45],
                                 metadata={"help": "steering factors (× mean residual norm at the site)"})
    trained_factors: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0],
                                         metadata={"help": "multiples of a vector's trained norm"})
    diffmean_layer: int | None = field(default=None, metadata={"help": "DiffMean layer (default: H's layer)"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens generated per evaluated answer"})
    eval_batch_size: int = field(default=32, metadata={"help": "generation batch"})
    curve: list[int] = field(default_factory=list, metadata={"help": "training-set sizes (concepts) for the scale "
                                                                      "curve, each < --train-concepts"})
    curve_metric: str = field(default="score", metadata={
        "help": "what each curve point measures: the steering score (generations, judged) or only the held-out "
                "eval KL (no generation; much cheaper)", "choices": ["score", "kl"]})
    no_held_in: bool = field(default=False, metadata={"help": "evaluate held-out concepts only"})
    samples: int = field(default=20, metadata={"help": "generations written to samples.md"})
    timing_vectors: int = field(default=8, metadata={"help": "new (concept, prompt) pairs timed per variant"})


TINY = {"train_concepts": 8, "held_out": 3, "held_in": 1, "train_prompts": 2, "eval_prompts": 2, "teacher_tokens": 6,
        "top_k": 8, "n_blocks": 1, "epochs": 2.0, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "bound_epochs": 2.0,
        "factors": [0.5, 2.0], "trained_factors": [1.0], "max_new_tokens": 4, "timing_vectors": 2, "samples": 4,
        "curve": [4], "reference_chars": 40}

# Seconds per unit, measured on the 2-core CPU (1 torch thread) and on an H200; used only for the estimate.
RATES = {"cpu": {"teacher_pair": 1.5, "train_token": 2.0e-3, "generation": 0.35, "setup": 90.0},
         "cuda": {"teacher_pair": 0.04, "train_token": 2.0e-5, "generation": 0.02, "setup": 60.0}}


# ----------------------------------------------------------------------------------------------- settings
def parse_settings(argv: Sequence[str] | None = None) -> tuple[HyperSteerEvalSettings, argparse.Namespace]:
    """Settings from the command line (``--tiny`` shrinks every setting left at its default)."""
    from hooksteer.settings import add_arguments, from_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random model + keyword judge (< 1 minute)")
    parser.add_argument("--estimate-only", action="store_true", help="print the time estimate and stop")
    add_arguments(parser, HyperSteerEvalSettings)
    args = parser.parse_args(argv)
    settings = common.finish_settings(from_arguments(HyperSteerEvalSettings, args), parser, tiny=args.tiny, tiny_values=TINY,
                                      validate=validate, default_out=DEFAULT_OUT)
    return settings, args


def validate(s: HyperSteerEvalSettings) -> list[str]:
    """Every problem with the settings (empty when they are fine), checked before anything runs."""
    problems = common.counts_below_one(s, ("train_concepts", "held_out", "train_prompts", "teacher_tokens", "top_k",
                                           "teacher_batch", "n_blocks", "batch_size", "max_new_tokens",
                                           "eval_batch_size", "threads", "reference_chars"))
    if s.held_in < 0 or s.held_in > s.train_concepts:
        problems.append("--held-in must be between 0 and --train-concepts")
    if s.eval_prompts < 2:
        problems.append("--eval-prompts must be >= 2 (selection and report halves)")
    if s.held_out < 2:
        problems.append("--held-out must be >= 2 (between-concept cosines)")
    try:
        specs = [parse_variant(v, s.n_blocks) for v in [*s.variants, *(s.curve_variants or [])]]
    except ValueError as error:
        problems.append(str(error))
    else:
        names = [spec.name for spec in specs[: len(s.variants)]]
        if not s.variants or len(set(names)) != len(names):
            problems.append(f"--variants must name each variant once, got {s.variants}")
        if s.curve_variants and not set(s.curve_variants) <= set(s.variants):
            problems.append("--curve-variants must be among --variants")
        if any(spec.variant == "read_off" for spec in specs):
            clash = [flag for flag, on in (("--gate", getattr(s, "gate", "none") != "none"),
                                           ("--delta-norm-factor", s.delta_norm_factor is not None),
                                           ("--positions prompt", getattr(s, "positions", "all") == "prompt"),
                                           ("--loss ce", s.loss != "distill")) if on]
            if clash:
                problems.append(f"the read_off variant reads ungated vectors of free length off the prompted "
                                f"model's answers (steering every token or the answer): leave out {', '.join(clash)}")
    if any(n < 2 or n >= s.train_concepts for n in s.curve):
        problems.append("--curve sizes must be >= 2 and < --train-concepts")
    for name in ("factors", "trained_factors"):
        values = getattr(s, name)
        if not values or any(not (math.isfinite(v) and v > 0) for v in values):
            problems.append(f"--{name.replace('_', '-')} must be positive numbers")
    if s.steps is not None and s.steps < 1:
        problems.append("--steps must be >= 1")
    layers = getattr(s, "layers", None)
    if layers is not None:
        parsed_layers = common.parse_layers(layers)
        if parsed_layers is None:
            problems.append(f"--layers must be a layer range A-B or a list A+B+… (increasing), got {layers!r}")
        elif s.layer is not None and s.layer != parsed_layers[0]:
            problems.append(f"--layer {s.layer} must be the lowest of --layers {layers} (or left out)")
        if s.delta_norm_factor is not None:
            problems.append("--delta-norm-factor needs a single layer (one residual norm); leave out --layers")
        try:
            flagged = [v for v in [*s.variants, *(s.curve_variants or [])] if parse_variant(v, s.n_blocks).prior]
        except ValueError:
            flagged = []
        if flagged:
            problems.append(f"--layers does not take the prior flag (a direction prior for one site), got {flagged}")
    if getattr(s, "gate", "none") != "none":
        try:
            flagged = [v for v in [*s.variants, *(s.curve_variants or [])]
                       if parse_variant(v, s.n_blocks).prior or parse_variant(v, s.n_blocks).ridge]
        except ValueError:
            flagged = []
        if flagged:
            problems.append(f"--gate does not take the prior or ridge flags (both write ungated vectors), got {flagged}")
    if s.delta_norm_factor is not None and not (math.isfinite(s.delta_norm_factor) and s.delta_norm_factor > 0):
        problems.append("--delta-norm-factor must be a positive number")
    if s.token_weights != "uniform" and s.loss != "distill":
        problems.append("--token-weights teacher_shift needs --loss distill")
    if s.epochs <= 0 or s.bound_epochs <= 0 or s.lr <= 0 or s.bound_lr <= 0:
        problems.append("--epochs, --bound-epochs, --lr and --bound-lr must be > 0")
    return problems


class VariantSpec(NamedTuple):
    """One ``--variants`` entry: ``VARIANT[:BLOCKS[:FLAG...]]`` with flags ``frozen``, ``ridge``, ``prior``."""

    variant: str
    n_blocks: int
    frozen: bool
    ridge: bool = False
    prior: bool = False
    noweight: bool = False

    @property
    def name(self) -> str:
        """Module name suffix: the variant, or e.g. ``no_context-ridge12`` / ``no_context-prior0`` with flags."""
        flags = [flag for flag, on in (("ridge", self.ridge), ("prior", self.prior), ("noweight", self.noweight))
                 if on]
        return "-".join([self.variant, *flags]) + str(self.n_blocks) if flags else self.variant


FLAGS = ("frozen", "ridge", "prior", "noweight")


def parse_variant(spec: str, default_blocks: int) -> VariantSpec:
    """``"no_context:12:frozen"`` → ``VariantSpec("no_context", 12, True)``; a bare variant uses ``--n-blocks``,
    trainable. Flags: ``frozen`` (H's blocks and embeddings stay the base model's), ``ridge`` (H's head fitted in
    closed form to the training concepts' oracle vectors, :func:`hooksteer.hypersteer.ridge.fit_head_ridge`, instead
    of training end to end; implies frozen), ``prior`` (the direction prior, ``prior_gain=--prior-gain``),
    ``noweight`` (with ``prior``: the head's weight stays zero, Δ = b + g·(x − μ)/‖x − μ‖; b and g train at
    ``--bound-lr``, like the floor's vector)."""
    parts = spec.split(":")
    flags = parts[2:]
    if parts[0] not in VARIANT_CHOICES or any(f not in FLAGS for f in flags) or len(set(flags)) != len(flags):
        raise ValueError(f"--variants: {spec!r} is not VARIANT[:BLOCKS[:FLAG...]] with VARIANT in {VARIANT_CHOICES} "
                         f"and each FLAG once, among {FLAGS}")
    try:
        blocks = int(parts[1]) if len(parts) > 1 else default_blocks
    except ValueError:
        raise ValueError(f"--variants: {spec!r}: BLOCKS must be an integer") from None
    if blocks < 0:
        raise ValueError(f"--variants: {spec!r}: BLOCKS must be >= 0")
    ridge = "ridge" in flags
    if ridge and parts[0] != "no_context":
        raise ValueError(f"--variants: {spec!r}: a ridge head is fitted for no_context only (one vector per "
                         "steering prompt)")
    if "noweight" in flags and ("prior" not in flags or ridge):
        raise ValueError(f"--variants: {spec!r}: noweight needs prior (and no ridge head)")
    if parts[0] == "read_off":
        if len(parts) > 1:
            raise ValueError(f"--variants: {spec!r}: read_off has no blocks and no flags (it reads its vectors off "
                             "the base model itself)")
        return VariantSpec("read_off", 0, True)
    return VariantSpec(parts[0], blocks, "frozen" in flags or ridge, ridge, "prior" in flags, "noweight" in flags)


def steps_for(n_examples: int, epochs: float, batch_size: int) -> int:
    return max(1, math.ceil(epochs * n_examples / batch_size))


def estimate_seconds(s: HyperSteerEvalSettings, device: str) -> dict[str, float]:
    """Rough seconds per stage, from the sizes and :data:`RATES` (printed before the run starts)."""
    rate = RATES["cuda" if device.startswith("cuda") else "cpu"]
    evaluated = s.held_out + (0 if s.no_held_in else s.held_in)
    pairs = (s.train_concepts + s.held_out) * s.train_prompts + evaluated * s.eval_prompts
    tokens_per_example = 45 + s.teacher_tokens
    n_train = s.train_concepts * s.train_prompts
    h_steps = s.steps or steps_for(n_train, s.epochs, s.batch_size)
    bound_steps = h_steps + steps_for(evaluated * s.train_prompts, s.bound_epochs, s.batch_size)
    n_factor_methods = 2 * (len(s.variants) + 2) + 1  # H, oracle, floor at two magnitudes; DiffMean
    n_curve = len(s.curve_variants or s.variants)
    generations = evaluated * s.eval_prompts * (n_factor_methods * max(len(s.factors), len(s.trained_factors)) + 2)
    curve_generations = len(s.curve) * n_curve * s.held_out * s.eval_prompts * (
        len(s.factors) + len(s.trained_factors)) * (s.curve_metric == "score")
    n_curve_trained = sum(not parse_variant(v, s.n_blocks).ridge for v in (s.curve_variants or s.variants))
    curve_steps = sum(s.steps or steps_for(n * s.train_prompts, s.epochs, s.batch_size) for n in s.curve) * n_curve_trained
    step_seconds = rate["train_token"] * s.batch_size * tokens_per_example * 3  # forward + backward above the site
    lowest = (site_layers(s) or [s.layer if s.layer is not None else 20])[0]
    step_seconds *= max(1, 29 - lowest) / 9  # the rate was measured above layer 20 of SmolLM2's 30
    specs = [parse_variant(v, s.n_blocks) for v in s.variants]
    trained = sum(not spec.ridge for spec in specs)
    on_policy = trained if getattr(s, "on_policy", False) else 0  # a second round per trained H, and its answers
    trained += on_policy
    generations += evaluated * s.eval_prompts * len(s.trained_factors) * on_policy
    pairs += n_train * on_policy  # its own answers, generated and scored by the teacher like a teacher pair
    if any(spec.ridge for spec in specs):  # the training concepts' oracle, the ridge heads' targets
        bound_steps += steps_for(n_train, s.bound_epochs, s.batch_size)
    # a read_off H first reads every concept's vectors: three passes over its train pairs (about one training step each)
    read_off = sum(spec.variant == "read_off" for spec in specs) * (n_train + evaluated * s.train_prompts)
    return {"setup": rate["setup"], "teacher": pairs * rate["teacher_pair"],
            "train": (h_steps * trained + bound_steps + read_off / s.batch_size) * step_seconds,
            "evaluate": generations * rate["generation"],
            "curve": curve_steps * step_seconds + curve_generations * rate["generation"]}


# ----------------------------------------------------------------------------------------------- steps
def distill_config(s: Any) -> Any:
    """The teacher's settings (response, context, length, top-k, batch) from a benchmark's settings."""
    from hooksteer.distill import DistillConfig

    return DistillConfig(response=s.response, teacher_context=s.teacher_context, max_new_tokens=s.teacher_tokens,
                         top_k=s.top_k, batch_size=s.teacher_batch, max_reference_chars=s.reference_chars)


def teacher_data(s: HyperSteerEvalSettings, model: Any, generator: Any, concepts: Sequence[Any],
                 prompts: Sequence[Any], cache: Path, tiny: bool) -> Any:
    from hooksteer.distill import build_distill_teacher

    return build_distill_teacher(model, [(c, p) for c in concepts for p in prompts], distill_config(s), cache_dir=cache,
                                 generator=generator, progress=not tiny)


def on_policy_data(s: Any, model: Any, generator: Any, concepts: Sequence[Any], prompts: Sequence[Any],
                   student: Any, tiny: bool) -> Any:
    """The student's own greedy answers on every (concept, prompt) pair, scored by the prompted teacher (the same
    teacher settings as :func:`teacher_data`; :mod:`hooksteer.hypersteer.on_policy`)."""
    from hooksteer.hypersteer.on_policy import build_on_policy_teacher

    return build_on_policy_teacher(model, [(c, p) for c in concepts for p in prompts], student, distill_config(s),
                                   generator=generator, progress=not tiny)


def fixed_length(s: HyperSteerEvalSettings, resid_norm: float | None) -> float | None:
    """The fixed vector length of H and its bounds: ``--delta-norm-factor`` × ``resid_norm`` (None: learned)."""
    factor = getattr(s, "delta_norm_factor", None)  # settings saved before the flag existed have none
    if factor is None:
        return None
    if resid_norm is None:
        raise ValueError("--delta-norm-factor needs the residual norm at the injection layer")
    return float(factor) * float(resid_norm)


def site_layers(s: HyperSteerEvalSettings) -> list[int] | None:
    """The injection sites of ``--layers`` (``None``: ``--layer`` alone; settings saved before the flag have none)."""
    spec = getattr(s, "layers", None)
    return None if spec is None else common.parse_layers(spec)


def hyper_config(s: HyperSteerEvalSettings, spec: str, n_examples: int, resid_norm: float | None = None) -> Any:
    """H's settings for the variant ``spec``; ``resid_norm`` (at the injection layer) sets the fixed length of
    ``--delta-norm-factor``."""
    from hooksteer.hypersteer import HyperSteerConfig

    variant, n_blocks, frozen, ridge, prior, noweight = parse_variant(spec, s.n_blocks)
    steps = 0 if ridge else s.steps or steps_for(n_examples, s.epochs, s.batch_size)
    if variant == "read_off":  # a gain and a bias per site, trained like the floor's vector (same steps as H)
        return dataclasses.replace(bound_config(s, n_examples, s.epochs), extra={"trained_steps": steps,
                                                                                "hyper": "read_off"})
    extra: dict[str, Any] = {"trained_steps": steps, **({"head_fit": "ridge", "ridge_targets": n_examples} if ridge
                                                          else {})}
    # without a head weight H is the floor's shared vector plus the prior's gain: both train at the bounds' rate
    bias_lr = s.bound_lr if noweight else s.head_bias_lr
    return HyperSteerConfig(variant=variant, n_blocks=n_blocks, freeze_blocks=frozen,
                            prior_gain=s.prior_gain if prior else None, head_weight=not noweight, layer=s.layer,
                            layers=site_layers(s), gate=getattr(s, "gate", "none"),
                            positions=s.positions, delta_norm=fixed_length(s, resid_norm),
                            token_weights=getattr(s, "token_weights", "uniform"), lr=s.lr, head_lr=s.head_lr,
                            head_bias_lr=bias_lr, pooling=s.pooling,
                            center=s.center, loss=s.loss, batch_size=s.batch_size, max_steps=max(steps, 1),
                            warmup_steps=min(s.warmup_steps, steps // 4), seed=s.seed, eval_every=s.eval_every,
                            log_every=max(1, min(10, steps)), save_every=0, extra=extra)


def bound_config(s: HyperSteerEvalSettings, n_examples: int, epochs: float, resid_norm: float | None = None) -> Any:
    """The oracle's and the floor's settings (same objective, positions and vector length as H)."""
    from hooksteer.hypersteer import HyperSteerConfig

    steps = s.steps if s.steps and epochs == s.epochs else steps_for(n_examples, epochs, s.batch_size)
    return HyperSteerConfig(variant="no_context", n_blocks=0, layer=s.layer, layers=site_layers(s),
                            gate=getattr(s, "gate", "none"), positions=s.positions, lr=s.bound_lr,
                            loss=s.loss, delta_norm=fixed_length(s, resid_norm),
                            token_weights=getattr(s, "token_weights", "uniform"),
                            batch_size=s.batch_size, max_steps=steps, warmup_steps=0, seed=s.seed,
                            eval_every=s.eval_every, log_every=max(1, min(10, steps)), save_every=0,
                            extra={"trained_steps": steps})


def saved_training(module: Any, out: Path) -> dict[str, Any] | None:
    """The training record of a module saved in ``out`` by an earlier (interrupted) run with the same settings,
    after loading its weights into ``module``; None when there is none or its settings differ (then it is retrained
    and overwritten)."""
    record = out / "training.json"
    if not record.is_file() or not (out / "config.json").is_file():
        return None
    saved = json.loads((out / "config.json").read_text())
    try:  # a config saved before a field existed holds that field's default
        saved_config = type(module.config).from_dict(saved.get("config") or {}).to_dict()
    except (TypeError, ValueError):
        return None
    if saved_config != module.config.to_dict() or (
            "keys" in saved and saved["keys"] != getattr(module, "keys", None)):
        return None
    module.load_weights(out)
    return {**json.loads(record.read_text()), "reused_from": str(out)}


def reloaded_or_made(module: Any, out: Path, make: Any) -> dict[str, Any]:
    """``module``'s record from ``out`` when an earlier run with the same settings saved it there (weights loaded),
    else ``make()``'s record after saving the module and that record to ``out``; the module is left in eval mode."""
    from hooksteer.io import atomic_write_text

    info = saved_training(module, out)
    if info is None:
        info = make()
        module.save(out)
        atomic_write_text(out / "training.json", json.dumps(info, indent=2))  # the trainer's history and more
    module.eval()
    module.base_model.requires_grad_(False)
    return info


def train(module: Any, records: Sequence[Any], eval_records: Sequence[Any], out: Path, tiny: bool,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``module`` with the HyperSteer trainer, save it to ``out``, and return its training record (with
    ``extra`` added to it).

    A module that an earlier run with the same ``--out`` and settings already trained and saved is reloaded instead
    (a benchmark stopped during evaluation resumes without retraining)."""
    from hooksteer.hypersteer import HyperSteerTrainer
    from hooksteer.hypersteer.trainer import encoded_lengths

    def make() -> dict[str, Any]:
        trainer = HyperSteerTrainer(module, records, eval_records or None, output_dir=None, progress=not tiny)
        result = trainer.train()
        history = result.to_dict()
        lengths = encoded_lengths(trainer.train_data)
        tokens = result.steps * module.config.batch_size * (lengths.get("prompt_tokens", 0)
                                                            + lengths.get("target_tokens", 0))
        return {**history, "n_train_examples": len(records), "trainable_parameters": sum(
            p.numel() for p in module.parameters() if p.requires_grad),
            "tokens_per_second": tokens / max(result.seconds, 1e-9),
            "eval_loss_start": history["eval_loss"][0]["eval_loss"] if history["eval_loss"] else None,
            "eval_loss_end": history["eval_loss"][-1]["eval_loss"] if history["eval_loss"] else None,
            **(extra or {})}

    return reloaded_or_made(module, out, make)


def read_off_hyper(s: HyperSteerEvalSettings, model: Any, spec: str, records: Sequence[Any], n_train: int,
                   concepts: Sequence[Any], out: Path, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """A :class:`~hooksteer.hypersteer.ReadOffSteer` holding the read-off vectors of every steering prompt of
    ``records`` (training concepts and the evaluated concepts' train prompts), gain 1 and bias 0, and the seconds the
    reading took; when ``out`` holds it already (same settings), the reading is skipped and :func:`train` reloads it."""
    from hooksteer.hypersteer import ReadOffSteer, prompt_difference_vectors

    config = hyper_config(s, spec, n_train)
    keys = list(dict.fromkeys(r.steering_prompt for r in records))
    hyper = ReadOffSteer(model, keys, config)
    if saved_training(hyper, out) is not None:
        return hyper, {}
    started = time.perf_counter()
    hyper.set_vectors(prompt_difference_vectors(model, records, hyper.config.sites, distill_config=distill_config(s),
                                                concepts={c.id: c for c in concepts}, batch_size=s.batch_size,
                                                positions=hyper.config.positions, progress=progress))
    seconds = time.perf_counter() - started
    return hyper, {"read_off_seconds": seconds, "read_off_seconds_per_concept": seconds / len(keys),
                   "read_off_pairs_per_concept": len(records) / len(keys)}


def fit_ridge_head(hyper: Any, oracle_train: Any, keys: Sequence[str], out: Path, seed: int) -> dict[str, Any]:
    """Fit ``hyper``'s head in closed form to the oracle vectors of the steering prompts ``keys`` (cross-validated
    ridge strength), save it to ``out`` and return its record; reloaded instead when ``out`` holds the same fit."""
    from hooksteer.hypersteer.ridge import fit_head_ridge

    def make() -> dict[str, Any]:
        started = time.perf_counter()
        fit = fit_head_ridge(hyper, keys, oracle_train.vectors(list(keys)).cpu(), seed=seed)
        return {"steps": 0, "seconds": time.perf_counter() - started, "head_fit": fit.to_dict(),
                "n_train_examples": len(keys), "trainable_parameters": 0, "tokens_per_second": None}

    return reloaded_or_made(hyper, out, make)


def eval_kl(modules: dict[str, Any], records_by_role: dict[str, list[Any]]) -> dict[str, dict[str, float]]:
    """Token-mean eval loss (KL to the prompted model) per module and role, with no steering as a reference."""
    from hooksteer.hypersteer.bounds import ConceptVectors
    from hooksteer.hypersteer.trainer import mean_loss

    any_module = next(iter(modules.values()))
    unsteered = ConceptVectors.floor(any_module.base_model, dataclasses.replace(any_module.config))
    out: dict[str, dict[str, float]] = {}
    for name, module in {"none": unsteered, **modules}.items():
        out[name] = {role: mean_loss(module, records) for role, records in records_by_role.items() if records}
    return out


def separation(modules: dict[str, Any], held_out: Sequence[Any], eval_prompts: Sequence[Any],
               oracle: Any) -> dict[str, dict[str, Any]]:
    """Between-concept cosine / shared fraction of each module's held-out vectors, and cosine with the oracle."""
    from hooksteer.hypersteer.diagnostics import vector_separation

    steering = [c.steering_prompts[0] for c in held_out]
    prompts = [p.text for p in eval_prompts]
    reference = oracle.vectors(steering).float().flatten(1)  # several sites' vectors joined into one row
    out = {}
    for name, module in modules.items():
        info = vector_separation(module, steering, prompts)
        vectors = (module.vectors(steering, [prompts[0]] * len(steering)) if module.needs_base_prompt else (
            module.vectors(steering))).flatten(1)
        info["cosine_with_oracle"] = float(torch.nn.functional.cosine_similarity(vectors.float().cpu(),
                                                                                 reference.cpu()).mean())
        info["norm_ratio_to_oracle"] = float(vectors.norm(dim=-1).mean() / reference.norm(dim=-1).mean())
        out[name] = info
    return out


def methods_for(s: HyperSteerEvalSettings, modules: dict[str, Any], texts_for: Any, layer: int) -> list[Any]:
    """Every evaluated method: baselines, and each module at residual-norm factors and at its trained norm."""
    from hooksteer.evaluate.methods import DiffMeanMethod, NoSteering, PromptSteering
    from hooksteer.hypersteer.evaluation import HyperSteerMethod

    methods: list[Any] = [PromptSteering(), NoSteering(),
                          DiffMeanMethod(layer=s.diffmean_layer if s.diffmean_layer is not None else layer,
                                         texts_for=texts_for)]
    for name, module in modules.items():
        if module.config.n_sites == 1 and not module.config.gated:  # a fraction of one site's residual norm
            # means nothing for several sites, nor for a gated vector (its strength is λ·z)
            methods.append(HyperSteerMethod(module, texts_for=texts_for, name=f"{name}@resid"))
        methods.append(HyperSteerMethod(module, magnitude="trained", factors=s.trained_factors,
                                        texts_for=texts_for, name=f"{name}@trained"))
    return methods


def curve_points(s: HyperSteerEvalSettings, model: Any, generator: Any, judge: Any, train_data: Any,
                 train_concepts: Sequence[Any], held_out: Sequence[Any], eval_prompts: Sequence[Any],
                 eval_records: list[Any], texts_for: Any, out: Path, tiny: bool, oracle_train: Any = None,
                 resid_norm: float | None = None, read_off_records: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """H retrained on nested subsets of the training concepts (a ridge head refitted to their oracle vectors):
    held-out eval KL and steering score per size. ``read_off_records``: the held-out concepts' train-prompt records,
    from which a read_off H reads their vectors."""
    from hooksteer.evaluate.protocol import evaluate
    from hooksteer.evaluate.stats import bootstrap_ci, per_concept_scores
    from hooksteer.hypersteer import HyperSteer
    from hooksteer.hypersteer.evaluation import HyperSteerMethod
    from hooksteer.hypersteer.trainer import mean_loss

    points = []
    for size in sorted(s.curve):
        subset = {c.id for c in train_concepts[:size]}
        records = [r for r in train_data.records if r.concept_id in subset]
        for spec in s.curve_variants or s.variants:
            parsed = parse_variant(spec, s.n_blocks)
            variant = parsed.name
            log(f"curve: {spec} on {size} concepts ({len(records)} examples) ...")
            torch.manual_seed(s.seed)
            if parsed.variant == "read_off":  # the held-out concepts' vectors from their train prompts' answers
                hyper, read = read_off_hyper(s, model, spec, [*records, *read_off_records], len(records),
                                             [*train_concepts, *held_out], out / f"{variant}-{size}",
                                             progress=not tiny)
                info = train(hyper, records, [], out / f"{variant}-{size}", tiny, extra=read)
            elif parsed.ridge:
                keys = [c.steering_prompt for c in train_concepts[:size]]
                hyper = HyperSteer(model, hyper_config(s, spec, len(keys), resid_norm))
                info = fit_ridge_head(hyper, oracle_train, keys, out / f"{variant}-{size}", s.seed)
            else:
                hyper = HyperSteer(model, hyper_config(s, spec, len(records), resid_norm))
                info = train(hyper, records, [], out / f"{variant}-{size}", tiny)
            point = {"concepts": size, "variant": variant, "n_examples": len(records), "steps": info["steps"],
                     "train_seconds": info["seconds"], "eval_kl": mean_loss(hyper, eval_records)}
            points.append(point)
            if s.curve_metric == "kl":
                continue
            methods = [HyperSteerMethod(hyper, magnitude="trained", factors=s.trained_factors, texts_for=texts_for,
                                        name=f"hypersteer-{variant}@trained")]
            if hyper.config.n_sites == 1 and not hyper.config.gated:
                methods.insert(0, HyperSteerMethod(hyper, texts_for=texts_for, name=f"hypersteer-{variant}@resid"))
            result = evaluate(generator, methods, list(held_out), list(eval_prompts), judge=judge, factors=s.factors,
                              max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch_size, seed=s.seed,
                              out_dir=out / f"{variant}-{size}" / "evaluation", progress=not tiny,
                              reuse="reused_from" in info)
            rows = [{"method": c.method, "concept_id": c.concept_id, **c.report} for c in result.concepts]
            ids = [c.id for c in held_out]
            for method in (m.name for m in methods):
                point[method.split("@")[1]] = bootstrap_ci(per_concept_scores(rows, method, ids)).to_dict()
    return points


# ----------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings, args = parse_settings(argv)
    s, tiny = settings, args.tiny
    device = s.device or ("cuda" if torch.cuda.is_available() else "cpu")
    estimate = estimate_seconds(s, device)
    common.log_estimate(estimate, device)
    if args.estimate_only:
        return {"estimate_seconds": estimate}
    out = Path(s.out)  # type: ignore[arg-type]
    run = argparse.Namespace(threads=s.threads, out=out)
    began = common.start_run(run)
    from hooksteer.settings import save_settings

    save_settings(settings, out / "settings.json")

    from hooksteer.evaluate.methods import pool_texts_for
    from hooksteer.evaluate.protocol import evaluate
    from hooksteer.hypersteer import HyperSteer
    from hooksteer.hypersteer.bounds import ConceptVectors
    from hooksteer.hypersteer.timing import time_vector_inference

    log("loading model and data ...")
    model = common.load_model(tiny, s.seed, s.model, s.device)
    # the embedded model's TransformerBridge shares its weights and generates faster; a tiny bridge would not
    generator = common.load_bridge(tiny, s.seed, s.device) if s.model is None and not tiny else model
    concepts, prompts, split = common.load_split(s, tiny, out, "hypersteer_eval")
    train_concepts = split.select(concepts, split.train_concepts)
    held_out = split.select(concepts, split.held_out_concepts)
    held_in = [] if s.no_held_in else split.select(concepts, split.held_in_concepts)
    train_prompts = split.select(prompts, split.train_prompts)
    eval_prompts = split.select(prompts, split.eval_prompts)
    judge = common.make_judge(tiny, model)

    # ---- teacher
    cache = Path(s.teacher_cache) if s.teacher_cache else out / "teacher"
    log(f"teacher: ({len(train_concepts)} train + {len(held_out)} held-out) concepts × {len(train_prompts)} train "
        f"prompts, {len(held_out) + len(held_in)} evaluated concepts × {len(eval_prompts)} eval prompts ...")
    started = time.perf_counter()
    train_data = teacher_data(s, model, generator, train_concepts, train_prompts, cache, tiny)
    split.check_examples(train_data.steering_examples())
    oracle_data = teacher_data(s, model, generator, [*held_out, *held_in], train_prompts, cache, tiny)
    eval_data = teacher_data(s, model, generator, [*held_out, *held_in], eval_prompts, cache, tiny)
    teacher_seconds = time.perf_counter() - started
    held_out_ids = {c.id for c in held_out}
    eval_by_role = {"held_out": [r for r in eval_data.records if r.concept_id in held_out_ids],
                    "held_in": [r for r in eval_data.records if r.concept_id not in held_out_ids]}
    oracle_records = [r for r in oracle_data.records]
    log(f"teacher: {len(train_data)} train pairs ({train_data.stats['seconds_per_pair'] or 0:.2f} s/pair new, "
        f"{train_data.stats['finished_fraction']:.2f} finished), {teacher_seconds:.0f} s")

    texts_for = pool_texts_for(list(concepts))
    resid_norm = None
    if s.delta_norm_factor is not None:
        from hooksteer.hypersteer.config import default_layer

        site = s.layer if s.layer is not None else default_layer(int(model.cfg.n_layers))
        resid_norm = common.layer_resid_norms(model, [site], held_out, texts_for)[site]
        log(f"fixed vector length {s.delta_norm_factor:g} × residual norm {resid_norm:.1f} at layer {site}")

    # ---- train
    modules: dict[str, Any] = {}
    training: dict[str, Any] = {}
    oracle_train = None
    train_keys = [c.steering_prompt for c in train_concepts]
    if any(parse_variant(spec, s.n_blocks).ridge for spec in s.variants):
        log("training the oracle on the training concepts (targets of the ridge heads) ...")
        oracle_train = ConceptVectors.oracle(model, train_keys, bound_config(s, len(train_data), s.bound_epochs,
                                                                                resid_norm))
        training["oracle-train"] = train(oracle_train, train_data.records, [], out / "oracle-train", tiny)
    for spec in s.variants:
        parsed = parse_variant(spec, s.n_blocks)
        name = f"hypersteer-{parsed.name}"
        torch.manual_seed(s.seed)
        if parsed.variant == "read_off":
            log(f"HyperSteer {spec}: reading the vectors of {len(train_concepts)} training + {len(held_out) + len(held_in)}"
                f" evaluated concepts off the model, then training its gains and biases ...")
            hyper, info = read_off_hyper(s, model, spec, [*train_data.records, *oracle_records], len(train_data),
                                         [*train_concepts, *held_out, *held_in], out / f"hyper-{parsed.name}",
                                         progress=not tiny)
            training[name] = train(hyper, train_data.records, eval_by_role["held_out"], out / f"hyper-{parsed.name}",
                                   tiny, extra=info)
        elif parsed.ridge:
            log(f"fitting the head of HyperSteer {spec} to the oracle vectors of {len(train_keys)} training concepts ...")
            hyper = HyperSteer(model, hyper_config(s, spec, len(train_keys), resid_norm))
            training[name] = fit_ridge_head(hyper, oracle_train, train_keys, out / f"hyper-{parsed.name}", s.seed)
        else:
            log(f"training HyperSteer {spec} ...")
            hyper = HyperSteer(model, hyper_config(s, spec, len(train_data), resid_norm))
            training[name] = train(hyper, train_data.records, eval_by_role["held_out"], out / f"hyper-{parsed.name}",
                                   tiny)
        modules[name] = hyper
        if getattr(s, "on_policy", False) and not parsed.ridge and parsed.variant != "read_off":
            log(f"HyperSteer {spec}: its own answers on the {len(train_data)} training pairs, then a second round ...")
            second = HyperSteer(model, hyper_config(s, spec, len(train_data), resid_norm))
            second.load_state_dict(hyper.state_dict())
            own = on_policy_data(s, model, generator, train_concepts, train_prompts, hyper, tiny)
            training[f"{name}-onpolicy"] = {**train(second, [*train_data.records, *own.records],
                                                    eval_by_role["held_out"], out / f"hyper-{parsed.name}-onpolicy",
                                                    tiny), "on_policy": own.stats}
            modules[f"{name}-onpolicy"] = second
    log("training the floor (one shared vector) ...")
    floor = ConceptVectors.floor(model, bound_config(s, len(train_data), s.epochs, resid_norm))
    training["floor"] = train(floor, train_data.records, eval_by_role["held_out"], out / "floor", tiny)
    log("training the oracle (a free vector per evaluated concept) ...")
    oracle = ConceptVectors.oracle(model, [r.steering_prompt for r in oracle_records],
                                   bound_config(s, len(oracle_records), s.bound_epochs, resid_norm))
    training["oracle"] = train(oracle, oracle_records, [], out / "oracle", tiny)
    modules |= {"oracle": oracle, "floor": floor}

    # ---- eval KL and diagnostics
    log("eval KL and vector diagnostics ...")
    kl = eval_kl(modules, eval_by_role)
    diagnostics = separation(modules, held_out, eval_prompts, oracle)

    # ---- steering score
    first, last = (parse_variant(v, s.n_blocks).name for v in (s.variants[0], s.variants[-1]))
    layer = modules[f"hypersteer-{first}"].layer
    methods = methods_for(s, modules, texts_for, layer)
    eval_concepts = [*held_out, *held_in]
    roles = {c.id: "held_out" for c in held_out} | {c.id: "held_in" for c in held_in}
    log(f"evaluating {len(methods)} methods on {len(held_out)} held-out + {len(held_in)} held-in concepts × "
        f"{len(eval_prompts)} prompts ...")
    started = time.perf_counter()
    # a saved evaluation's results are reused per method: the untrained baselines, and each module reloaded with the
    # weights it was evaluated with (a module trained anew is evaluated anew)
    reusable = {"prompt", "none", "diffmean", *(f"{name}@{magnitude}" for name, info in training.items()
                                               if "reused_from" in info for magnitude in ("resid", "trained"))}
    result = evaluate(generator, methods, eval_concepts, eval_prompts, judge=judge, factors=s.factors,
                      max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch_size, seed=s.seed,
                      out_dir=out / "evaluation", progress=not tiny, reuse=reusable)
    eval_seconds = time.perf_counter() - started
    per_concept = common.per_concept_rows(result, roles)
    scores = common.interval_summary(per_concept, [m.name for m in methods], roles)
    comparisons = common.paired_comparisons(per_concept, roles, [m.name for m in methods if m.name.startswith(
        ("hypersteer", "oracle", "floor"))], baselines=("diffmean", "prompt", "floor@resid", "floor@trained"),
        prompt_share=0.9)
    lengths = common.answer_lengths(result, model.tokenizer, reference="none")

    # ---- scale curve
    curve: list[dict[str, Any]] = []
    if s.curve:
        curve = curve_points(s, model, generator, judge, train_data, train_concepts, held_out, eval_prompts,
                             eval_by_role["held_out"], texts_for, out / "curve", tiny, oracle_train, resid_norm,
                             read_off_records=[r for r in oracle_records if r.concept_id in held_out_ids])

    # ---- timing
    pairs = [(c.steering_prompts[0], p.text) for c in held_out for p in eval_prompts][: s.timing_vectors]
    timing = {name: time_vector_inference(m, pairs) for name, m in modules.items() if name.startswith("hypersteer")}

    report = {
        **common.report_head("hypersteer_eval", settings, estimate, tiny, run, argv, model, judge),
        "data": {"n_train_concepts": len(train_concepts), "n_train_prompts": len(train_prompts),
                 "n_held_out": len(held_out), "n_held_in": len(held_in), "n_eval_prompts": len(eval_prompts),
                 "n_train_pairs": len(train_data), "n_oracle_pairs": len(oracle_records),
                 "n_eval_pairs": len(eval_data), "held_out": [c.id for c in held_out],
                 "held_in": [c.id for c in held_in], "eval_prompts": [p.text for p in eval_prompts],
                 "teacher": {"train": train_data.stats, "oracle": oracle_data.stats, "eval": eval_data.stats}},
        "training": training, "eval_kl": kl, "diagnostics": diagnostics, "scores": scores,
        "comparisons": comparisons, "answer_lengths": lengths, "per_concept": per_concept, "curve": curve,
        "timing": timing, "resid_norm": resid_norm,
        "seconds": {"teacher": teacher_seconds, "evaluate": eval_seconds, "total": 0.0},
    }
    common.write_samples(result, eval_concepts, out / "samples.md", s.samples,
                         methods=list(dict.fromkeys(["none", "prompt", f"hypersteer-{first}@trained",
                                                     f"hypersteer-{last}@trained", "oracle@resid", "oracle@trained",
                                                     "floor@trained", "diffmean"])))
    common.save_report(report, out, began, markdown)
    return report


# ----------------------------------------------------------------------------------------------- report
def markdown(report: dict[str, Any]) -> str:
    from hooksteer.evaluate.report import table

    s, d = report["settings"], report["data"]
    lines = ["# HyperSteer (distilled) vs bounds, prompt steering and DiffMean", "",
             f"`{report['command']}`", "",
             f"Model `{report['model']}`, judge `{report['judge']}`, device {report['environment']['device']}, "
             f"loss `{s['loss']}` (response: {s['response']}), {d['n_train_concepts']} train concepts × "
             f"{d['n_train_prompts']} prompts = {d['n_train_pairs']} training pairs; evaluated on {d['n_held_out']} "
             f"held-out + {d['n_held_in']} held-in concepts × {d['n_eval_prompts']} eval prompts (factor chosen on "
             f"half, reported on the other half), {s['max_new_tokens']} greedy tokens. Scores: mean over concepts "
             "[bootstrap 95 % interval].", ""]
    for role, title in (("held_out", "Held-out concepts"), ("held_in", "Held-in concepts")):
        rows = report["scores"].get(role)
        if rows:
            lines += [f"## {title}", "", common.interval_table(rows), ""]
    if report["comparisons"]:
        lines += ["## Paired differences (held-out)", "", common.comparison_table(report["comparisons"]), ""]
    lines += ["## Eval KL (never-trained pairs) and vectors", ""]
    body = []
    for name, kl in report["eval_kl"].items():
        diag = report["diagnostics"].get(name, {})
        train = report["training"].get(name, {})
        body.append([name, fmt(kl.get("held_out")), fmt(kl.get("held_in")), fmt(diag.get("between_concepts")),
                     fmt(diag.get("shared_fraction")), fmt(diag.get("cosine_with_oracle")), fmt(diag.get("mean_norm"), 1),
                     str(train.get("steps", "—")), fmt(train.get("seconds"), 0)])
    lines.append(table(body, ("module", "KL held-out", "KL held-in", "cos between concepts", "shared fraction",
                              "cos with oracle", "‖Δ‖", "steps", "train s")))
    lines += ["", "## Answer length (words, chosen factor, report half) vs unsteered", "",
              common.length_table(report["answer_lengths"]), ""]
    if report["curve"]:
        lines += ["## Scale curve (held-out)", ""]
        points = list(report["curve"])
        for name in report["training"]:  # the full-size H of the main run ends each curve
            variant = name.removeprefix("hypersteer-")
            if name.startswith("hypersteer-") and any(p["variant"] == variant for p in points):
                scores = report["scores"].get("held_out", {})
                points.append({"variant": variant, "concepts": d["n_train_concepts"], "n_examples": d["n_train_pairs"],
                               "eval_kl": report["eval_kl"][name]["held_out"],
                               "resid": scores.get(f"{name}@resid", {}).get("score"),
                               "trained": scores.get(f"{name}@trained", {}).get("score")})
        points.sort(key=lambda p: (p["variant"], p["concepts"]))
        body = [[p["variant"], str(p["concepts"]), str(p["n_examples"]), fmt(p["eval_kl"]),
                 str(common.interval_text(p.get("resid"))), str(common.interval_text(p.get("trained")))]
                for p in points]
        lines += [table(body, ("variant", "train concepts", "examples", "eval KL", "score @resid", "score @trained")),
                  ""]
    lines += ["## Seconds", ""]
    t = report["data"]["teacher"]["train"]
    lines.append(f"Teacher: {fmt(t.get('seconds_per_pair'))} s per new pair, {fmt(t.get('tokens_per_second'), 0)} "
                 f"tokens/s. Training tokens/s: " + ", ".join(f"{k} {fmt(v.get('tokens_per_second'), 0)}"
                                                             for k, v in report["training"].items()) + ". New vector: "
                 + ", ".join(f"{k} {v['seconds_per_vector']:.3f} s" for k, v in report["timing"].items()) + ".")
    for name, info in report["training"].items():
        if info.get("read_off_seconds_per_concept") is not None:  # a new concept's vectors must be read off first
            lines.append(f"{name} reads a new concept's vectors off the model in "
                         f"{fmt(info['read_off_seconds_per_concept'])} s (from the prompted model's answers to "
                         f"{fmt(info.get('read_off_pairs_per_concept'), 0)} train prompts, which the teacher writes at "
                         f"{fmt(t.get('seconds_per_pair'))} s per pair); the lookup above comes after that.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
