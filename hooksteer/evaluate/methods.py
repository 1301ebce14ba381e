"""Steering methods as the evaluation protocol sees them: prepare per concept, then generate.

A :class:`SteeringMethod` turns one concept into a :class:`ConceptSteerer`; the steerer generates
answers to a batch of base prompts at a list of steering factors. This keeps the protocol
(:mod:`hooksteer.evaluate.protocol`) independent of *how* a method steers:

* vector methods (:class:`DiffMeanMethod`, :class:`PCAMethod`, :class:`RandomControl`) add
  ``factor · magnitude · unit(v)`` to the residual stream at every position (AxBench);
* :class:`PromptSteering` rewrites the user message and installs no hook (factor ignored);
* :class:`NoSteering` generates plainly (reference);
* later methods plug in through the same two calls: HyperSteer returns a :class:`VectorSteerer` whose
  ``direction`` is a callable giving one vector per base prompt (per-row ``(batch, d_model)``
  directions are supported by the hooks), PSR a steerer that installs a gated hook.

Magnitude (documented choice). AxBench scales the unit vector by ``factor ×`` the concept's mean
maximum activation. Here ``magnitude="resid_norm"`` (default) uses the mean L2 norm of the residual
stream at the steering site over the tokens of the concept's positive and negative texts (the
first token of each text is left out: attention-sink tokens have norms many times the rest), so
``factor=1`` adds a vector as long as a typical residual-stream vector. ``"max_projection"`` is the
AxBench reference (mean over positive texts of the maximum per-token projection on the unit
direction); a number fixes the magnitude.

Example:
    >>> method = DiffMeanMethod(layer=10)
    >>> steerer = method.prepare(model, concept, others)                            # doctest: +SKIP
    >>> outputs = steerer.generate(["Tell me a story."], [0.5, 1.0], GenerationSettings(), seed=0)  # doctest: +SKIP
    >>> len(outputs), len(outputs[0])                     # (factors, prompts)        # doctest: +SKIP
    (2, 1)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Union, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooksteer.activations import collect_activations
from hooksteer.data.schema import Concept
from hooksteer.hooks import PositionSpec, PositionTracker, add_vector, apply_steering_hooks, check_hook_name
from hooksteer.vectors import SteeringVector, check_finite

Factor = Union[float, None]
TextsFor = Callable[[Concept, Sequence[Concept]], tuple[list[str], list[str]]]
MessageBuilder = Callable[[str, str], str]
Magnitude = Union[Literal["resid_norm", "max_projection"], float]
DirectionSource = Union[Float[Tensor, " d_model"], Callable[[Sequence[str]], Float[Tensor, "n d_model"]]]


# ============================================================================ settings
@dataclass(frozen=True)
class GenerationSettings:
    """How every method generates (identical across methods for a fair comparison).

    AxBench samples 128 tokens at temperature 1.0 (``do_sample=True``); the default is greedy, because
    the embedded 135M model sampled at T=1 writes noise even without steering.

    Example:
        >>> GenerationSettings(max_new_tokens=32).do_sample
        False
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any printable parts (same parts → same seed, in every process).

    Example:
        >>> derive_seed(0, "diffmean", "volcano") == derive_seed(0, "diffmean", "volcano")
        True
    """
    return zlib.crc32(":".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


# ============================================================================ interfaces
@runtime_checkable
class ConceptSteerer(Protocol):
    """Generates steered answers for one concept."""

    info: dict[str, Any]

    def generate(self, prompts: Sequence[str], factors: Sequence[Factor], settings: GenerationSettings,
                 seed: int) -> list[list[str]]:
        """``outputs[j][i]``: the answer to ``prompts[i]`` at ``factors[j]``."""
        ...


@runtime_checkable
class SteeringMethod(Protocol):
    """A way of steering towards a concept. ``uses_factors=False`` methods are run at one factor (``None``)."""

    name: str
    uses_factors: bool

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> ConceptSteerer:
        """Build whatever steers towards ``concept`` (``others`` are the remaining concepts, e.g. negatives)."""
        ...

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings, saved with the results."""
        ...


# ============================================================================ generation helper
def _generate(model: nn.Module, prompts: Sequence[str], settings: GenerationSettings, seed: int) -> list[str]:
    from hooksteer.generation import generate_texts

    return generate_texts(model, list(prompts), max_new_tokens=settings.max_new_tokens,
                          do_sample=settings.do_sample, temperature=settings.temperature, seed=seed)


def _chunks(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


# ============================================================================ vector steering
class VectorSteerer:
    """Adds ``factor · magnitude · direction`` at ``hook_name``; batches prompts × factors in one pass.

    ``direction`` is a unit ``(d_model,)`` tensor, or a callable mapping prompts to ``(n, d_model)``
    directions (one per prompt, e.g. HyperSteer). Rows of a batch carry different factors through
    per-row directions, so a whole factor sweep runs in ``ceil(prompts·factors / batch_size)`` passes.

    Example:
        >>> steerer = VectorSteerer(model, "blocks.1.hook_resid_post", unit, magnitude=3.0)  # doctest: +SKIP
        >>> steerer.generate(["Hi"], [0.0, 1.0], GenerationSettings(), seed=0)      # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, hook_name: str, direction: DirectionSource, magnitude: float, *,
                 positions: PositionSpec = "all", info: dict[str, Any] | None = None) -> None:
        check_hook_name(model, hook_name)
        if not (math.isfinite(magnitude) and magnitude > 0):
            raise ValueError(f"magnitude must be a positive finite number, got {magnitude}")
        if isinstance(direction, Tensor):
            check_finite(direction, "steering direction")
        self.model, self.hook_name, self.direction = model, hook_name, direction
        self.magnitude, self.positions = float(magnitude), positions
        self.info = {"hook_name": hook_name, "magnitude": float(magnitude), **(info or {})}

    def directions(self, prompts: Sequence[str]) -> Float[Tensor, "n d_model"]:
        """One direction per prompt."""
        if callable(self.direction) and not isinstance(self.direction, Tensor):
            rows = torch.as_tensor(self.direction(prompts))
            if rows.ndim != 2 or rows.shape[0] != len(prompts):
                raise ValueError(f"direction callable returned shape {tuple(rows.shape)} for {len(prompts)} prompts")
            check_finite(rows, "per-prompt directions")
            return rows.float()
        return self.direction.float().expand(len(prompts), -1)

    def generate(self, prompts: Sequence[str], factors: Sequence[Factor], settings: GenerationSettings,
                 seed: int) -> list[list[str]]:
        if any(f is None for f in factors):
            raise ValueError("vector steering needs numeric factors, got None")
        directions = self.directions(prompts)
        rows = [(j, i) for j in range(len(factors)) for i in range(len(prompts))]
        outputs: list[list[str]] = [[""] * len(prompts) for _ in factors]
        for k, chunk in enumerate(_chunks(len(rows), settings.batch_size)):
            picked = [rows[r] for r in chunk]
            scale = torch.tensor([float(factors[j]) * self.magnitude for j, _ in picked])  # type: ignore[arg-type]
            batch_directions = directions[[i for _, i in picked]] * scale[:, None]
            texts = self._generate_rows([prompts[i] for _, i in picked], batch_directions, settings,
                                        derive_seed(seed, k))
            for (j, i), text in zip(picked, texts, strict=True):
                outputs[j][i] = text
        return outputs

    def _generate_rows(self, prompts: list[str], directions: Tensor, settings: GenerationSettings,
                       seed: int) -> list[str]:
        tracker = PositionTracker()
        hook = add_vector(directions, 1.0, positions=self.positions, tracker=tracker)
        with apply_steering_hooks(self.model, [(self.hook_name, hook)], tracker):
            return _generate(self.model, prompts, settings, seed)


# ============================================================================ texts and magnitudes
def concept_reference(concept: Concept) -> str:
    """What the judge compares outputs with: ``hooksteer.data.concepts.concept_query`` when available."""
    try:
        from hooksteer.data.concepts import concept_query
    except ImportError:
        return f"{concept.title} ({concept.description})" if concept.description else concept.title
    return concept_query(concept)


def concept_sentences(concept: Concept) -> list[str]:
    """On-concept sentences: ``hooksteer.data.concepts.concept_texts`` (the concept's reference text split
    into sentences) when available, else the title and description."""
    texts: list[str] = []
    try:
        from hooksteer.data.concepts import concept_texts
        texts = list(concept_texts(concept))
    except ImportError:
        pass
    if not texts:
        texts = [t for t in (getattr(concept, "text", ""), concept.description, concept.title) if t and t.strip()]
    return texts


def default_texts_for(concept: Concept, others: Sequence[Concept], *, max_texts: int = 32) -> tuple[list[str], list[str]]:
    """DiffMean/PCA contrast: the concept's sentences vs sentences of the other concepts (AxBench-style).

    Negatives take the first sentence of each other concept in turn until ``max_texts``.

    Example:
        >>> a = Concept(id="a", title="Apple", description="a fruit")
        >>> b = Concept(id="b", title="Bridge", description="a structure")
        >>> default_texts_for(a, [b])
        (['a fruit', 'Apple'], ['a structure', 'Bridge'])
    """
    positive = concept_sentences(concept)[:max_texts]
    if not positive:
        raise ValueError(f"concept {concept.id!r} has no text to build a vector from")
    pools = [concept_sentences(other) for other in others if other.id != concept.id]
    negative = _round_robin([p for p in pools if p], max_texts)
    if not negative:
        raise ValueError(f"no other concepts to contrast {concept.id!r} with: vector methods need at least two concepts")
    return positive, negative


def pool_texts_for(pool: Sequence[Concept], *, max_texts: int = 32) -> TextsFor:
    """A ``texts_for`` whose negatives come from a fixed pool of concepts (minus the concept itself),
    so vector methods get the same negatives however few concepts are evaluated.

    Example:
        >>> a, b = Concept(id="a", title="Apple"), Concept(id="b", title="Bridge")
        >>> pool_texts_for([a, b])(a, [])
        (['Apple'], ['Bridge'])
    """
    pool = list(pool)

    def texts_for(concept: Concept, others: Sequence[Concept]) -> tuple[list[str], list[str]]:
        return default_texts_for(concept, pool, max_texts=max_texts)

    texts_for.__name__ = f"pool_texts_for({len(pool)} concepts)"
    return texts_for


def _round_robin(pools: list[list[str]], limit: int) -> list[str]:
    picked: list[str] = []
    depth = 0
    while len(picked) < limit and any(depth < len(p) for p in pools):
        picked.extend(p[depth] for p in pools if depth < len(p))
        depth += 1
    return picked[:limit]


def residual_norm(model: nn.Module, texts: Sequence[str], hook_name: str, *, max_texts: int = 16) -> float:
    """Mean L2 norm of the activation at ``hook_name`` over the tokens of the first ``max_texts`` texts
    (the first token of each text left out). It is a scale reference, so a few hundred tokens suffice.

    Example:
        >>> residual_norm(model, ["Hello there, friend."], "blocks.2.hook_resid_post")   # doctest: +SKIP
        41.3
    """
    norms = [acts[1:].norm(dim=-1) if acts.shape[0] > 1 else acts.norm(dim=-1)
             for acts in collect_activations(model, list(texts)[:max_texts], hook_name)]
    return float(torch.cat(norms).mean())


def max_projection(model: nn.Module, texts: Sequence[str], hook_name: str, unit: Tensor) -> float:
    """AxBench magnitude: mean over ``texts`` of the largest per-token projection onto ``unit``."""
    maxima = [float((acts @ unit.float()).max()) for acts in collect_activations(model, texts, hook_name)]
    return sum(maxima) / len(maxima)


# ============================================================================ vector methods
@dataclass
class VectorMethod:
    """Base of the constant-vector methods: make a vector per concept, steer with its unit direction.

    Args:
        layer: block index (default: a third of the depth); ``site``: ``pre`` / ``mid`` / ``post``.
        hook_name: overrides ``layer``/``site``.
        magnitude: ``"resid_norm"``, ``"max_projection"`` or a number (see module docstring).
        positions: where to add (AxBench: ``"all"``).
        texts_for: ``(concept, others) -> (positive, negative)`` texts; default :func:`default_texts_for`.
    """

    layer: int | None = None
    site: str = "post"
    hook_name: str | None = None
    magnitude: Magnitude = "resid_norm"
    positions: PositionSpec = "all"
    texts_for: TextsFor | None = field(default=None, repr=False)
    name: str = "vector"
    uses_factors: bool = field(default=True, init=False)

    def site_for(self, model: nn.Module) -> str:
        if self.hook_name is not None:
            return self.hook_name
        layer = self.layer if self.layer is not None else max(0, round(model.cfg.n_layers / 3))
        return f"blocks.{layer}.hook_resid_{self.site}"

    def make_vector(self, model: nn.Module, hook_name: str, concept: Concept,
                    positive: list[str], negative: list[str]) -> SteeringVector:
        raise NotImplementedError

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> VectorSteerer:
        hook_name = self.site_for(model)
        positive, negative = (self.texts_for or default_texts_for)(concept, others)
        vector = self.make_vector(model, hook_name, concept, positive, negative)
        unit = vector.unit().vector.float()
        magnitude = self.magnitude_for(model, hook_name, unit, positive, negative)
        info = {"method": vector.method, "vector_norm": vector.norm(), "n_positive": len(positive),
                "n_negative": len(negative), **{k: v for k, v in vector.source.items() if _is_small(v)}}
        steerer = VectorSteerer(model, hook_name, unit, magnitude, positions=self.positions, info=info)
        steerer.vector = vector  # type: ignore[attr-defined]  # kept for inspection and tests
        return steerer

    def magnitude_for(self, model: nn.Module, hook_name: str, unit: Tensor,
                      positive: list[str], negative: list[str]) -> float:
        if isinstance(self.magnitude, int | float) and not isinstance(self.magnitude, bool):
            return float(self.magnitude)
        if self.magnitude == "resid_norm":
            return residual_norm(model, [*positive[:8], *negative[:8]], hook_name)
        if self.magnitude == "max_projection":
            value = max_projection(model, positive, hook_name, unit)
            if value <= 0:
                raise ValueError(f"max_projection magnitude is {value:.3g} <= 0; use magnitude='resid_norm'")
            return value
        raise ValueError(f"magnitude must be 'resid_norm', 'max_projection' or a number, got {self.magnitude!r}")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__, "layer": self.layer, "site": self.site,
                "hook_name": self.hook_name, "magnitude": self.magnitude, "positions": _jsonable(self.positions),
                "texts_for": getattr(self.texts_for, "__name__", None) if self.texts_for else "default_texts_for"}


def _is_small(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, str) else [int(v) for v in value]


@dataclass
class DiffMeanMethod(VectorMethod):
    """DiffMean (AxBench): mean activation over each text's tokens, positive mean minus negative mean."""

    name: str = "diffmean"
    aggregation: str = "mean"

    def make_vector(self, model: nn.Module, hook_name: str, concept: Concept,
                    positive: list[str], negative: list[str]) -> SteeringVector:
        from hooksteer.methods.diffmean import diffmean

        return diffmean(model, positive, negative, hook_name, aggregation=self.aggregation)  # type: ignore[arg-type]


@dataclass
class PCAMethod(VectorMethod):
    """PCA baseline: first PC of centred activations (texts are unpaired), oriented negative → positive."""

    name: str = "pca"
    mode: str = "centred"
    aggregation: str = "mean"

    def make_vector(self, model: nn.Module, hook_name: str, concept: Concept,
                    positive: list[str], negative: list[str]) -> SteeringVector:
        from hooksteer.methods.pca import pca

        return pca(model, positive, negative, hook_name, mode=self.mode, aggregation=self.aggregation)  # type: ignore[arg-type]


@dataclass
class RandomControl(VectorMethod):
    """Control: a random direction (seeded per concept) with the norm of ``base``'s vector.

    Because steering uses the unit direction times the same magnitude reference, the random
    control adds a vector exactly as long as ``base`` does at every factor. The hook point and
    magnitude reference are ``base``'s (its own ``layer``/``site``/``magnitude`` are not used).
    """

    name: str = "random"
    base: VectorMethod = field(default_factory=DiffMeanMethod)
    seed: int = 0

    def site_for(self, model: nn.Module) -> str:
        return self.base.site_for(model)

    def make_vector(self, model: nn.Module, hook_name: str, concept: Concept,
                    positive: list[str], negative: list[str]) -> SteeringVector:
        from hooksteer.methods.random_direction import random_like

        reference = self.base.make_vector(model, hook_name, concept, positive, negative)
        return random_like(reference, seed=derive_seed(self.seed, concept.id))

    def magnitude_for(self, model: nn.Module, hook_name: str, unit: Tensor,
                      positive: list[str], negative: list[str]) -> float:
        if self.base.magnitude == "max_projection":
            raise ValueError("RandomControl needs a base magnitude that does not depend on the direction "
                             "('resid_norm' or a number): the max projection of a random direction is meaningless")
        return self.base.magnitude_for(model, hook_name, unit, positive, negative)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "base": self.base.config(), "seed": self.seed}


# ============================================================================ prompt steering
def default_message_builder() -> MessageBuilder:
    """``hooksteer.data.teacher.steered_user_message`` if the data module has it, else a simple template."""
    try:
        from hooksteer.data.teacher import steered_user_message
    except ImportError:
        return simple_steered_message
    return steered_user_message


def simple_steered_message(steering_prompt: str, base_prompt: str) -> str:
    """Fallback prompt steering: the steering instruction, then the base prompt.

    Example:
        >>> simple_steered_message("Mention cats.", "Describe your day.")
        'Mention cats.\\n\\nDescribe your day.'
    """
    return f"{steering_prompt}\n\n{base_prompt}"


class PromptSteerer:
    """Generates with the steering instruction written into the user message; installs no hook."""

    def __init__(self, model: nn.Module, steering_prompt: str, builder: MessageBuilder) -> None:
        self.model, self.steering_prompt, self.builder = model, steering_prompt, builder
        self.info = {"steering_prompt": steering_prompt}

    def messages(self, prompts: Sequence[str]) -> list[str]:
        return [self.builder(self.steering_prompt, prompt) for prompt in prompts]

    def generate(self, prompts: Sequence[str], factors: Sequence[Factor], settings: GenerationSettings,
                 seed: int) -> list[list[str]]:
        outputs = _generate_plain(self.model, self.messages(prompts), settings, seed)
        return [list(outputs) for _ in factors]


def _generate_plain(model: nn.Module, prompts: Sequence[str], settings: GenerationSettings, seed: int) -> list[str]:
    outputs: list[str] = []
    for k, chunk in enumerate(_chunks(len(prompts), settings.batch_size)):
        outputs.extend(_generate(model, [prompts[i] for i in chunk], settings, derive_seed(seed, k)))
    return outputs


@dataclass
class PromptSteering:
    """Prompt baseline: the concept's steering prompt is added to the user message (no vector, no factor).

    Args:
        message_builder: ``(steering_prompt, base_prompt) -> user message``; default
            :func:`default_message_builder` (the data module's ``steered_user_message``).
        prompt_index: which of the concept's steering-prompt phrasings to use.
    """

    message_builder: MessageBuilder | None = field(default=None, repr=False)
    prompt_index: int = 0
    name: str = "prompt"
    uses_factors: bool = field(default=False, init=False)

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> PromptSteerer:
        if not concept.steering_prompts:
            raise ValueError(f"concept {concept.id!r} has no steering prompts for prompt steering")
        builder = self.message_builder or default_message_builder()
        return PromptSteerer(model, concept.steering_prompts[self.prompt_index], builder)

    def config(self) -> dict[str, Any]:
        builder = self.message_builder or default_message_builder()
        return {"name": self.name, "class": type(self).__name__, "prompt_index": self.prompt_index,
                "message_builder": f"{builder.__module__}.{getattr(builder, '__name__', type(builder).__name__)}"}


class PlainSteerer:
    """Unsteered generation."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.info = model, {}

    def generate(self, prompts: Sequence[str], factors: Sequence[Factor], settings: GenerationSettings,
                 seed: int) -> list[list[str]]:
        outputs = _generate_plain(self.model, prompts, settings, seed)
        return [list(outputs) for _ in factors]


@dataclass
class NoSteering:
    """Reference: the unsteered model (its concept score shows how often the concept appears anyway)."""

    name: str = "none"
    uses_factors: bool = field(default=False, init=False)

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> PlainSteerer:
        return PlainSteerer(model)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__}


METHOD_FACTORIES: dict[str, Callable[..., SteeringMethod]] = {
    "prompt": PromptSteering,
    "diffmean": DiffMeanMethod,
    "pca": PCAMethod,
    "random": RandomControl,
    "none": NoSteering,
}


def build_methods(names: Sequence[str], *, layer: int | None = None, seed: int = 0,
                  texts_for: TextsFor | None = None) -> list[SteeringMethod]:
    """Methods by name (``prompt,diffmean,pca,random,none``); vector methods share ``layer`` and ``texts_for``.

    Example:
        >>> [m.name for m in build_methods(["prompt", "diffmean"])]
        ['prompt', 'diffmean']
    """
    methods: list[SteeringMethod] = []
    for name in names:
        if name not in METHOD_FACTORIES:
            raise ValueError(f"unknown method {name!r}; choose from {sorted(METHOD_FACTORIES)}")
        if name in ("diffmean", "pca"):
            methods.append(METHOD_FACTORIES[name](layer=layer, texts_for=texts_for))
        elif name == "random":
            methods.append(RandomControl(layer=layer, texts_for=texts_for, seed=seed,
                                         base=DiffMeanMethod(layer=layer, texts_for=texts_for)))
        else:
            methods.append(METHOD_FACTORIES[name]())
    if len({m.name for m in methods}) != len(methods):
        raise ValueError(f"method names must be unique, got {[m.name for m in methods]}")
    return methods
