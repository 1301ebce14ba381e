"""Several behaviours at once: each alone, combined (summed at one layer) and simultaneous (each at its own layer).

After van der Weij et al. (see METHODS.md, "Broad skills and multiple behaviours"). Each behaviour has a
CAA vector per layer (mean last-token residual of "question + behaviour answer" minus "question + other
answer") and held-out A/B questions. A steering configuration is scored, teacher-forced, by the
log-odds of the behaviour answer's letter at the answer position (the assistant turn is prefilled with
"("):

    effect = mean over held-out items of [log p(match) - log p(other)]_steered - [...]_unsteered   (nats)

Also recorded per cell: a paired effect size (mean shift / std of the per-item shifts), the share of
greedy answers that are neither A nor B ("faulty", as in the paper), and mode collapse: hooksteer's
:func:`~hooksteer.evaluate.protocol.mode_collapse` on the greedy first answer tokens of all items (the
behaviour answer alternates between A and B, so ">= 95 % identical" means the model stopped reading the
question) and, optionally, on greedy free-text outputs for a few prompts.

Grids (``B`` behaviours, ``L`` layers, ``C`` coefficients):

- ``alone``        (B steered, L, C, B measured): one behaviour's vector at one layer, scaled by c
- ``combined``     (L, C, B): every behaviour's vector at the same layer, summed, all scaled by c
- ``simultaneous`` (C, B): each behaviour at its own layer (``simultaneous_layers``), one shared c
- ``interaction``  (L, C, B) = combined[l, c, b] - alone[b, l, c, b]: what the other vectors do to b.

All steering goes through :func:`hooksteer.steer` (same hook → summed, different hooks → simultaneous).

Example:
    >>> from analysis.behaviour_data import behaviour_items, split_items      # doctest: +SKIP
    >>> train, held_out = split_items(behaviour_items("myopia"), 12)
    >>> myopia = caa_behaviour(model, "myopia", train, held_out, layers=[8, 12])
    >>> result = run_grid(model, [myopia, love], layers=[8, 12], coefficients=[-4, 4])
    >>> result.save("runs/multi/result.json"); plot_interactions(result, "runs/multi/interactions.png")
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor, nn
from tqdm.auto import tqdm

import hooksteer as hs
from analysis.behaviour_data import ABItem
from hooksteer.activations import model_device, pad_token_id, right_pad, tokenize
from hooksteer.evaluate.protocol import COLLAPSE_THRESHOLD, mode_collapse
from hooksteer.generation import generate_texts, is_bridge
from hooksteer.methods import diffmean
from hooksteer.models import format_chat
from hooksteer.vectors import SteeringSet, SteeringVector

RESULT_VERSION = 1
DEFAULT_COLLAPSE_PROMPTS = (
    "Tell me about your day.",
    "What is the capital of France?",
    "Give me a tip for learning to cook.",
    "Describe the ocean in one sentence.",
    "How do I make a cup of tea?",
)


# ================================================================================ behaviours
@dataclass
class Behaviour:
    """A behaviour to steer: its vectors (one per layer) and the held-out A/B items that measure it.

    Example:
        >>> import torch
        >>> from analysis.behaviour_data import myopia_items
        >>> v = SteeringVector("blocks.1.hook_resid_post", torch.ones(32))
        >>> Behaviour("myopia", {1: v}, myopia_items()[:4]).vector(1) is v
        True
    """

    name: str
    vectors: dict[int, SteeringVector]
    eval_items: list[ABItem]
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a behaviour needs a name")
        if not self.vectors:
            raise ValueError(f"behaviour {self.name!r} has no vectors")
        if not self.eval_items:
            raise ValueError(f"behaviour {self.name!r} has no evaluation items")
        for layer, vector in self.vectors.items():
            if vector.layer != layer:
                raise ValueError(f"behaviour {self.name!r}: vector at {vector.hook_name!r} filed under layer {layer}")

    def vector(self, layer: int) -> SteeringVector:
        if layer not in self.vectors:
            raise KeyError(f"behaviour {self.name!r} has no vector at layer {layer}; it has {sorted(self.vectors)}")
        return self.vectors[layer]


def ab_prompt(model: Any, item: ABItem, *, chat: bool = True) -> str:
    """The item as the model sees it, ending just before the answer letter (assistant turn starts "(")."""
    if chat:
        return format_chat(model, item.question) + "("
    return f"{item.question}\nAnswer: ("


def caa_behaviour(
    model: nn.Module, name: str, train_items: Sequence[ABItem], eval_items: Sequence[ABItem],
    layers: Sequence[int], *, site: str = "resid_post", chat: bool = True, description: str = "",
    norm: float | None = None,
) -> Behaviour:
    """CAA vectors (last token) at every layer from ``train_items``; measured on ``eval_items``.

    Vectors are unnormalised as in van der Weij et al. unless ``norm`` is given, in which case every
    vector is rescaled to that norm (so one shared coefficient means the same strength for each behaviour).

    Example:
        >>> b = caa_behaviour(model, "myopia", train, held_out, layers=[8, 12])   # doctest: +SKIP
    """
    if not train_items:
        raise ValueError(f"behaviour {name!r}: no training items to build a vector from")
    overlap = set(train_items) & set(eval_items)
    if overlap:
        raise ValueError(f"behaviour {name!r}: {len(overlap)} item(s) are in both the training and evaluation sets")
    positive = [ab_prompt(model, item, chat=chat) + item.matching for item in train_items]
    negative = [ab_prompt(model, item, chat=chat) + item.other for item in train_items]
    vectors = {}
    for layer in layers:
        vector = diffmean(model, positive, negative, f"blocks.{layer}.hook_{site}", aggregation="last")
        tensor = vector.vector if norm is None else vector.vector * (float(norm) / max(vector.norm(), 1e-12))
        vectors[int(layer)] = SteeringVector(vector.hook_name, tensor, method="caa",
                                             source={**vector.source, "behaviour": name, "raw_norm": vector.norm()})
    return Behaviour(name, vectors, list(eval_items), description=description)


# ================================================================================ scoring
@dataclass
class _Probe:
    """Tokenised held-out items of all behaviours, scored in one batch per configuration."""

    tokens: Int[Tensor, "n pos"]
    last: Int[Tensor, " n"]
    match_ids: Int[Tensor, " n"]
    other_ids: Int[Tensor, " n"]
    letter_ids: tuple[int, int]
    owner: np.ndarray  # (n,) index of the behaviour each item measures
    prefix: dict[int, list[Tensor]] = field(default_factory=dict)  # layer -> unsteered residual per batch
    extras: list[tuple[Any, Any]] = field(default_factory=list)  # (shortformer_pos_embed, attention_mask)


def _letter_id(model: Any, prompt_ids: Tensor, prompt: str, letter: str) -> int:
    with_letter = tokenize(model, prompt + letter)
    if with_letter.shape[0] != prompt_ids.shape[0] + 1 or not torch.equal(with_letter[:-1], prompt_ids):
        raise ValueError(f"answer letter {letter!r} does not tokenise as one extra token after '(' for this model")
    return int(with_letter[-1])


def _build_probe(model: Any, behaviours: Sequence[Behaviour], chat: bool) -> _Probe:
    token_lists, match_ids, other_ids, owner = [], [], [], []
    letter_ids: dict[str, int] = {}
    for index, behaviour in enumerate(behaviours):
        for item in behaviour.eval_items:
            prompt = ab_prompt(model, item, chat=chat)
            ids = tokenize(model, prompt)
            for letter in ("A", "B"):
                letter_id = _letter_id(model, ids, prompt, letter)
                if letter_ids.setdefault(letter, letter_id) != letter_id:
                    raise ValueError(f"letter {letter!r} tokenises differently across prompts")
            token_lists.append(ids)
            match_ids.append(letter_ids[item.matching])
            other_ids.append(letter_ids[item.other])
            owner.append(index)
    return _Probe(right_pad(token_lists, pad_token_id(model)), torch.tensor([len(t) - 1 for t in token_lists]),
                  torch.tensor(match_ids), torch.tensor(other_ids), (letter_ids["A"], letter_ids["B"]),
                  np.asarray(owner))


def _can_start_midway(model: nn.Module) -> bool:
    """HookedTransformer can resume a forward pass from a cached residual (``start_at_layer``)."""
    return hasattr(model, "input_to_embed") and hasattr(model, "unembed") and not is_bridge(model)


@torch.no_grad()
def _cache_prefixes(model: nn.Module, probe: _Probe, layers: Sequence[int], batch_size: int) -> None:
    """Store the unsteered residual entering each layer, so steered passes only run the layers above it.

    Steering at ``blocks.{l}.*`` (all positions) cannot change anything below block ``l``.
    """
    if not _can_start_midway(model):
        return
    device = model_device(model)
    for start in range(0, probe.tokens.shape[0], batch_size):
        tokens = probe.tokens[start : start + batch_size].to(device)
        residual, _, shortformer, mask = model.input_to_embed(tokens)
        probe.extras.append((shortformer, mask))
        for layer in range(max(layers) + 1):
            if layer in layers:
                probe.prefix.setdefault(layer, []).append(residual)
            residual = model.blocks[layer](residual, shortformer_pos_embed=shortformer, attention_mask=mask)


@torch.no_grad()
def _last_logits(model: nn.Module, probe: _Probe, batch: int, rows: slice, start_layer: int | None) -> Tensor:
    device = model_device(model)
    last = probe.last[rows].to(device)
    if start_layer is None or start_layer not in probe.prefix:
        logits = model(probe.tokens[rows].to(device))
        return logits[torch.arange(logits.shape[0]), last]
    shortformer, mask = probe.extras[batch]
    residual = probe.prefix[start_layer][batch]
    for layer in range(start_layer, model.cfg.n_layers):
        residual = model.blocks[layer](residual, shortformer_pos_embed=shortformer, attention_mask=mask)
    final = residual[torch.arange(residual.shape[0]), last][:, None]  # only the answer position
    if model.cfg.normalization_type is not None:
        final = model.ln_final(final)
    return model.unembed(final)[:, 0]


@torch.no_grad()
def _score(model: nn.Module, probe: _Probe, batch_size: int,
           start_layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per item: log-odds of the behaviour letter and the greedy (argmax) answer token id.

    ``start_layer``: the lowest steered layer; with a cached prefix only the blocks from there on run.
    """
    log_odds, greedy = [], []
    for batch, start in enumerate(range(0, probe.tokens.shape[0], batch_size)):
        rows = slice(start, start + batch_size)
        last = _last_logits(model, probe, batch, rows, start_layer).float()
        if not torch.isfinite(last).all():
            raise FloatingPointError("the steered model produced NaN/inf logits; lower the coefficients")
        logp = last.log_softmax(-1).cpu()
        idx = torch.arange(logp.shape[0])
        log_odds.append(logp[idx, probe.match_ids[rows]] - logp[idx, probe.other_ids[rows]])
        greedy.append(logp.argmax(-1))
    return torch.cat(log_odds).numpy().astype(np.float64), torch.cat(greedy).numpy()


# ================================================================================ result
_GRID_FIELDS = {
    "alone_effect": 4, "alone_d": 4, "alone_faulty": 4, "alone_collapse": 3,
    "combined_effect": 3, "combined_d": 3, "combined_faulty": 3, "combined_collapse": 2,
    "simultaneous_effect": 2, "simultaneous_d": 2, "simultaneous_faulty": 2, "simultaneous_collapse": 1,
}


@dataclass
class MultiBehaviourResult:
    """All grids of :func:`run_grid` (numpy arrays; shapes in the module docstring) with JSON save/load.

    ``*_effect``: mean log-odds shift (nats) of the behaviour answer; ``*_d``: paired effect size;
    ``*_faulty``: share of greedy answers that are neither A nor B; ``*_collapse``: share of the most common
    output (greedy answer tokens, or free-text outputs if that share is larger); ``collapsed`` cells have a
    share >= ``collapse_threshold``.

    Example:
        >>> result = MultiBehaviourResult.load("runs/multi/result.json")   # doctest: +SKIP
        >>> result.interaction.shape    # (layers, coefficients, behaviours)
    """

    behaviours: list[str]
    layers: list[int]
    coefficients: list[float]
    simultaneous_layers: dict[str, int]
    baseline: dict[str, dict[str, float]]
    alone_effect: np.ndarray
    alone_d: np.ndarray
    alone_faulty: np.ndarray
    alone_collapse: np.ndarray
    combined_effect: np.ndarray
    combined_d: np.ndarray
    combined_faulty: np.ndarray
    combined_collapse: np.ndarray
    simultaneous_effect: np.ndarray
    simultaneous_d: np.ndarray
    simultaneous_faulty: np.ndarray
    simultaneous_collapse: np.ndarray
    collapse_threshold: float = COLLAPSE_THRESHOLD
    generations: dict[str, list[str]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_b, n_l, n_c = len(self.behaviours), len(self.layers), len(self.coefficients)
        expected = {
            "alone_effect": (n_b, n_l, n_c, n_b), "alone_collapse": (n_b, n_l, n_c),
            "combined_effect": (n_l, n_c, n_b), "combined_collapse": (n_l, n_c),
            "simultaneous_effect": (n_c, n_b), "simultaneous_collapse": (n_c,),
        }
        for name in _GRID_FIELDS:
            array = np.asarray(getattr(self, name), dtype=np.float64)
            setattr(self, name, array)
            shape = expected.get(name) or expected[name.rsplit("_", 1)[0] + "_effect"]
            if array.shape != shape:
                raise ValueError(f"{name} has shape {array.shape}, expected {shape}")
            if not np.isfinite(array).all():
                raise ValueError(f"{name} holds NaN/inf values")
        if set(self.simultaneous_layers) != set(self.behaviours):
            raise ValueError("simultaneous_layers must name a layer for every behaviour")

    # -- derived views
    @property
    def alone_own(self) -> np.ndarray:
        """(L, C, B): each behaviour's effect on itself when steered alone."""
        return np.stack([self.alone_effect[b, :, :, b] for b in range(len(self.behaviours))], axis=-1)

    @property
    def interaction(self) -> np.ndarray:
        """(L, C, B): combined effect minus the behaviour's own alone effect at the same layer and coefficient."""
        return self.combined_effect - self.alone_own

    @property
    def simultaneous_reference(self) -> np.ndarray:
        """(C, B): each behaviour alone at its simultaneous layer (what simultaneous steering is compared to)."""
        columns = [self.alone_effect[b, self.layers.index(self.simultaneous_layers[name]), :, b]
                   for b, name in enumerate(self.behaviours)]
        return np.stack(columns, axis=-1)

    def collapsed(self, grid: str) -> np.ndarray:
        """Boolean mask of collapsed cells for ``grid`` in {"alone", "combined", "simultaneous"}."""
        return getattr(self, f"{grid}_collapse") >= self.collapse_threshold

    def summary(self) -> str:
        """Plain-text table: per behaviour, best |effect| alone / combined / simultaneous and collapse counts."""
        lines = [f"{'behaviour':<12} {'baseline':>9} {'alone max':>10} {'combined max':>13} {'simult. max':>12}"]
        for b, name in enumerate(self.behaviours):
            own = self.alone_own[..., b]
            lines.append(f"{name:<12} {self.baseline[name]['log_odds']:>9.2f} {own.max():>10.2f} "
                         f"{self.combined_effect[..., b].max():>13.2f} {self.simultaneous_effect[:, b].max():>12.2f}")
        lines.append(f"collapsed cells: alone {int(self.collapsed('alone').sum())}/{self.alone_collapse.size}, "
                     f"combined {int(self.collapsed('combined').sum())}/{self.combined_collapse.size}, "
                     f"simultaneous {int(self.collapsed('simultaneous').sum())}/{self.simultaneous_collapse.size}")
        return "\n".join(lines)

    # -- persistence
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"version": RESULT_VERSION}
        for name in ("behaviours", "layers", "coefficients", "simultaneous_layers", "baseline",
                     "collapse_threshold", "generations", "config"):
            data[name] = getattr(self, name)
        for name in _GRID_FIELDS:
            data[name] = getattr(self, name).tolist()
        return data

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result as JSON (creating parent folders)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> MultiBehaviourResult:
        """Read a result written by :meth:`save`; raises ``ValueError`` naming what is wrong."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(data, dict) or data.get("version") != RESULT_VERSION:
            raise ValueError(f"{path} is not a multi-behaviour result (version {RESULT_VERSION})")
        missing = [name for name in ("behaviours", "layers", "coefficients", "simultaneous_layers", "baseline",
                                     *_GRID_FIELDS) if name not in data]
        if missing:
            raise ValueError(f"{path} lacks {missing}")
        data.pop("version")
        data["simultaneous_layers"] = {k: int(v) for k, v in data["simultaneous_layers"].items()}
        return cls(**data)


# ================================================================================ the grid
def _cell(log_odds: np.ndarray, base: np.ndarray, greedy: np.ndarray, probe: _Probe, n_behaviours: int,
          outputs: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    effect, d, faulty = np.zeros(n_behaviours), np.zeros(n_behaviours), np.zeros(n_behaviours)
    for b in range(n_behaviours):
        rows = probe.owner == b
        shift = log_odds[rows] - base[rows]
        effect[b] = shift.mean()
        spread = shift.std(ddof=1) if shift.size > 1 else 0.0
        d[b] = effect[b] / spread if spread > 1e-9 else 0.0
        faulty[b] = float((~np.isin(greedy[rows], probe.letter_ids)).mean())
    share = mode_collapse([str(t) for t in greedy.tolist()])[1]
    if outputs:
        share = max(share, mode_collapse(list(outputs))[1])
    return effect, d, faulty, share


def assign_simultaneous_layers(alone_own: np.ndarray, layers: Sequence[int], behaviours: Sequence[str],
                               coefficients: Sequence[float]) -> dict[str, int]:
    """Each behaviour's best *distinct* layer: greedy by the largest own effect at the largest positive coefficient.

    Example:
        >>> import numpy as np
        >>> own = np.zeros((2, 1, 2)); own[0, 0, 0] = 3; own[1, 0, 1] = 2; own[0, 0, 1] = 1
        >>> assign_simultaneous_layers(own, [4, 8], ["x", "y"], [1.0])
        {'x': 4, 'y': 8}
    """
    if len(layers) < len(behaviours):
        raise ValueError(f"simultaneous steering needs a distinct layer per behaviour: {len(behaviours)} "
                         f"behaviours but only {len(layers)} layers")
    positive = [i for i, c in enumerate(coefficients) if c > 0]
    column = max(positive, key=lambda i: coefficients[i]) if positive else int(np.argmax(np.abs(coefficients)))
    scores = alone_own[:, column, :]  # (L, B)
    order = sorted(((scores[li, b], li, b) for li in range(len(layers)) for b in range(len(behaviours))),
                   reverse=True)
    chosen: dict[int, int] = {}
    used: set[int] = set()
    for _, li, b in order:
        if b not in chosen and li not in used:
            chosen[b] = li
            used.add(li)
    return {name: int(layers[chosen[b]]) for b, name in enumerate(behaviours)}


def run_grid(
    model: nn.Module,
    behaviours: Sequence[Behaviour],
    *,
    layers: Sequence[int],
    coefficients: Sequence[float],
    simultaneous_layers: Mapping[str, int] | None = None,
    collapse_prompts: Sequence[str] = (),
    max_new_tokens: int = 12,
    chat: bool = True,
    batch_size: int = 32,
    progress: bool = True,
) -> MultiBehaviourResult:
    """Measure every behaviour under alone / combined / simultaneous steering over layers × coefficients.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        behaviours: at least two :class:`Behaviour` objects with vectors at every layer in ``layers``.
        layers: layers of the grid (vectors are added at every position of ``blocks.{layer}.hook_<site>``).
        coefficients: scalars multiplying the (unnormalised) vectors; 0 is allowed and must give no change.
        simultaneous_layers: behaviour name → its own layer; default: :func:`assign_simultaneous_layers`.
        collapse_prompts: free-text prompts generated greedily in every cell for mode-collapse detection
            (empty: only the A/B answers are checked).
        max_new_tokens: tokens per free-text output.
        chat: wrap questions in the chat template (the embedded model is an instruct model).
        batch_size: items per forward pass.
        progress: show a progress bar over cells.
    """
    if len(behaviours) < 2:
        raise ValueError("the multi-behaviour grid needs at least two behaviours")
    names = [b.name for b in behaviours]
    if len(set(names)) != len(names):
        raise ValueError(f"behaviour names must be unique, got {names}")
    layers, coefficients = [int(x) for x in layers], [float(c) for c in coefficients]
    if not layers or not coefficients:
        raise ValueError("layers and coefficients must be non-empty")
    if not all(math.isfinite(c) for c in coefficients):
        raise ValueError(f"coefficients must be finite, got {coefficients}")
    for behaviour in behaviours:
        for layer in layers:
            behaviour.vector(layer)
    probe = _build_probe(model, behaviours, chat)
    n_b, n_l, n_c = len(behaviours), len(layers), len(coefficients)
    _cache_prefixes(model, probe, layers, batch_size)
    base, base_greedy = _score(model, probe, batch_size, start_layer=min(layers))
    generations: dict[str, list[str]] = {}
    prompts = list(collapse_prompts)

    def measure(label: str, vectors: Sequence[SteeringVector | SteeringSet], coefficient: float, start: int):
        outputs = None
        with hs.steer(model, *vectors, coefficient=coefficient):
            log_odds, greedy = _score(model, probe, batch_size, start_layer=start)
            if prompts:
                outputs = generate_texts(model, prompts, max_new_tokens=max_new_tokens, chat=chat)
                generations[label] = outputs
        return _cell(log_odds, base, greedy, probe, n_b, outputs)

    if prompts:
        generations["unsteered"] = generate_texts(model, prompts, max_new_tokens=max_new_tokens, chat=chat)
    n_cells = n_b * n_l * n_c + n_l * n_c + n_c
    bar = tqdm(total=n_cells, desc="multi-behaviour grid", disable=not progress)
    alone = [np.zeros((n_b, n_l, n_c, n_b)) for _ in range(3)] + [np.zeros((n_b, n_l, n_c))]
    for (s, steered), (li, layer), (ci, c) in product(enumerate(behaviours), enumerate(layers), enumerate(coefficients)):
        cell = measure(f"alone:{steered.name}:L{layer}:c{c:g}", [steered.vector(layer)], c, layer)
        for grid, value in zip(alone, cell, strict=True):
            grid[s, li, ci] = value
        bar.update()
    combined = [np.zeros((n_l, n_c, n_b)) for _ in range(3)] + [np.zeros((n_l, n_c))]
    for (li, layer), (ci, c) in product(enumerate(layers), enumerate(coefficients)):
        cell = measure(f"combined:L{layer}:c{c:g}", [b.vector(layer) for b in behaviours], c, layer)
        for grid, value in zip(combined, cell, strict=True):
            grid[li, ci] = value
        bar.update()
    partial = MultiBehaviourResult(names, layers, coefficients, {n: layers[0] for n in names}, {},
                                   *alone, *combined, np.zeros((n_c, n_b)), np.zeros((n_c, n_b)),
                                   np.zeros((n_c, n_b)), np.zeros(n_c))
    own_layers = dict(simultaneous_layers) if simultaneous_layers is not None else assign_simultaneous_layers(
        partial.alone_own, layers, names, coefficients)
    for name in names:
        if own_layers.get(name) not in layers:
            raise ValueError(f"simultaneous layer of {name!r} must be one of the grid layers {layers}, "
                             f"got {own_layers.get(name)}")
    if len(set(own_layers[n] for n in names)) < n_b:
        raise ValueError(f"simultaneous layers must be distinct (else vectors are summed): {own_layers}")
    simultaneous = [np.zeros((n_c, n_b)) for _ in range(3)] + [np.zeros(n_c)]
    steering_set = SteeringSet([b.vector(own_layers[b.name]) for b in behaviours])
    for ci, c in enumerate(coefficients):
        cell = measure(f"simultaneous:c{c:g}", [steering_set], c, min(own_layers.values()))
        for grid, value in zip(simultaneous, cell, strict=True):
            grid[ci] = value
        bar.update()
    bar.close()
    baseline = {}
    for b, name in enumerate(names):
        rows = probe.owner == b
        baseline[name] = {"log_odds": float(base[rows].mean()),
                          "match_rate": float((base_greedy[rows] == probe.match_ids.numpy()[rows]).mean()),
                          "faulty": float((~np.isin(base_greedy[rows], probe.letter_ids)).mean()),
                          "n_items": int(rows.sum()),
                          "share_A": float(np.mean([i.matching == "A" for i in behaviours[b].eval_items]))}
    config = {"model": getattr(getattr(model, "cfg", None), "model_name", type(model).__name__),
              "chat": chat, "max_new_tokens": max_new_tokens, "collapse_prompts": prompts,
              "vector_norms": {b.name: {str(layer): b.vector(layer).norm() for layer in layers} for b in behaviours},
              "descriptions": {b.name: b.description for b in behaviours}}
    return MultiBehaviourResult(names, layers, coefficients, own_layers, baseline, *alone, *combined, *simultaneous,
                                generations=generations, config=config)
