"""Benchmark: the ceiling of a steering form — one free distilled vector per concept, per (layer, positions).

A HyperSteer of a given form (injection layer, steered positions) can at best write the *oracle* of that form: a
free vector per concept trained with the same objective and data (:class:`~hooksteer.hypersteer.ConceptVectors`).
When that oracle stays far below prompt steering, no hypernetwork of that form can reach it, however much data it
sees. This benchmark measures the oracle of several forms on the same held-out concepts, in one run, beside prompt
steering, no steering and (optionally) DiffMean:

1. **split** exactly as ``hypersteer_eval.py`` (same seeds and sizes give the same held-out concepts and eval
   prompts; ``split.json``);
2. **teacher** (:func:`hooksteer.distill.build_distill_teacher`, cached): the prompted model's greedy answers and
   top-k log-probs for held-out concepts × train prompts (the oracles train on these) and × eval prompts (eval KL);
3. **train** one oracle per form ``LAYERS:POSITIONS[:nFACTOR][:shift][:lrRATE]`` (``--forms 20:all 20:prompt
   10:all 10-29:all 20:all:n0.3 20:all:shift 20:all:lr0.3``; ``10-29`` (or ``0+10+20``) gives each concept a vector
   at every one of those layers, steering them all at once, like A-PSR without its gates (``:gate`` adds them, one
   per concept and layer, ``:sgate`` one per layer shared by all concepts); positions ``all`` adds the vector at every token, ``prompt`` only at the base
   prompt's tokens, so the answer reads it through attention, as it reads a steering prompt, ``answer`` only where an
   answer token is predicted (the prompt's last token and the answer: the instruction is read unsteered);
   ``nFACTOR`` trains only the direction, at a fixed length of FACTOR × the residual norm at the layer; ``shift`` weights each answer
   token's KL by how far the steering prompt moved the prediction there, KL(teacher ‖ unsteered); ``lrRATE`` sets
   the form's learning rate);
   ``--apsr 0-29`` also trains, per concept and on the same pairs, the A-PSR of ``hooksteer.psr`` (a gated rank-1
   vector per layer, λ(h)=ReLU(w·h+b), initialised layer by layer from the steering prompt's activation differences,
   then distilled end to end: the PSR that was level with prompt steering in ``psr_eval.py``), scored at
   ``--apsr-factors`` × its α, so the vector oracles and the PSR are measured against one prompt-steering baseline;
   ``--apsr-bounds`` adds, per ``--apsr`` entry, the bounds of :class:`~hooksteer.hypersteer.FitSteer` (the HyperSteer
   that fits an A-PSR to a new steering prompt's activations in closed form, ``--apsr 0-29:local0:steps0``): its floor
   (one PSR fitted to every concept's pairs at once) and its centred form (each concept's directions minus the other
   concepts' mean); ``--forms`` may then be empty. An ``--apsr`` entry ending in a teacher context
   (``0-29:local0:steps0:reference_text`` in a ``steering_prompt`` run, or the other way round) is fitted to, and its
   eval KL measured against, that teacher (its records cached beside the run's), so both fits are paired in one
   evaluation; ``--prompt-background`` adds prompt steering reading what the ``reference_text`` teacher reads (the
   concept's reference text, then the steering prompt: method ``prompt-background``); ``--prefix-positions response
   after_start`` adds prefix steering (:mod:`hooksteer.prefix_attention`: those positions attend to the steering
   prompt's own keys and values in every layer; no training, no vector), the attention route prompting also uses,
   swept at ``--prefix-factors`` × the prefix's attention weight (``--prefix-pooled``: also one mean key and value per
   layer and KV head instead of every token's); ``--prompt-styles prefix`` scores prompt steering with the steering
   prompt placed before the request, as prefix steering reads it (the baseline ``prompt`` keeps its placement);
4. **eval KL** on the never-trained eval pairs, and the between-concept cosine of each form's vectors;
5. **steering score** (AxBench protocol: factor chosen on half of the eval prompts, reported on the other half),
   each oracle at multiples of its trained norm (``--trained-factors``) at its own positions, and the
   ``--resid-forms`` also at ``--factors`` × the residual norm at their layer (as ``<name>@resid``); bootstrap 95 %
   intervals over concepts, paired differences to prompt steering and to 0.9 × prompt steering;
6. **answer length** vs unsteered and ``samples.md`` to read.

A time estimate is printed before anything runs (``--estimate-only`` stops there). Outputs under ``--out``:
``settings.json``, ``split.json``, ``teacher/``, ``oracle-L<layer>-<positions>/``, ``evaluation/``,
``results.json``, ``results.md``, ``samples.md``. A stopped run resumes: trained oracles are reloaded, and the
saved evaluation is reused per method.

Usage::

    .venv/bin/python benchmarks/oracle_forms.py --tiny
    .venv/bin/python benchmarks/oracle_forms.py --forms 20:all 20:prompt 10:all 10:prompt --estimate-only
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
import common  # noqa: E402
import hypersteer_eval  # noqa: E402
from common import fmt, log  # noqa: E402

DEFAULT_OUT = REPO / "runs" / "benchmarks" / "oracle_forms"
POSITION_CHOICES = ("all", "prompt", "answer")
PREFIX_POSITIONS = ("response", "generated", "after_start", "all")  # hooksteer.prefix_attention.POSITIONS (pinned by a test)


@dataclass
class OracleFormsSettings:
    """Every setting of one run (saved as ``settings.json`` beside its outputs)."""

    out: str | None = field(default=None, metadata={"help": "output folder (default runs/benchmarks/oracle_forms)"})
    model: str | None = field(default=None, metadata={"help": "base model (default: embedded SmolLM2-135M-Instruct)"})
    threads: int = field(default=1, metadata={"help": "torch threads"})
    device: str | None = field(default=None, metadata={"help": "torch device, e.g. cuda (default: CUDA if available)"})
    seed: int = field(default=0, metadata={"help": "split / training / evaluation seed"})
    concept_seed: int = field(default=0, metadata={"help": "seed of load_concepts' shuffle"})
    train_concepts: int = field(default=100, metadata={
        "help": "training concepts of the split (not trained on here; the same value as hypersteer_eval.py gives "
                "the same held-out concepts)"})
    held_out: int = field(default=20, metadata={"help": "held-out concepts (the oracles are trained and scored on "
                                                        "these)"})
    held_in: int = field(default=5, metadata={"help": "held-in concepts of the split (not used here; keeps the "
                                                      "split equal to hypersteer_eval.py's)"})
    prompt_sources: list[str] = field(default_factory=lambda: ["hand-written"],
                                      metadata={"help": "base-prompt sources (hand-written, mt-bench, writingbench)"})
    train_prompts: int = field(default=4, metadata={"help": "train base prompts per concept"})
    oracle_prompts: int | None = field(default=None, metadata={
        "help": "base prompts per concept the oracles train on: the split's --train-prompts plus unused prompts of "
                "--prompt-sources, so the eval prompts stay those of the split (default: --train-prompts)"})
    eval_prompts: int = field(default=6, metadata={"help": "eval base prompts (half choose the factor, half report)"})
    response: str = field(default="prompted", metadata={"help": "whose greedy answer is distilled",
                                                        "choices": ["prompted", "unsteered"]})
    teacher_context: str = field(default="steering_prompt", metadata={
        "help": "what the teacher reads", "choices": ["steering_prompt", "reference_text"]})
    reference_chars: int = field(default=600, metadata={
        "help": "characters of the concept's reference text the reference_text teacher reads"})
    prompt_background: bool = field(default=False, metadata={
        "help": "also score prompt steering with the concept's reference text before the steering prompt (method "
                "prompt-background: what the reference_text teacher reads)"})
    prompt_styles: list[str] = field(default_factory=list, metadata={
        "help": "also score prompt steering with the steering prompt placed this way in the user message (prefix: "
                "before the request, as prefix steering reads it; suffix: after it), named prompt-<style>; the "
                "baseline 'prompt' keeps the default placement (split)", "choices": ["prefix", "suffix"]})
    prefix_positions: list[str] = field(default_factory=list, metadata={
        "help": "also score prefix steering (hooksteer.prefix_attention: these positions attend to the steering "
                "prompt's own keys and values in every layer, no training, no vector; response: the assistant header "
                "and the answer, after_start: every token after the steering prompt, as prompting reads it), named "
                "prefix-<positions>", "choices": list(PREFIX_POSITIONS)})
    prefix_pooled: bool = field(default=False, metadata={
        "help": "also score each --prefix-positions mode attending to the pooled prefix (one mean key and value per "
                "layer and KV head, weighted as the keys it stands for: a fixed-size summary), named "
                "prefix-<positions>-pooled"})
    prefix_combine: list[str] = field(default_factory=list, metadata={
        "help": "A-PSR methods (as evaluated, e.g. apsr-L0-29-local0-steps0) also scored while each --prefix-positions "
                "mode attends to the steering prompt at --prefix-combine-factor (its own α sweep kept), named "
                "<method>+prefix-<positions>"})
    prefix_combine_factor: float = field(default=1.0, metadata={
        "help": "prefix steering's attention-weight multiplier in the --prefix-combine rows"})
    prefix_factors: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0], metadata={
        "help": "prefix steering: multipliers of the prefix keys' attention weight swept (1 = as prompted)"})
    teacher_tokens: int = field(default=32, metadata={"help": "max tokens of a teacher answer"})
    top_k: int = field(default=32, metadata={"help": "teacher log-probs kept per position"})
    teacher_batch: int = field(default=16, metadata={"help": "pairs per teacher batch"})
    teacher_cache: str | None = field(default=None, metadata={"help": "distillation cache folder (default OUT/teacher)"})
    forms: list[str] = field(default_factory=lambda: ["20:all", "20:prompt"], metadata={
        "help": "steering forms LAYERS:POSITIONS[:nFACTOR][:shift][:gate|:sgate][:lrRATE]: LAYERS one layer, a range "
                "A-B or A+B+… "
                "(a vector at each); positions 'all' (every token), 'prompt' (the base prompt's tokens only) or "
                "'answer' (the prompt's last token and the answer); nFACTOR trains each vector at a fixed length of "
                "FACTOR × "
                "the residual norm at the layer (direction only); gate adds a per-token gate λ(h)=ReLU(b+mean(w⊙ĥ)) "
                "per concept and layer (A-PSR's), sgate one per layer for every concept; again / onpolicy: a second "
                "round of as many steps from the same form's oracle (in the run), on the prompted answers again / on "
                "them plus the oracle's own answers scored by the teacher; diff: each concept's vectors read off the "
                "model (its mean prompted-minus-unprompted activation difference on its train answers, site by site), "
                "not trained; diffkl: trained from those; shift weights each answer "
                "token's KL by "
                "KL(teacher ‖ unsteered) there; lrRATE: this form's learning rate (default --bound-lr)"})
    apsr: list[str] = field(default_factory=list, metadata={
        "help": "also train A-PSR (hooksteer.psr: a gated rank-1 vector per layer, λ(h)=ReLU(w·h+b), the PSR that was "
                "level with prompt steering in benchmarks/psr_eval.py) per concept, LAYERS[:localN][:stepsN] (e.g. "
                "0-29, 10-29, 0-29:steps0 for the layer-by-layer fit to the activation differences without the "
                "distillation steps, 0-29:local0:steps0 for the closed-form fit alone; N overrides --apsr-local-steps "
                "/ --apsr-steps), on the same pairs as the oracles, named apsr-L<layers>[-localN][-stepsN]; scored at "
                "--apsr-factors × its trained α"})
    apsr_local_steps: int = field(default=30, metadata={"help": "A-PSR: Adam steps per layer on its local MSE (init)"})
    apsr_steps: int = field(default=8, metadata={"help": "A-PSR: end-to-end distillation steps after the init"})
    apsr_train_from: int | None = field(default=None, metadata={
        "help": "A-PSR: end-to-end training updates layers >= this (default 2/3 of the depth, as psr_eval.py)"})
    apsr_lr: float = field(default=0.02, metadata={"help": "A-PSR learning rate"})
    apsr_batch_size: int = field(default=4, metadata={"help": "A-PSR training batch size"})
    apsr_held_out_fraction: float = field(default=0.25, metadata={
        "help": "A-PSR: share of the train prompts held out for early stopping"})
    apsr_eval_every: int = field(default=4, metadata={"help": "A-PSR: held-out evaluation interval (steps)"})
    apsr_positions: str = field(default="response", metadata={
        "help": "A-PSR: where it steers (response: the assistant-turn template tokens and the answer)",
        "choices": ["response", "generated", "after_sink"]})
    apsr_position_variants: list[str] = field(default_factory=list, metadata={
        "help": "A-PSR: also score the same PSRs steering these positions instead (e.g. after_sink, the best A-PSR of "
                "psr_eval.py; generated+K: the answer's first K+1 tokens unsteered, then the PSR; generated+K:M: only the "
                "generated positions K+1 … M), named "
                "apsr-L<layers>@<positions>; with --apsr-bounds the floor too (<name>-floor@<positions>)"})
    apsr_bounds: bool = field(default=False, metadata={
        "help": "A-PSR: also score each --apsr entry's bounds as a HyperSteer (hooksteer.hypersteer.FitSteer): its "
                "floor (one PSR with the same settings fitted to every concept's pairs at once, steering every "
                "concept alike; <name>-floor) and its concept-specific part (each concept's directions minus the mean "
                "direction of the other concepts, gates kept; <name>-centred), with their eval KL and the "
                "between-concept cosine of the directions"})
    apsr_factors: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0],
                                      metadata={"help": "A-PSR: α swept (1 = as trained; psr_eval.py's grid)"})
    select_prompts: int = field(default=0, metadata={
        "help": "A-PSR: also choose each method's α per concept on this many train (probe) prompts, every one judged, "
                "instead of on the protocol's selection half of the eval prompts; reported on the same report half "
                "as '<name>@sel<N>' (0: not)"})
    select_methods: list[str] = field(default_factory=list, metadata={
        "help": "the A-PSR methods (as evaluated, e.g. apsr-L0-29-centred) --select-prompts applies to (default: "
                "every A-PSR method)"})
    batch_size: int = field(default=8, metadata={"help": "training batch size"})
    bound_lr: float = field(default=0.05, metadata={"help": "learning rate of the oracle vectors"})
    bound_epochs: float = field(default=12.0, metadata={"help": "oracle training epochs over its pairs"})
    trained_factors: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0],
                                         metadata={"help": "multiples of a vector's trained norm"})
    resid_forms: list[str] = field(default_factory=list, metadata={
        "help": "forms (among --forms) also scored at --factors × the residual norm at their layer, as "
                "'<name>@resid' (the distilled vectors' trained norms are small: 16-25 at a residual norm of "
                "about 243 at layer 20)"})
    diffmean_layers: list[int] = field(default_factory=list, metadata={
        "help": "layers at which DiffMean is scored as well (none: not scored)"})
    factors: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.45],
                                 metadata={"help": "factors of DiffMean and of --resid-forms (× mean residual norm "
                                                   "at the site)"})
    read_off_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0], metadata={
        "help": "eval KL of each diff form's vectors scaled by these, and of their concept-specific part (minus the "
                "mean over concepts) scaled alike (no generation: which length and which part fit the teacher)"})
    compare_to: list[str] = field(default_factory=list, metadata={
        "help": "evaluated methods (e.g. oracle-L20-all@resid) every oracle row is also compared with, paired over "
                "concepts, besides prompt and 0.9 × prompt steering"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens generated per evaluated answer"})
    eval_batch_size: int = field(default=32, metadata={"help": "generation batch"})
    samples: int = field(default=20, metadata={"help": "generations written to samples.md"})


TINY = {"train_concepts": 4, "held_out": 3, "held_in": 1, "train_prompts": 2, "eval_prompts": 2, "teacher_tokens": 6,
        "top_k": 8, "batch_size": 4, "bound_epochs": 2.0, "forms": ["2:all", "1:prompt"], "factors": [0.5],
        "trained_factors": [1.0, 2.0], "max_new_tokens": 4, "samples": 4, "apsr_local_steps": 2, "apsr_steps": 2,
        "apsr_eval_every": 1, "reference_chars": 40}


class Form(NamedTuple):
    """A steering form: the injection layer, where the vector is added, and how it is trained — at a fixed length
    of ``norm_factor`` × the residual norm at the layer (``None``: length learned), with ``token_weights``
    ``"uniform"`` or ``"teacher_shift"`` (:class:`~hooksteer.hypersteer.HyperSteerConfig`), at learning rate
    ``lr`` (``None``: ``--bound-lr``)."""

    layer: int
    positions: str
    norm_factor: float | None = None
    token_weights: str = "uniform"
    lr: float | None = None
    layers: tuple[int, ...] | None = None
    gate: str = "none"
    round2: str = "none"
    init: str = "zero"

    @property
    def first_round(self) -> Form:
        """The form whose trained oracle a second round starts from (itself when it has no second round)."""
        return self._replace(round2="none")

    @property
    def sites(self) -> list[int]:
        """Every layer that gets a vector (``[layer]`` unless the form names several)."""
        return list(self.layers) if self.layers else [self.layer]

    @property
    def name(self) -> str:
        name = f"oracle-L{common.layer_spec(self.sites)}-{self.positions}"
        if self.norm_factor is not None:
            name += f"-n{self.norm_factor:g}"
        if self.token_weights == "teacher_shift":
            name += "-shift"
        name += {"none": "", "concept": "-gate", "shared": "-sgate"}[self.gate]
        name += "" if self.lr is None else f"-lr{self.lr:g}"
        name += {"zero": "", "diff": "-diff", "diffkl": "-diffkl"}[self.init]
        return name + {"none": "", "again": "-again", "onpolicy": "-onpolicy"}[self.round2]


FORM_SYNTAX = "LAYERS:POSITIONS[:nFACTOR][:shift][:gate|:sgate][:lrRATE][:again|:onpolicy][:diff|:diffkl]"


def _positive(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def parse_form(spec: str) -> Form:
    """``"LAYER:POSITIONS[:nFACTOR][:shift][:lrRATE]"`` → :class:`Form`; a clear error for anything else.
    ``LAYERS`` ``10-29`` or ``0+10+20`` gives the oracle a vector at each of several layers (A-PSR's sites without
    its gates); ``nFACTOR`` trains every vector at FACTOR × the residual norm at the layer (direction only, single
    layer); ``gate`` adds A-PSR's per-token gate to every vector, one per concept (``sgate``: one per site shared by
    every concept; :mod:`hooksteer.hypersteer.gating`); ``again`` / ``onpolicy`` train a second round, as many
    steps again, starting from the same form's trained oracle (which must be in the run), on the prompted answers
    again / on them plus the oracle's *own* answers scored by the prompted teacher (one round of on-policy
    distillation, :mod:`hooksteer.hypersteer.on_policy`); ``diff`` reads each concept's vectors off the model
    instead of training them — the steering prompt's mean activation difference on its train answers, site by site
    (:func:`hooksteer.hypersteer.prompt_difference_vectors`; positions ``all`` or ``answer``, no gate, no fixed
    length) — and
    ``diffkl`` starts the usual training from them; ``shift`` weights
    each answer token by how far the steering prompt moved the prediction there; ``lrRATE`` sets this form's
    learning rate.

    Example:
        >>> parse_form("10:all")
        Form(layer=10, positions='all', norm_factor=None, token_weights='uniform', lr=None, layers=None, gate='none', round2='none', init='zero')
        >>> parse_form("10-29:all:gate").name, parse_form("10-29:all:sgate").gate
        ('oracle-L10-29-all-gate', 'shared')
        >>> parse_form("10-29:all:onpolicy").name, parse_form("10-29:all:onpolicy").first_round.name
        ('oracle-L10-29-all-onpolicy', 'oracle-L10-29-all')
        >>> parse_form("10-29:all:diff").name, parse_form("10-29:all:diffkl").init
        ('oracle-L10-29-all-diff', 'diffkl')
        >>> parse_form("10-29:all:shift").name
        'oracle-L10-29-all-shift'
        >>> parse_form("0+20:prompt").sites
        [0, 20]
        >>> parse_form("20:all:n0.3:shift").name
        'oracle-L20-all-n0.3-shift'
        >>> parse_form("20:all:lr0.5").lr
        0.5
    """
    parts = spec.split(":")
    problem = (f"form {spec!r} is not {FORM_SYNTAX} with LAYERS one layer, a range A-B or A+B+…, and POSITIONS one "
               f"of {POSITION_CHOICES} (e.g. 20:prompt, 10-29:all, 20:all:n0.3, 20:all:shift, 20:all:lr0.5)")
    layers = common.parse_layers(parts[0]) if parts else None
    if len(parts) < 2 or layers is None or parts[1] not in POSITION_CHOICES:
        raise ValueError(problem)
    options: dict[str, Any] = {}
    for option in parts[2:]:
        if option == "shift":
            key, value = "token_weights", "teacher_shift"
        elif option in ("gate", "sgate"):
            key, value = "gate", "concept" if option == "gate" else "shared"
        elif option in ("again", "onpolicy"):
            key, value = "round2", option
        elif option in ("diff", "diffkl"):
            key, value = "init", option
        elif option.startswith("lr"):
            key, value = "lr", _positive(option[2:])
        elif option.startswith("n"):
            key, value = "norm_factor", _positive(option[1:])
        else:
            raise ValueError(problem)
        if value is None or key in options:
            raise ValueError(problem)
        options[key] = value
    if len(layers) > 1 and "norm_factor" in options:
        raise ValueError(f"form {spec!r}: nFACTOR (a fixed length from one layer's residual norm) needs a single layer")
    init = options.get("init", "zero")
    if init != "zero":
        clash = [key for key in ("norm_factor", "gate", "round2") if key in options]
        clash += [f"positions {parts[1]}"] if parts[1] == "prompt" else []
        clash += [key for key in ("token_weights", "lr") if key in options and init == "diff"]
        if clash:
            raise ValueError(f"form {spec!r}: {init} (vectors read off the answers, at every token or the answer) "
                             f"cannot be combined with {', '.join(clash)}")
    return Form(layers[0], parts[1], **options, layers=tuple(layers) if len(layers) > 1 else None)


def parse_settings(argv: Sequence[str] | None = None) -> tuple[OracleFormsSettings, argparse.Namespace]:
    """Settings from the command line (``--tiny`` shrinks every setting left at its default)."""
    from hooksteer.settings import add_arguments, from_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random model + keyword judge (< 1 minute)")
    parser.add_argument("--estimate-only", action="store_true", help="print the time estimate and stop")
    add_arguments(parser, OracleFormsSettings)
    args = parser.parse_args(argv)
    settings = common.finish_settings(from_arguments(OracleFormsSettings, args), parser, tiny=args.tiny,
                                      tiny_values=TINY, validate=validate, default_out=DEFAULT_OUT)
    return settings, args


def prompt_style_names(s: OracleFormsSettings) -> list[str]:
    """The evaluated prompt-steering placements' names (``prompt-prefix``, …)."""
    return [f"prompt-{style}" for style in s.prompt_styles]


def prefix_names(s: OracleFormsSettings) -> list[str]:
    """The evaluated prefix-steering methods' names (``prefix-response``, ``prefix-after-start``, …)."""
    return [f"prefix-{positions.replace('_', '-')}{suffix}" for suffix in ("", *(["-pooled"] if s.prefix_pooled else []))
            for positions in s.prefix_positions]


def combined_names(s: OracleFormsSettings) -> list[str]:
    """The evaluated A-PSR + prefix methods' names (``<method>+prefix-<positions>``)."""
    return [f"{name}+prefix-{positions.replace('_', '-')}" for name in s.prefix_combine for positions in s.prefix_positions]


def validate(s: OracleFormsSettings) -> list[str]:
    """Every problem with the settings (empty when they are fine), checked before anything runs (layers are
    checked against the model once it is loaded)."""
    apsr = [parse_apsr(spec) for spec in s.apsr if _parses(spec)]  # the entries that parse (the rest: a problem)
    variants = [f"@{p}" for p in s.apsr_position_variants]
    apsr_evaluated = {a.name + suffix for a in apsr for suffix in ("", *variants, *(
        ("-floor", "-centred", *(f"-floor{v}" for v in variants)) if s.apsr_bounds else ()))}
    problems = common.counts_below_one(s, ("train_concepts", "train_prompts", "teacher_tokens", "top_k",
                                           "teacher_batch", "batch_size", "max_new_tokens", "eval_batch_size",
                                           "threads", "reference_chars"))
    if s.held_out < 2:
        problems.append("--held-out must be >= 2 (between-concept cosines and intervals)")
    if s.held_in < 0 or s.held_in > s.train_concepts:
        problems.append("--held-in must be between 0 and --train-concepts")
    if s.eval_prompts < 2:
        problems.append("--eval-prompts must be >= 2 (selection and report halves)")
    if s.oracle_prompts is not None and s.oracle_prompts < s.train_prompts:
        problems.append("--oracle-prompts must be >= --train-prompts (it adds prompts to the split's)")
    try:
        forms = [parse_form(f) for f in s.forms]
    except ValueError as error:
        problems.append(str(error))
    else:
        if (not forms and not s.apsr) or len(set(forms)) != len(forms):
            problems.append(f"--forms must name each form once (none only with --apsr), got {s.forms}")
        missing = sorted({f.first_round.name for f in forms if f.round2 != "none"} - {f.name for f in forms})
        if missing:
            problems.append(f"a second round (:again, :onpolicy) starts from its first-round form; add it to --forms: "
                            f"{', '.join(missing)}")
        try:
            resid = {parse_form(f) for f in s.resid_forms}
            if not resid <= set(forms):
                problems.append(f"--resid-forms must be among --forms, got {s.resid_forms}")
            several = sorted(f.name for f in resid if f.layers or f.gate != "none")
            if several:
                problems.append(f"--resid-forms must be single-layer ungated forms (a fraction of one layer's residual "
                                f"norm), got {', '.join(several)}")
        except ValueError as error:
            problems.append(str(error))
        else:
            evaluated = {"prompt", "none", *(["prompt-background"] if s.prompt_background else []),
                         *prefix_names(s), *prompt_style_names(s), *combined_names(s),
                         *(f"diffmean-L{layer}" for layer in s.diffmean_layers), *apsr_evaluated,
                         *(f.name for f in forms), *(f"{parse_form(f).name}@resid" for f in s.resid_forms)}
            unknown = sorted(set(s.compare_to) - evaluated)
            if unknown:
                problems.append(f"--compare-to names methods this run does not evaluate: {', '.join(unknown)} "
                                f"(evaluated: {', '.join(sorted(evaluated))})")
    if len(apsr) != len(s.apsr) or len({a.name for a in apsr}) != len(apsr):
        problems.append(f"--apsr must be {APSR_SYNTAX} (LAYERS 20, 10-29 or 0+10+20; N >= 0; TEACHER "
                        f"{' or '.join(APSR_TEACHERS)}), each once, got {s.apsr}")
    elif any(a.teacher == s.teacher_context for a in apsr):
        problems.append(f"an --apsr entry names the run's own --teacher-context ({s.teacher_context}): leave it off "
                        "(an entry's teacher is for another context)")
    elif s.apsr_train_from is not None and any(s.apsr_train_from > max(a.layers) for a in apsr):
        problems.append("--apsr-train-from must be <= the top layer of every --apsr layer set")
    problems += common.counts_below_one(s, ("apsr_batch_size", "apsr_eval_every"))
    if s.apsr_position_variants and not s.apsr:
        problems.append("--apsr-position-variants needs --apsr (the PSRs it steers with)")
    from hooksteer.psr.hooks import generated_delay

    bad_modes = [m for m in s.apsr_position_variants if m not in APSR_POSITION_VARIANTS and generated_delay(m) is None]
    if bad_modes or len(set(s.apsr_position_variants)) != len(s.apsr_position_variants):
        problems.append(f"--apsr-position-variants must name each of {', '.join(APSR_POSITION_VARIANTS)} or "
                        f"generated+K or generated+K:M (0 <= K < M) at most once, got {s.apsr_position_variants}")
    if s.apsr_bounds and not s.apsr:
        problems.append("--apsr-bounds needs --apsr (the PSRs whose floor and centred form it scores)")
    n_probe = max(s.train_prompts, s.oracle_prompts or 0)
    if s.select_prompts and (not s.apsr or not 2 <= s.select_prompts <= n_probe):
        problems.append(f"--select-prompts needs --apsr and must be 0 or between 2 and the {n_probe} train prompts")
    if s.select_methods and (not s.select_prompts or set(s.select_methods) - apsr_evaluated):
        problems.append(f"--select-methods needs --select-prompts and must name evaluated A-PSR methods "
                        f"({', '.join(sorted(apsr_evaluated)) or 'none'}), got {s.select_methods}")
    if s.apsr_steps < 0 or s.apsr_local_steps < 0 or not (0 <= s.apsr_held_out_fraction < 1) or s.apsr_lr <= 0:
        problems.append("--apsr-steps / --apsr-local-steps must be >= 0, --apsr-lr > 0, --apsr-held-out-fraction in "
                        "[0, 1)")
    if any(layer < 0 for layer in s.diffmean_layers):
        problems.append("--diffmean-layers must be >= 0")
    unknown_modes = sorted(set(s.prefix_positions) - set(PREFIX_POSITIONS))
    if unknown_modes:
        problems.append(f"--prefix-positions: unknown mode(s) {unknown_modes}; choose from {list(PREFIX_POSITIONS)}")
    if len(set(s.prefix_positions)) != len(s.prefix_positions):
        problems.append(f"--prefix-positions must name each mode once, got {s.prefix_positions}")
    if s.prefix_pooled and not s.prefix_positions:
        problems.append("--prefix-pooled needs --prefix-positions (the modes it scores pooled)")
    if s.prefix_combine and (not s.prefix_positions or set(s.prefix_combine) - apsr_evaluated
                             or len(set(s.prefix_combine)) != len(s.prefix_combine)):
        problems.append(f"--prefix-combine needs --prefix-positions and must name evaluated A-PSR methods once "
                        f"({', '.join(sorted(apsr_evaluated)) or 'none'}), got {s.prefix_combine}")
    if not (math.isfinite(s.prefix_combine_factor) and s.prefix_combine_factor > 0):
        problems.append("--prefix-combine-factor must be a positive number")
    if len(set(s.prompt_styles)) != len(s.prompt_styles):
        problems.append(f"--prompt-styles must name each placement once, got {s.prompt_styles}")
    if len(set(s.prefix_factors)) != len(s.prefix_factors):
        problems.append(f"--prefix-factors must not repeat a factor, got {s.prefix_factors}")
    for name in ("factors", "trained_factors", "apsr_factors", "prefix_factors"):
        values = getattr(s, name)
        if not values or any(not (math.isfinite(v) and v > 0) for v in values):
            problems.append(f"--{name.replace('_', '-')} must be positive numbers")
    if any(not (math.isfinite(v) and v >= 0) for v in s.read_off_scales):
        problems.append("--read-off-scales must be numbers >= 0")
    if s.bound_epochs <= 0 or s.bound_lr <= 0:
        problems.append("--bound-epochs and --bound-lr must be > 0")
    return problems


def estimate_seconds(s: OracleFormsSettings, device: str, n_layers: int = 30) -> dict[str, float]:
    """Rough seconds per stage from the sizes and ``hypersteer_eval.RATES`` (printed before the run starts); a
    form's training cost grows with the number of blocks above its layer."""
    rate = hypersteer_eval.RATES["cuda" if device.startswith("cuda") else "cpu"]
    n_train = max(s.train_prompts, s.oracle_prompts or 0)
    pairs = s.held_out * (n_train + s.eval_prompts)
    steps = hypersteer_eval.steps_for(s.held_out * n_train, s.bound_epochs, s.batch_size)
    step_seconds = rate["train_token"] * s.batch_size * (45 + s.teacher_tokens) * 3
    train = sum(steps * step_seconds * (n_layers - 1 - f.layer) / (n_layers / 3) for f in map(parse_form, s.forms)
                if f.init != "diff")
    read_off = {tuple(f.sites) for f in map(parse_form, s.forms) if f.init != "zero"}  # 3 passes over the pairs
    train += len(read_off) * s.held_out * n_train * (45 + s.teacher_tokens) * 3 * rate["train_token"] / 3
    per_method = s.held_out * s.eval_prompts * rate["generation"]
    generations = per_method * (len(s.forms) * len(s.trained_factors) + len(s.diffmean_layers) * len(s.factors)
                                + len(s.resid_forms) * len(s.factors) + 2)
    pairs += sum(f.round2 == "onpolicy" for f in map(parse_form, s.forms)) * s.held_out * n_train  # own answers
    other_teachers = {a.teacher for a in map(parse_apsr, s.apsr)} - {None, s.teacher_context}
    pairs += len(other_teachers) * s.held_out * (n_train + s.eval_prompts)  # an --apsr entry's own teacher
    generations += per_method * (s.prompt_background + len(s.prompt_styles)
                                 + len(prefix_names(s)) * len(s.prefix_factors)
                                 + len(combined_names(s)) * len(s.apsr_factors))
    for a in (parse_apsr(spec) for spec in s.apsr):  # teacher activations (2 passes), local init, end-to-end steps
        tokens = (45 + s.teacher_tokens) * rate["train_token"] / 3
        local, steps = a.settings(s)
        train += s.held_out * (2 * (n_train + s.eval_prompts) * tokens + steps * 3 * s.apsr_batch_size * tokens
                               + local * len(a.layers) * 0.01)
        generations += per_method * len(s.apsr_factors)
        generations += (s.held_out * s.select_prompts * rate["generation"] * len(s.apsr_factors)
                        * (1 if s.select_methods else 1 + 2 * s.apsr_bounds + len(s.apsr_position_variants)))
    return {"setup": rate["setup"], "teacher": pairs * rate["teacher_pair"], "train": train,
            "evaluate": generations * 2.5}  # judge and fluency scoring about 1.5× the generation time


APSR_SYNTAX = "LAYERS[:localN][:stepsN][:TEACHER]"
APSR_TEACHERS = ("steering_prompt", "reference_text")
APSR_POSITION_VARIANTS = ("response", "generated", "after_sink")  # and generated+K  # hooksteer.distill.TEACHER_CONTEXTS


class ApsrSpec(NamedTuple):
    """An ``--apsr`` entry: the A-PSR's layers and, when given, its own local / end-to-end step counts and its own
    teacher context (``steering_prompt`` or ``reference_text``; default the run's ``--teacher-context``)."""

    layers: tuple[int, ...]
    local_steps: int | None = None
    steps: int | None = None
    teacher: str | None = None

    @property
    def name(self) -> str:
        name = f"apsr-L{common.layer_spec(self.layers)}"
        name += "" if self.local_steps is None else f"-local{self.local_steps}"
        name += "" if self.steps is None else f"-steps{self.steps}"
        return name + ("" if self.teacher is None else f"-{self.teacher}")

    def settings(self, s: OracleFormsSettings) -> tuple[int, int]:
        """(local steps, end-to-end steps): this entry's, else ``--apsr-local-steps`` / ``--apsr-steps``."""
        return (s.apsr_local_steps if self.local_steps is None else self.local_steps,
                s.apsr_steps if self.steps is None else self.steps)


def parse_apsr(spec: str) -> ApsrSpec:
    """``"LAYERS[:localN][:stepsN][:TEACHER]"`` → :class:`ApsrSpec`; ``ValueError`` for anything else.

    Example:
        >>> parse_apsr("0-29").name, parse_apsr("0+10").name, parse_apsr("0-29:local0:steps0").name
        ('apsr-L0-29', 'apsr-L0+10', 'apsr-L0-29-local0-steps0')
        >>> parse_apsr("0-2:steps0")
        ApsrSpec(layers=(0, 1, 2), local_steps=None, steps=0, teacher=None)
        >>> parse_apsr("0-29:local0:steps0:reference_text").name
        'apsr-L0-29-local0-steps0-reference_text'
    """
    parts = spec.split(":")
    layers = common.parse_layers(parts[0])
    options: dict[str, Any] = {}
    for part in parts[1:]:
        if part in APSR_TEACHERS and "teacher" not in options:
            options["teacher"] = part
            continue
        for key, prefix in (("local_steps", "local"), ("steps", "steps")):
            if part.startswith(prefix) and part[len(prefix):].isdigit() and key not in options:
                options[key] = int(part[len(prefix):])
                break
        else:
            layers = None
    if layers is None:
        raise ValueError(f"--apsr entry {spec!r} is not {APSR_SYNTAX}")
    return ApsrSpec(tuple(layers), **options)


def _parses(spec: str) -> bool:
    try:
        parse_apsr(spec)
    except ValueError:
        return False
    return True


def train_apsrs(s: OracleFormsSettings, model: Any, concepts: Sequence[Any], oracle_data: Any, eval_data: Any,
                out: Path, tiny: bool, *, unsteered_kl: bool = False,
                other_teachers: Mapping[str, tuple[Any, Any]] | None = None
                ) -> tuple[list[Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One A-PSR per concept and ``--apsr`` layer set, distilled on the oracles' pairs (saved under
    ``out/apsr-L<layers>/<concept>`` and reloaded by a rerun), and its eval KL on the never-trained eval pairs; each
    ``--apsr-position-variants`` entry adds the same PSRs steering other positions, ``--apsr-bounds`` their floor and
    centred form (:func:`apsr_bounds`). An entry with its own teacher context trains on, and is measured against,
    ``other_teachers[context]`` (its train and eval data) instead. Returns the evaluated methods, their training
    records, eval KLs (with ``unsteered_kl`` also ``"none"``, the same KL unsteered, against the run's teacher) and
    the between-concept separation of their directions."""
    from tqdm.auto import tqdm

    from hooksteer.hypersteer.config import default_layer
    from hooksteer.hypersteer.fit_steer import direction_separation
    from hooksteer.psr import PSRConfig, distill_kl
    from hooksteer.psr.evaluation import PSRMethod, PSRTeacherData

    n_layers, by_id = int(model.cfg.n_layers), {c.id: c for c in concepts}
    specs = [parse_apsr(spec) for spec in s.apsr]
    if not specs:
        return [], {}, {}, {}
    # one teacher pass per concept serves every layer set (records hold each layer any of them steers), as psr_eval.py
    every_layer = sorted({layer for spec in specs for layer in spec.layers})
    sources = {s.teacher_context: (oracle_data, eval_data), **(other_teachers or {})}
    missing = sorted({spec.teacher for spec in specs if spec.teacher is not None} - set(sources))
    if missing:
        raise ValueError(f"no teacher data for the --apsr teacher context(s) {missing}")
    data = {context: tuple(PSRTeacherData.from_distill(model, part, every_layer, concepts=by_id, prefix_tokens="auto")
                           for part in parts) for context, parts in sources.items()
            if any((spec.teacher or s.teacher_context) == context for spec in specs)}
    train_from = s.apsr_train_from if s.apsr_train_from is not None else default_layer(n_layers)
    trained, data_of = [], {}
    for spec in specs:
        train, evals = data_of[spec.name] = data[spec.teacher or s.teacher_context]
        local_steps, steps = spec.settings(s)
        config = PSRConfig(layers=list(spec.layers), d_model=int(model.cfg.d_model), variant="adaptive",
                           loss="distill", steps=steps, lr=s.apsr_lr, batch_size=s.apsr_batch_size, seed=s.seed,
                           positions=s.apsr_positions, local_steps=local_steps,
                           train_from_layer=max(min(train_from, spec.layers[-1]), spec.layers[0]),
                           held_out_fraction=s.apsr_held_out_fraction, eval_every=s.apsr_eval_every, patience=2)
        trained.append(PSRMethod(train, config, save_dir=out / spec.name, name=spec.name, factors=s.apsr_factors,
                                 diagnose=False))
    log(f"training {', '.join(m.name for m in trained)} ({len(concepts)} concepts × "
        f"{len(oracle_data) // max(len(concepts), 1)} pairs) ...")
    per_concept: dict[str, dict[str, float]] = {m.name: {} for m in trained}
    unsteered: dict[str, float] = {}  # the same KL at α = 0: no steering, the reference of every eval KL
    floors_to_fit = s.apsr_bounds and any(not saved_floor(out, m.name) for m in trained)
    run_evals = data[s.teacher_context][1] if unsteered_kl and s.teacher_context in data else None
    for concept in tqdm(concepts, desc="A-PSR", disable=tiny):
        for method in trained:
            evals = data_of[method.name][1]
            per_concept[method.name][concept.id] = distill_kl(model, method.train(concept), evals.records(concept.id))
        if run_evals is not None:
            unsteered[concept.id] = distill_kl(model, trained[0].psrs[concept.id], run_evals.records(concept.id),
                                               alpha=0.0)
        for train, evals in data.values():
            if not floors_to_fit:  # a floor is fitted to every concept's records at once
                train.release(concept.id)
            if not s.apsr_bounds:  # the bounds' eval KL reads them again
                evals.release(concept.id)
    methods, training = [], {}
    kl = {"none": {"held_out": sum(unsteered.values()) / len(unsteered), "per_concept": unsteered}} if unsteered else {}
    separation = {m.name: direction_separation(m.psrs) for m in trained}
    for spec, method in zip(specs, trained, strict=True):
        train, evals = data_of[method.name]
        info = [method.training[c.id] for c in concepts]
        local_steps, steps = spec.settings(s)
        training[method.name] = {"steps": steps, "local_steps": local_steps,
                                 "teacher_context": spec.teacher or s.teacher_context,
                                 "seconds": sum(float(i.get("train_seconds") or 0.0) for i in info),
                                 "reused": all("loaded_from" in i for i in info),
                                 "best_step": [i.get("best_step") for i in info],
                                 "final_loss": [i.get("final_loss") for i in info]}
        values = per_concept[method.name]
        kl[method.name] = {"held_out": sum(values.values()) / len(values), "per_concept": values}
        methods.append(method)
        methods += position_variants(s, method, training)
        if s.apsr_bounds:
            for bound in apsr_bounds(s, method, concepts, train, out):
                values = {c.id: distill_kl(model, bound.psrs[c.id], evals.records(c.id)) for c in concepts}
                kl[bound.name] = {"held_out": sum(values.values()) / len(values), "per_concept": values}
                training[bound.name] = {**training[method.name], **bound.training[concepts[0].id]["bound"]}
                separation[bound.name] = direction_separation(bound.psrs)
                methods.append(bound)
                if bound.name.endswith("-floor"):  # the floor at the variant's positions: its bound there
                    methods += position_variants(s, bound, training)
    for concept in concepts:
        for train, evals in data.values():
            train.release(concept.id)
            evals.release(concept.id)
    return methods, training, kl, separation


def position_variants(s: OracleFormsSettings, method: Any, training: dict[str, Any]) -> list[Any]:
    """``method``'s PSRs steering each ``--apsr-position-variants`` entry's positions instead (named
    ``<name>@<positions>``; nothing new is fitted), their training records pointing at ``method``'s."""
    from hooksteer.psr.evaluation import PSRMethod

    variants = []
    for positions in s.apsr_position_variants:
        if positions == s.apsr_positions:
            continue
        variant = PSRMethod(method.data, method.psr_config, name=f"{method.name}@{positions}", factors=s.apsr_factors,
                            positions=positions, diagnose=False)
        variant.psrs, variant.training = method.psrs, method.training
        training[variant.name] = {**training[method.name], "same_psrs_as": method.name}
        variants.append(variant)
    return variants


def saved_floor(out: Path, name: str) -> bool:
    """Whether the floor of A-PSR ``name`` is saved under ``out/<name>-floor`` (a rerun reloads it)."""
    from hooksteer.psr.evaluation import has_saved_psr

    return has_saved_psr(out / f"{name}-floor")


def apsr_bounds(s: OracleFormsSettings, method: Any, concepts: Sequence[Any], train: Any, out: Path) -> list[Any]:
    """The floor and the centred form of one A-PSR method, as methods steering each concept with a PSR of its own:
    ``<name>-floor`` — one PSR with the method's settings fitted (and trained) on every concept's pairs at once, the
    same for every concept (saved under ``out/<name>-floor`` and reloaded); ``<name>-centred`` — each concept's PSR
    with its directions minus the mean direction of the other concepts' PSRs (gates kept; nothing trained)."""
    from hooksteer.hypersteer.fit_steer import FitSteer, leave_one_out_centred
    from hooksteer.psr.evaluation import PSRMethod, load_saved_psr, save_psr_with_info

    folder = out / f"{method.name}-floor"
    saved = load_saved_psr(folder, train.model, method.psr_config)
    if saved is not None:
        floor, info = saved[0], {**saved[1], "reused": True}
    else:
        started = time.perf_counter()
        floor = FitSteer(train.model, config=method.psr_config).floor({c.id: train.records(c.id) for c in concepts})
        info = {"method": "psr-floor", "shared_by": [c.id for c in concepts], "seconds": time.perf_counter() - started,
                "n_teacher_examples": sum(len(train.records(c.id)) for c in concepts)}
        save_psr_with_info(floor, folder, info)
        info["reused"] = False
    reused = info["reused"] and all("loaded_from" in method.training[c.id] for c in concepts)
    bounds = []
    for suffix, psrs, bound in (
            ("-floor", {c.id: floor for c in concepts},
             {"bound": "floor", "seconds": info["seconds"], "shared_by": len(concepts), "reused": info["reused"]}),
            ("-centred", leave_one_out_centred(method.psrs),
             {"bound": "centred (minus the other concepts' mean direction)", "reused": reused})):
        made = PSRMethod(train, method.psr_config, name=method.name + suffix, factors=s.apsr_factors, diagnose=False)
        made.psrs = psrs
        made.training = {c.id: {**method.training[c.id], "bound": bound} for c in concepts}
        bounds.append(made)
    return bounds


def factors_chosen_elsewhere(result: Any, selection: Any, suffix: str, roles: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per-concept rows (as :func:`common.per_concept_rows`) of the methods of ``selection``, named
    ``<method><suffix>``: each concept's factor is the one with the best mean score over *all* of ``selection``'s
    prompts for it (ties: the smaller factor), and its ratings are ``result``'s report half at that factor — the
    protocol with the factor chosen on other (more) prompts than its own selection half."""
    saved = {(c.method, c.concept_id): c for c in result.concepts}
    rows = []
    for picked in selection.concepts:
        n_sel, n_rep = len(picked.selection_prompt_ids), len(picked.report_prompt_ids)

        def mean_score(cell: Any, n_sel: int = n_sel, n_rep: int = n_rep) -> float:
            return (n_sel * cell.selection["score"] + n_rep * cell.report["score"]) / (n_sel + n_rep)

        best = max(sorted(picked.cells, key=lambda c: c.factor), key=mean_score)
        scored = saved[picked.method, picked.concept_id]
        cell = next((c for c in scored.cells if c.factor == best.factor), None)
        if cell is None:
            raise ValueError(f"{picked.method}: factor {best.factor} was chosen but not evaluated on the report half")
        rows.append({"method": picked.method + suffix, "concept_id": picked.concept_id,
                     "role": roles.get(picked.concept_id), "chosen_factor": best.factor, **cell.report})
    return rows


def oracle_config(s: OracleFormsSettings, form: Form, n_examples: int, resid_norm: float | None = None) -> Any:
    """The oracle's settings for ``form``; ``resid_norm`` (the residual norm at the form's layer) sets the fixed
    length of a ``norm_factor`` form."""
    from hooksteer.hypersteer import HyperSteerConfig

    if form.norm_factor is not None and resid_norm is None:
        raise ValueError(f"{form.name} trains at a fixed length: pass the residual norm at layer {form.layer}")
    steps = hypersteer_eval.steps_for(n_examples, s.bound_epochs, s.batch_size)
    delta_norm = None if form.norm_factor is None else form.norm_factor * float(resid_norm)  # type: ignore[arg-type]
    return HyperSteerConfig(variant="no_context", n_blocks=0, layer=form.layer,
                            layers=list(form.layers) if form.layers else None, positions=form.positions,
                            delta_norm=delta_norm, token_weights=form.token_weights, gate=form.gate,
                            lr=form.lr or s.bound_lr, loss="distill", batch_size=s.batch_size, max_steps=steps, warmup_steps=0,
                            seed=s.seed, eval_every=0, log_every=max(1, min(10, steps)), save_every=0,
                            extra={"trained_steps": 0 if form.init == "diff" else steps,
                                   **({} if form.init == "zero" else {"init": form.init}),
                                   **({} if delta_norm is None else {
                                "norm_factor": form.norm_factor, "resid_norm": resid_norm})})


def read_off_kl(vectors: Any, records: Sequence[Any], scales: Sequence[float]) -> dict[str, Any]:
    """Eval KL of a read-off table scaled by each of ``scales``, and of its concept-specific part (each row minus the
    mean row) scaled alike; ``shared_share``: the mean row's norm over a row's mean norm. The table is restored."""
    import torch

    from hooksteer.hypersteer.trainer import mean_loss

    base = vectors.table.detach().clone()
    shared = base.mean(dim=0, keepdim=True)
    out: dict[str, Any] = {"shared_share": float(shared.flatten().norm() / base.flatten(1).norm(dim=1).mean()),
                           "scaled": {}, "centred": {}}
    try:
        for scale in scales:
            for part, table in (("scaled", base), ("centred", base - shared)):
                with torch.no_grad():
                    vectors.table.copy_(table * scale)
                out[part][f"{scale:g}"] = mean_loss(vectors, records)
    finally:
        with torch.no_grad():
            vectors.table.copy_(base)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    settings, args = parse_settings(argv)
    s, tiny = settings, args.tiny
    if s.prefix_positions and (tiny or s.model is not None):
        raise SystemExit("oracle_forms: error: --prefix-positions needs the embedded model's TransformerBridge (not "
                         "--tiny or --model): prefix steering runs on its Hugging Face twin")
    device = s.device or ("cuda" if torch.cuda.is_available() else "cpu")
    forms = [parse_form(f) for f in s.forms]
    estimate = estimate_seconds(s, device)
    common.log_estimate(estimate, device)
    if args.estimate_only:
        return {"estimate_seconds": estimate}
    out = Path(s.out)  # type: ignore[arg-type]

    log("loading model and data ...")
    model = common.load_model(tiny, s.seed, s.model, s.device)
    n_layers = int(model.cfg.n_layers)
    bad = [x for f in forms for x in f.sites if x >= n_layers] + [x for x in s.diffmean_layers if x >= n_layers]
    bad += [x for spec in s.apsr for x in parse_apsr(spec).layers if x >= n_layers]
    if bad:
        raise SystemExit(f"oracle_forms: error: layer {bad[0]} is outside the model's {n_layers} layers (0..{n_layers - 1})")
    run = argparse.Namespace(threads=s.threads, out=out)
    began = common.start_run(run)
    from hooksteer.settings import save_settings

    save_settings(settings, out / "settings.json")
    from hooksteer.evaluate.methods import (
        DiffMeanMethod,
        NoSteering,
        PrefixSteering,
        PromptSteering,
        WithPrefix,
        pool_texts_for,
    )
    from hooksteer.evaluate.protocol import evaluate
    from hooksteer.hypersteer.bounds import ConceptVectors
    from hooksteer.hypersteer.contrast import prompt_difference_vectors
    from hooksteer.hypersteer.diagnostics import vector_separation
    from hooksteer.hypersteer.evaluation import HyperSteerMethod

    generator = common.load_bridge(tiny, s.seed, s.device) if s.model is None and not tiny else model
    concepts, prompts, split = common.load_split(s, tiny, out, "oracle_forms")
    held_out = split.select(concepts, split.held_out_concepts)
    train_prompts = split.select(prompts, split.train_prompts)
    eval_prompts = split.select(prompts, split.eval_prompts)
    if s.oracle_prompts is not None and s.oracle_prompts > len(train_prompts):
        train_prompts += common.unused_prompts(s, tiny, prompts, s.oracle_prompts - len(train_prompts), "oracle_forms")
    judge = common.make_judge(tiny, model)

    cache = Path(s.teacher_cache) if s.teacher_cache else out / "teacher"
    log(f"teacher: {len(held_out)} held-out concepts × ({len(train_prompts)} train + {len(eval_prompts)} eval) "
        "prompts ...")
    started = time.perf_counter()
    oracle_data = hypersteer_eval.teacher_data(s, model, generator, held_out, train_prompts, cache, tiny)
    eval_data = hypersteer_eval.teacher_data(s, model, generator, held_out, eval_prompts, cache, tiny)
    other_teachers = {}  # --apsr entries with a teacher context of their own (same cache: its key holds the context)
    for context in sorted({a.teacher for a in map(parse_apsr, s.apsr)} - {None}):
        log(f"teacher ({context}, for the --apsr entries that name it) ...")
        other = replace(s, teacher_context=context)
        other_teachers[context] = tuple(hypersteer_eval.teacher_data(other, model, generator, held_out, part, cache,
                                                                     tiny) for part in (train_prompts, eval_prompts))
    teacher_seconds = time.perf_counter() - started
    keys = [r.steering_prompt for r in oracle_data.records]

    texts_for = pool_texts_for(list(concepts))
    fixed = [f.layer for f in forms if f.norm_factor is not None]
    resid_norms = common.layer_resid_norms(model, fixed, held_out, texts_for) if fixed else {}
    if resid_norms:
        log("residual norms for fixed-length forms: " + ", ".join(f"L{k} {v:.1f}" for k, v in resid_norms.items()))
    oracles: dict[str, Any] = {}
    training: dict[str, Any] = {}
    read_off_cache: dict[tuple[tuple[int, ...], str], tuple[dict[str, Any], float]] = {}

    def read_off_vectors(sites: Sequence[int], positions: str) -> tuple[dict[str, Any], float]:
        """Each concept's activation differences at ``sites`` on its train pairs (computed once per set of sites and
        positions)."""
        key = (tuple(sites), positions)
        if key not in read_off_cache:
            log(f"reading the activation differences at layers {common.layer_spec(list(sites))} ({positions}) off the "
                "model ...")
            started = time.perf_counter()
            vectors = prompt_difference_vectors(model, oracle_data, sites, concepts={c.id: c for c in held_out},
                                                batch_size=s.batch_size, positions=positions, progress=not tiny)
            read_off_cache[key] = vectors, time.perf_counter() - started
        return read_off_cache[key]

    for form in sorted(forms, key=lambda f: f.round2 != "none"):  # first rounds before the second rounds
        torch.manual_seed(s.seed)
        config = oracle_config(s, form, len(oracle_data), resid_norms.get(form.layer))
        oracle = ConceptVectors.oracle(model, keys, config)
        records, extra = list(oracle_data.records), {}
        if form.init != "zero" and hypersteer_eval.saved_training(oracle, out / form.name) is None:
            vectors, seconds = read_off_vectors(form.sites, form.positions)
            oracle.set_vectors(vectors)
            extra = {"read_off_seconds": seconds, "read_off_seconds_per_concept": seconds / len(set(keys))}
        if form.init == "diff":  # read off, not trained
            training[form.name] = hypersteer_eval.reloaded_or_made(
                oracle, out / form.name, lambda extra=extra: {"steps": 0, "seconds": extra["read_off_seconds"],
                                                              "n_train_examples": len(oracle_data), **extra})
            oracles[form.name] = oracle
            continue
        if form.round2 != "none":
            first = oracles[form.first_round.name]
            oracle.load_state_dict(first.state_dict())
            if form.round2 == "onpolicy":
                log(f"{form.name}: answers of {form.first_round.name} on its {len(oracle_data)} training pairs ...")
                own = hypersteer_eval.on_policy_data(s, model, generator, held_out, train_prompts, first, tiny)
                records += own.records
                extra = {"on_policy": own.stats}
        log(f"training {form.name} ({len(records)} pairs) ...")
        training[form.name] = hypersteer_eval.train(oracle, records, [], out / form.name, tiny, extra=extra)
        oracles[form.name] = oracle

    apsr_methods, apsr_training, apsr_kl, apsr_separation = train_apsrs(  # the oracles' eval KL brings its own "none"
        s, model, held_out, oracle_data, eval_data, out, tiny, unsteered_kl=not oracles, other_teachers=other_teachers)
    training.update(apsr_training)
    log("eval KL and vector diagnostics ...")
    kl = {**(hypersteer_eval.eval_kl(oracles, {"held_out": list(eval_data.records)}) if oracles else {}), **apsr_kl}
    read_off = {f.name: read_off_kl(oracles[f.name], list(eval_data.records), s.read_off_scales)
                for f in forms if f.init == "diff" and s.read_off_scales}
    steering = [c.steering_prompts[0] for c in held_out]
    diagnostics = {name: vector_separation(o, steering, [p.text for p in eval_prompts]) for name, o in oracles.items()}
    diagnostics.update(apsr_separation)

    methods: list[Any] = [PromptSteering(), NoSteering()]
    if s.prompt_background:  # what the reference_text teacher reads (the same reference length)
        methods.append(PromptSteering(name="prompt-background",
                                      background_chars=s.reference_chars))
    methods += [PromptSteering(style=style, name=name) for style, name in zip(s.prompt_styles, prompt_style_names(s),
                                                                              strict=True)]
    methods += [PrefixSteering(positions=positions, factors=s.prefix_factors, pooled=pooled)
                for pooled in (False, *([True] if s.prefix_pooled else [])) for positions in s.prefix_positions]
    methods += [DiffMeanMethod(layer=layer, texts_for=texts_for, name=f"diffmean-L{layer}")
                for layer in s.diffmean_layers]
    methods += [HyperSteerMethod(o, magnitude="trained", factors=s.trained_factors, texts_for=texts_for, name=name)
                for name, o in oracles.items()]
    resid_names = [f"{parse_form(f).name}@resid" for f in s.resid_forms]
    methods += [HyperSteerMethod(oracles[name.removesuffix("@resid")], texts_for=texts_for, name=name)
                for name in resid_names]
    methods += apsr_methods
    apsr_names = [m.name for m in apsr_methods]
    by_name = {m.name: m for m in apsr_methods}
    methods += [WithPrefix(by_name[name], positions=positions, prefix_factor=s.prefix_combine_factor)
                for name in s.prefix_combine for positions in s.prefix_positions]
    roles = {c.id: "held_out" for c in held_out}
    log(f"evaluating {len(methods)} methods on {len(held_out)} held-out concepts × {len(eval_prompts)} prompts ...")
    started = time.perf_counter()
    reusable = {"prompt", "none", "prompt-background", *prefix_names(s), *prompt_style_names(s),
                *(m.name for m in methods if isinstance(m, WithPrefix) and apsr_training.get(m.inner.name, {}).get(
                    "reused")),
                *(f"diffmean-L{layer}" for layer in s.diffmean_layers),
                *(name + suffix for name, info in training.items() if "reused_from" in info for suffix in ("", "@resid")),
                *(name for name, info in apsr_training.items() if info["reused"])}
    result = evaluate(generator, methods, held_out, eval_prompts, judge=judge, factors=s.factors,
                      max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch_size, seed=s.seed,
                      out_dir=out / "evaluation", progress=not tiny, reuse=reusable)
    per_concept = common.per_concept_rows(result, roles)
    names = [m.name for m in methods]
    selected: list[str] = []
    if s.select_prompts:
        chosen = [m for m in apsr_methods if not s.select_methods or m.name in s.select_methods]
        probes = train_prompts[: s.select_prompts]
        log(f"choosing α per concept on {len(probes)} train prompts for {len(chosen)} A-PSR methods ...")
        selection = evaluate(generator, chosen, held_out, probes, judge=judge, factors=s.factors,
                             max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch_size, seed=s.seed,
                             out_dir=out / "evaluation_select", progress=not tiny, reuse=reusable)
        rows = factors_chosen_elsewhere(result, selection, f"@sel{len(probes)}", roles)
        per_concept += rows
        selected = list(dict.fromkeys(r["method"] for r in rows))
        names += selected
    eval_seconds = time.perf_counter() - started
    scores = common.interval_summary(per_concept, names, roles)
    background = ["prompt-background"] if s.prompt_background else []  # against the plain prompt
    comparisons = common.paired_comparisons(per_concept, roles, [*background, *prompt_style_names(s), *prefix_names(s),
                                                                 *combined_names(s), *oracles,
                                                                 *resid_names, *apsr_names, *selected],
                                            baselines=("prompt", *s.compare_to), prompt_share=0.9)
    lengths = common.answer_lengths(result, model.tokenizer, reference="none")
    report = {
        **common.report_head("oracle_forms", settings, estimate, tiny, run, argv, model, judge),
        "data": {"n_held_out": len(held_out), "n_train_prompts": len(train_prompts), "n_eval_prompts": len(eval_prompts),
                 "n_oracle_pairs": len(oracle_data), "n_eval_pairs": len(eval_data),
                 "held_out": [c.id for c in held_out], "eval_prompts": [p.text for p in eval_prompts],
                 "train_prompts": [p.text for p in train_prompts],
                 "teacher": {"oracle": oracle_data.stats, "eval": eval_data.stats}},
        "training": training, "eval_kl": kl, "read_off_kl": read_off, "diagnostics": diagnostics, "scores": scores,
        "comparisons": comparisons, "answer_lengths": lengths, "per_concept": per_concept,
        "resid_norms": {str(k): v for k, v in resid_norms.items()},
        "seconds": {"teacher": teacher_seconds, "evaluate": eval_seconds, "total": 0.0},
    }
    common.write_samples(result, held_out, out / "samples.md", s.samples,
                         methods=["none", "prompt", *prompt_style_names(s), *prefix_names(s), *combined_names(s),
                                  *oracles, *resid_names, *apsr_names])
    common.save_report(report, out, began, markdown)
    return report


def markdown(report: dict[str, Any]) -> str:
    from hooksteer.evaluate.report import table

    s, d = report["settings"], report["data"]
    lines = ["# The ceiling of each steering form: one free distilled vector per concept", "",
             f"`{report['command']}`", "",
             f"Model `{report['model']}`, judge `{report['judge']}`, device {report['environment']['device']}. "
             f"Oracles trained on {d['n_held_out']} held-out concepts × {d['n_train_prompts']} train prompts "
             f"(KL to the prompted model, response: {s['response']}); scored on the same concepts × "
             f"{d['n_eval_prompts']} eval prompts (factor chosen on half, reported on the other half), "
             f"{s['max_new_tokens']} greedy tokens. Scores: mean over concepts [bootstrap 95 % interval].", ""]
    rows = report["scores"].get("held_out")
    if rows:
        lines += ["## Steering score", "", common.interval_table(rows), ""]
    if report["comparisons"]:
        lines += ["## Paired differences", "", common.comparison_table(report["comparisons"]), ""]
    body = []
    for name, kl in report["eval_kl"].items():
        diag = report["diagnostics"].get(name, {})
        train = report["training"].get(name, {})
        body.append([name, fmt(kl.get("held_out")), fmt(diag.get("between_concepts")),
                     fmt(diag.get("mean_norm"), 1), str(train.get("steps", "—")), fmt(train.get("seconds"), 0)])
    lines += ["## Eval KL (never-trained pairs) and vectors", "",
              table(body, ("form", "eval KL", "cos between concepts", "‖Δ‖", "steps", "train s")), ""]
    for name, info in report.get("read_off_kl", {}).items():
        scales = list(info["scaled"])
        lines += [f"### {name}: eval KL at other lengths", "",
                  f"The mean over concepts is {fmt(info['shared_share'])} of a concept's norm.", "",
                  table([[part, *(fmt(info[part][k]) for k in scales)] for part in ("scaled", "centred")],
                        ("vectors × scale", *scales)), ""]
    lines += ["## Answer length (words, chosen factor, report half) vs unsteered", "",
              common.length_table(report["answer_lengths"]), "", "## Seconds", "",
              f"Teacher {fmt(report['seconds']['teacher'], 0)} s, evaluation {fmt(report['seconds']['evaluate'], 0)} s, "
              f"total {fmt(report['seconds']['total'], 0)} s; training: "
              + ", ".join(f"{k} {fmt(v.get('seconds'), 0)} s" for k, v in report["training"].items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
