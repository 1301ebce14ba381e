"""PSR as a :class:`~hooksteer.evaluate.methods.SteeringMethod` for :func:`hooksteer.evaluate.protocol.evaluate`.

For each concept, :class:`PSRMethod` takes that concept's teacher pairs — prompt-steered responses
(``SteeringExample`` s, e.g. every judge-accepted candidate of
:func:`hooksteer.data.teacher.generate_teacher_targets`) or distillation records
(:meth:`PSRTeacherData.from_distill`) — computes the teacher Δ (shared between PSR methods through one
:class:`PSRTeacherData`), trains a PSR on the frozen ``HookedTransformer`` (or loads one from ``save_dir``),
and returns a :class:`PSRSteerer` that generates with it on the evaluated model (a ``TransformerBridge`` on
the same weights is fine: PSR steering runs on its fast path).

What a factor means (``magnitude``):

* ``"alpha"`` (default): α = factor; α = 1 is the PSR as trained. Sweep α itself (e.g. 0.5–4), or pick it with
  :class:`hooksteer.psr.search.AlphaSearch` (raise α until a coherence target is hit, on the selection half).
* ``"resid_norm"``: α = factor / f₀ with f₀ = mean‖Δ_t‖ / mean‖h_t‖ over the teacher's response tokens at
  the PSR's (last) layer (the meaning a factor has for DiffMean). A rank-1 PSR reproduces only part of ‖Δ‖,
  so this under-steers PSRs compared with DiffMean at the same factor.

:class:`PSRSteerer` records, for every factor, the norm the PSR adds relative to the residual norm at each
steered layer and the share of steered tokens whose gate is 0, measured on the generated text
(``steerer.added_norms``).

Example:
    >>> data = PSRTeacherData(model, examples_by_concept, layers=range(30), prefix_tokens="auto")  # doctest: +SKIP
    >>> methods = [PSRMethod(data, PSRConfig(layers=[20], d_model=576)), PromptSteering()]  # doctest: +SKIP
    >>> evaluate(bridge, methods, held_out, eval_prompts, judge=judge, factors=[0.5, 1, 2])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hooksteer.data.schema import Concept, SteeringExample
from hooksteer.data.teacher import DEFAULT_STYLE
from hooksteer.evaluate.methods import Factor, GenerationSettings, derive_seed
from hooksteer.evaluate.protocol import check_factors
from hooksteer.io import atomic_write_text
from hooksteer.psr.hooks import check_mode
from hooksteer.psr.model import CONFIG_FILE, PSR, PSRConfig
from hooksteer.psr.teacher import (
    TeacherPair,
    TeacherRecord,
    compute_teacher,
    encode_examples,
    pairs_from_distill,
    template_suffix_length,
)
from hooksteer.psr.trainer import TrainResult, train_psr

#: training diagnostics saved next to a PSR by :meth:`PSRMethod.train` (read back when the PSR is loaded)
TRAINING_FILE = "training_info.json"


# fields that differ per concept or are filled in by training; every other PSRConfig field must match to reuse a PSR
PER_CONCEPT_FIELDS = frozenset({"concept_id", "steering_prompt", "model_name", "extra"})


def settings_mismatch(saved: PSRConfig, wanted: PSRConfig) -> list[str]:
    """Settings in which a saved PSR's config differs from ``wanted`` (``name: saved != wanted``; None in ``wanted``
    means "resolved at training time" and accepts any saved value).

    Example:
        >>> settings_mismatch(PSRConfig(layers=[3], d_model=8, steps=8), PSRConfig(layers=[3], d_model=8, steps=20))
        ['steps: 8 != 20']
    """
    out = []
    for f in dataclasses.fields(wanted):
        if f.name in PER_CONCEPT_FIELDS:
            continue
        a, b = getattr(saved, f.name), getattr(wanted, f.name)
        if b is None:  # "work it out at training time" (e.g. template_tokens): the saved, resolved value stands
            continue
        if (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b):
            out.append(f"{f.name}: {a!r} != {b!r}")
    return out


def has_saved_psr(folder: str | Path) -> bool:
    """Whether ``folder`` holds a PSR and its training info, as :func:`save_psr_with_info` writes them."""
    return (Path(folder) / CONFIG_FILE).is_file() and (Path(folder) / TRAINING_FILE).is_file()


def load_saved_psr(folder: str | Path, model: Any, wanted: PSRConfig) -> tuple[PSR, dict[str, Any]] | None:
    """The PSR saved in ``folder`` by :func:`save_psr_with_info` and its training info, or None when the folder holds
    no such pair; a PSR saved with settings other than ``wanted`` (see :func:`settings_mismatch`) is refused.

    Example:
        >>> save_psr_with_info(psr, "runs/x/concept", {"seconds": 1.0})           # doctest: +SKIP
        >>> psr, info = load_saved_psr("runs/x/concept", model, psr.config)       # doctest: +SKIP
    """
    folder = Path(folder)
    if not has_saved_psr(folder):
        return None
    psr = PSR.load(folder, model)
    changed = settings_mismatch(psr.config, wanted)
    if changed:
        raise ValueError(f"the PSR saved in {folder} was made with other settings ({', '.join(changed)}); use another "
                         "folder (benchmark: another --out) or delete that one")
    return psr, json.loads((folder / TRAINING_FILE).read_text())


def save_psr_with_info(psr: PSR, folder: str | Path, info: dict[str, Any]) -> None:
    """Save ``psr`` (its weights and config) and its training ``info`` (``training_info.json``) in ``folder``."""
    psr.save(folder)
    atomic_write_text(Path(folder) / TRAINING_FILE, json.dumps(info, default=str))


__all__ = ["PSRTeacherData", "PSRMethod", "PSRSteerer", "accepted_examples", "fidelity_summary", "has_saved_psr", "load_saved_psr",
           "save_psr_with_info", "summarise_added"]


def accepted_examples(result: Any, config: Any) -> dict[str, list[SteeringExample]]:
    """Every judge-accepted candidate of a :class:`hooksteer.data.teacher.TeacherResult` (not only the best one
    per pair), per concept id, with the thresholds of the ``TeacherConfig`` ``config``."""
    out: dict[str, list[SteeringExample]] = {}
    for record in result.records:
        for candidate, score in zip(record["candidates"], record["scores"], strict=True):
            if (score["concept"] >= config.min_concept and score["fluency"] >= config.min_fluency
                    and score["instruction"] >= config.min_instruction and candidate.strip()):
                out.setdefault(record["concept_id"], []).append(SteeringExample(
                    concept_id=record["concept_id"], steering_prompt=record["steering_prompt"],
                    base_prompt=record["base_prompt"], target=candidate,
                    base_prompt_id=record.get("base_prompt_id", "")))
    return out


class PSRTeacherData:
    """Teacher pairs per concept and their Δ records, computed once and shared by several PSR methods.

    Args:
        model: the frozen base ``HookedTransformer`` (teacher Δ and PSR training run on it).
        examples: ``{concept_id: [SteeringExample, ...]}`` (targets = prompt-steered responses).
        layers: every layer any PSR method needs (records hold ``plain``/``delta`` for all of them); also the
            layers the fidelity diagnostics measure.
        style: how the instruction is placed in ``x'`` (same as the teacher targets and prompt baseline).
        max_response_tokens: truncate responses (cost control).
        prefix_tokens: template tokens kept before each response (``"auto"``:
            :func:`~hooksteer.psr.teacher.template_suffix_length`).
        nll: also store the unsteered / prompted response NLL (for the fidelity diagnostics).
        pairs: ready-made pairs per concept instead of ``examples`` (see :meth:`from_distill`).
    """

    def __init__(self, model: nn.Module, examples: Mapping[str, Sequence[SteeringExample]] | None,
                 layers: Sequence[int], *, style: str = DEFAULT_STYLE, max_response_tokens: int | None = None,
                 prefix_tokens: int | str = 0, nll: bool = False,
                 pairs: Mapping[str, Sequence[TeacherPair]] | None = None, batch_size: int = 8) -> None:
        self.model, self.examples, self.layers = model, dict(examples or {}), sorted({int(x) for x in layers})
        self.style, self.max_response_tokens = style, max_response_tokens
        self.prefix_tokens = template_suffix_length(model) if prefix_tokens == "auto" else int(prefix_tokens)
        self.nll, self.batch_size = nll, batch_size
        self.pairs: dict[str, list[TeacherPair]] = {k: list(v) for k, v in (pairs or {}).items()}
        self.source = "distill" if pairs is not None and examples is None else "examples"
        self._records: dict[str, list[TeacherRecord]] = {}

    @classmethod
    def from_distill(cls, model: nn.Module, data: Any, layers: Sequence[int], *,
                     concepts: Mapping[str, Concept] | None = None, **kwargs: Any) -> PSRTeacherData:
        """Teacher data from a :class:`hooksteer.distill.DistillData` (its pairs carry the teacher's top-k,
        so ``loss="distill"`` can train on them)."""
        by_concept: dict[str, list[TeacherPair]] = {}
        for pair in pairs_from_distill(model, data, concepts=concepts):
            by_concept.setdefault(pair.concept_id, []).append(pair)
        return cls(model, None, layers, pairs=by_concept, **kwargs)

    def concept_ids(self) -> list[str]:
        return list(self.pairs) if self.pairs else list(self.examples)

    def steering_prompt(self, concept_id: str) -> str:
        if concept_id in self.examples and self.examples[concept_id]:
            return self.examples[concept_id][0].steering_prompt
        return ""

    def _pairs(self, concept_id: str) -> list[TeacherPair]:
        if concept_id in self.pairs:
            return self.pairs[concept_id]
        examples = list(self.examples.get(concept_id, []))
        if not examples:
            raise ValueError(f"no teacher examples for concept {concept_id!r}: PSR has nothing to learn from")
        return encode_examples(self.model, examples, style=self.style, max_response_tokens=self.max_response_tokens)

    def records(self, concept_id: str) -> list[TeacherRecord]:
        if concept_id not in self._records:
            pairs = self._pairs(concept_id)
            if not pairs:
                raise ValueError(f"no teacher pairs for concept {concept_id!r}: PSR has nothing to learn from")
            self._records[concept_id] = compute_teacher(self.model, pairs, self.layers, batch_size=self.batch_size,
                                                        prefix_tokens=self.prefix_tokens, nll=self.nll)
        return self._records[concept_id]

    def release(self, concept_id: str) -> None:
        """Free the concept's activations (they are recomputed if asked for again)."""
        self._records.pop(concept_id, None)


class PSRSteerer:
    """Generates with a PSR installed; rows of one batch carry different α (a whole sweep per pass).

    ``added_norms[factor]``: per steered layer ``added_rel`` = mean over the steered tokens of ‖α·λ_t·z‖ / ‖h_t‖,
    ``dead_share`` (share of those tokens with λ = 0); ``added_rel_mean`` (mean over layers) and
    ``added_rel_sum`` (sum over layers).
    """

    def __init__(self, model: nn.Module, psr: PSR, alpha_per_factor: float, info: dict[str, Any] | None = None, *,
                 positions: Any = None) -> None:
        psr.check_model(model)
        self.model, self.psr, self.alpha_per_factor = model, psr, float(alpha_per_factor)
        self.positions = positions
        self.info = dict(info or {})
        self._sums: dict[float, dict[int, dict[str, float]]] = {}

    @property
    def added_norms(self) -> dict[float, dict[str, Any]]:
        """Per factor: added norm relative to ‖h‖ and dead-gate share, over everything generated so far."""
        return {factor: summarise_added(per_layer) for factor, per_layer in self._sums.items()}

    def generate(self, prompts: Sequence[str], factors: Sequence[Factor], settings: GenerationSettings,
                 seed: int) -> list[list[str]]:
        from hooksteer.generation import generate_texts

        if any(f is None for f in factors):
            raise ValueError("PSR steering needs numeric factors, got None")
        rows = [(j, i) for j in range(len(factors)) for i in range(len(prompts))]
        outputs: list[list[str]] = [[""] * len(prompts) for _ in factors]
        for k, start in enumerate(range(0, len(rows), settings.batch_size)):
            picked = rows[start : start + settings.batch_size]
            alphas = torch.tensor([float(factors[j]) * self.alpha_per_factor for j, _ in picked])  # type: ignore[arg-type]
            with self.psr.steer(self.model, alphas, positions=self.positions, record=True) as hooks:
                texts = generate_texts(self.model, [prompts[i] for _, i in picked],
                                       max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                                       temperature=settings.temperature, seed=derive_seed(seed, k))
            for (j, i), text in zip(picked, texts, strict=True):
                outputs[j][i] = text
            for layer, (_, hook) in zip(self.psr.layers, hooks, strict=True):
                stats = hook.stats()
                for row, (j, _) in enumerate(picked):
                    cell = self._sums.setdefault(float(factors[j]), {}).setdefault(  # type: ignore[arg-type]
                        layer, {"added": 0.0, "resid": 0.0, "ratio": 0.0, "tokens": 0.0, "dead": 0.0})
                    for key in cell:
                        cell[key] += float(stats[key][row]) if key in stats else 0.0
        return outputs


def summarise_added(sums: Mapping[int, Mapping[str, float]]) -> dict[str, Any]:
    """Per-layer sums over steered tokens of ``ratio`` (Σ_t ‖α·λ_t·z‖ / ‖h_t‖), ``tokens`` and ``dead`` →
    ``added_rel`` (the mean per-token ratio) and ``dead_share`` per layer, their mean (and the sum of
    ``added_rel``) over layers.

    Example:
        >>> summarise_added({3: {"ratio": 0.8, "tokens": 4.0, "dead": 1.0}})["added_rel_mean"]
        0.2
    """
    layers = {layer: {"added_rel": c["ratio"] / c["tokens"] if c["tokens"] > 0 else float("nan"),
                      "dead_share": c["dead"] / c["tokens"] if c["tokens"] > 0 else float("nan")}
              for layer, c in sums.items()}
    rel = [v["added_rel"] for v in layers.values() if math.isfinite(v["added_rel"])]
    dead = [v["dead_share"] for v in layers.values() if math.isfinite(v["dead_share"])]
    return {"layers": layers, "added_rel_mean": sum(rel) / len(rel) if rel else float("nan"),
            "added_rel_sum": sum(rel) if rel else float("nan"),
            "dead_share_mean": sum(dead) / len(dead) if dead else float("nan")}


def fidelity_summary(result: TrainResult, layers: Sequence[int]) -> dict[str, Any]:
    """The scalar diagnostics of a training run for ``info``: error at the top PSR layer and at the last
    measured layer, mean local R², dead gates (max / mean over layers), NLL and KL (train / held-out)."""
    fidelity = result.fidelity or {}
    per_layer = {int(k): v for k, v in (fidelity.get("layers") or {}).items()}
    out: dict[str, Any] = {}
    if per_layer:
        top, last = max(layers), max(per_layer)
        for part in ("train", "held_out"):
            if f"rel_error_{part}" in per_layer.get(top, {}):
                out[f"rel_error_top_{part}"] = per_layer[top][f"rel_error_{part}"]
            if f"rel_error_{part}" in per_layer.get(last, {}):
                out[f"rel_error_last_{part}"] = per_layer[last][f"rel_error_{part}"]
            r2 = [per_layer[x].get(f"local_r2_{part}") for x in layers if x in per_layer]
            r2 = [v for v in r2 if v is not None and math.isfinite(v)]
            if r2:
                out[f"local_r2_mean_{part}"] = sum(r2) / len(r2)
            dead = [per_layer[x].get(f"dead_share_{part}") for x in layers if x in per_layer]
            dead = [v for v in dead if v is not None and math.isfinite(v)]
            if dead:
                out[f"dead_share_mean_{part}"] = sum(dead) / len(dead)
                out[f"dead_share_max_{part}"] = max(dead)
            dead_ex = [per_layer[x].get(f"dead_examples_{part}") for x in layers if x in per_layer]
            dead_ex = [v for v in dead_ex if v is not None and math.isfinite(v)]
            if dead_ex:
                out[f"dead_layers_{part}"] = sum(v > 0 for v in dead_ex)
        out["rel_error_per_layer"] = {str(k): {p: v.get(f"rel_error_{p}") for p in ("train", "held_out")}
                                      for k, v in sorted(per_layer.items())}
        out["dead_share_per_layer"] = {str(k): v.get("dead_share_train") for k, v in sorted(per_layer.items())
                                       if "dead_share_train" in v}
    for key, value in (fidelity.get("nll") or {}).items():
        out[f"nll_{key}" if not key.startswith("kl") else key] = value
    return out


@dataclass
class PSRMethod:
    """Train (or load) one PSR per concept from its teacher data, then steer with it.

    Args:
        data: shared :class:`PSRTeacherData` (its model is the one PSRs train on).
        psr_config: a :class:`PSRConfig` template (``concept_id``/``steering_prompt`` are filled in per concept).
        magnitude: ``"alpha"`` (default) or ``"resid_norm"`` — see the module docstring.
        save_dir: if given, PSRs are saved to ``save_dir/<concept_id>`` and reloaded from there when present.
        name: method name (default ``config.short_name``, e.g. ``a-psr-mse``).
        positions: steer other positions at inference than the config's (e.g. ``"after_sink"``, or
            ``"generated+4"``: the answer's first 5 tokens unsteered).
        diagnose: record the per-layer fidelity, dead gates and NLL while training.
        factors: this method's own α sweep (``None``: the evaluation's ``factors``), e.g. ``(0.5, 1, 2, 4)``
            beside vector methods swept at multiples of their trained norm.
    """

    data: PSRTeacherData = field(repr=False)
    psr_config: PSRConfig = field(default=None)  # type: ignore[assignment]
    magnitude: str = "alpha"
    save_dir: str | Path | None = None
    name: str = ""
    progress: bool = False
    positions: Any = None
    diagnose: bool = True
    factors: Sequence[float] | None = None
    uses_factors: bool = field(default=True, init=False)
    training: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    results: dict[str, TrainResult] = field(default_factory=dict, init=False, repr=False)
    psrs: dict[str, PSR] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.psr_config, PSRConfig):
            raise TypeError("psr_config must be a PSRConfig")
        if isinstance(self.positions, str):
            check_mode(self.positions)
        if self.magnitude not in ("resid_norm", "alpha"):
            raise ValueError(f"magnitude must be 'resid_norm' or 'alpha', got {self.magnitude!r}")
        missing = [layer for layer in self.psr_config.layers if layer not in self.data.layers]
        if missing:
            raise ValueError(f"teacher data has layers {self.data.layers}, this PSR needs {missing} too")
        self.name = self.name or self.psr_config.short_name
        if self.factors is not None:
            self.factors = check_factors(self.factors, positive=True)

    def train(self, concept: Concept) -> PSR:
        """Train (or load) the concept's PSR and record its diagnostics in ``training[concept.id]``.

        With ``save_dir`` the PSR and its diagnostics (``training_info.json``) are saved; a later call (or run)
        loads both instead of training, without recomputing the teacher activations.
        """
        if concept.id in self.psrs:
            return self.psrs[concept.id]
        model = self.data.model
        folder = Path(self.save_dir) / concept.id if self.save_dir is not None else None
        saved = load_saved_psr(folder, model, self.psr_config) if folder is not None else None
        if saved is not None:
            psr, info = saved
            self.training[concept.id] = {**info, "loaded_from": str(folder)}
        else:
            records = self.data.records(concept.id)
            config = dataclasses.replace(self.psr_config, concept_id=concept.id,
                                         steering_prompt=self.data.steering_prompt(concept.id),
                                         model_name=str(getattr(model.cfg, "model_name", "")),
                                         extra=dict(self.psr_config.extra), layers=list(self.psr_config.layers))
            psr, result = train_psr(model, records, config, progress=self.progress, diagnose=self.diagnose)
            self.results[concept.id] = result
            top = psr.layers[-1]
            delta_norm = float(torch.cat([r.delta_norms(top) for r in records]).mean())
            resid_norm = float(torch.cat([r.plain[top][r.n_prefix :].norm(dim=-1) for r in records]).mean())
            self.training[concept.id] = {
                "method": "psr", "variant": psr.config.variant, "loss": psr.config.loss, "layers": psr.layers,
                "init": psr.config.init, "positions": str(self.positions or psr.config.positions),
                "n_teacher_examples": len(records), "mean_delta_norm": delta_norm, "mean_resid_norm": resid_norm,
                "natural_factor": delta_norm / resid_norm if resid_norm > 0 else float("nan"),
                "initial_loss": result.initial.get("loss"), "final_loss": result.final.get("loss"),
                "train_seconds": result.seconds, "n_train": result.n_train, "n_held_out": result.n_held_out,
                "best_step": result.best_step, "stopped_early": result.stopped_early,
                "regulariser": result.regulariser, **fidelity_summary(result, psr.layers)}
            if folder is not None:
                save_psr_with_info(psr, folder, self.training[concept.id])
        psr.eval()
        psr.requires_grad_(False)
        self.psrs[concept.id] = psr
        return psr

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> PSRSteerer:
        if int(model.cfg.d_model) != int(self.data.model.cfg.d_model):
            raise ValueError("PSRTeacherData was built for another base model than the one evaluated")
        psr = self.train(concept)
        info = dict(self.training[concept.id])
        if self.magnitude == "resid_norm":
            natural = info["natural_factor"]
            if not natural > 0:
                raise ValueError(f"teacher Δ of concept {concept.id!r} is zero: cannot scale factors by it")
            alpha_per_factor = 1.0 / natural
        else:
            alpha_per_factor = 1.0
        info["alpha_per_factor"] = alpha_per_factor
        return PSRSteerer(model, psr, alpha_per_factor, {k: v for k, v in info.items() if not isinstance(v, dict)},
                          positions=self.positions)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__, "magnitude": self.magnitude,
                "teacher_layers": self.data.layers, "teacher_source": self.data.source, "style": self.data.style,
                "max_response_tokens": self.data.max_response_tokens, "prefix_tokens": self.data.prefix_tokens,
                "positions_at_inference": str(self.positions) if self.positions is not None else None,
                **({} if self.factors is None else {"factors": self.factors}),
                **{k: v for k, v in self.psr_config.to_dict().items() if k not in ("concept_id", "steering_prompt")}}
