"""PSR as a :class:`~hooksteer.evaluate.methods.SteeringMethod` for :func:`hooksteer.evaluate.protocol.evaluate`.

For each concept, :class:`PSRMethod` takes that concept's teacher examples (prompt-steered responses,
e.g. from :func:`hooksteer.data.teacher.generate_teacher_targets` on *training* base prompts), computes
the teacher Δ (shared between PSR methods through one :class:`PSRTeacherData`), trains a PSR (or loads
one from ``save_dir``), and returns a :class:`PSRSteerer` that sweeps the protocol's factors.

What a factor means (``magnitude``):

* ``"resid_norm"`` (default): α = factor / f₀ with f₀ = mean‖Δ_t‖ / mean‖h_t‖ over the teacher's response
  tokens at the PSR's (last) layer. So at factor f a PSR that reproduces the teacher adds on average
  ``f ×`` a typical residual norm — the meaning a factor has for DiffMean and HyperSteer — and factor f₀
  is the trained PSR as is (α = 1). f₀ is recorded as ``natural_factor`` in each concept's ``info``.
* ``"alpha"``: α = factor.

Example:
    >>> data = PSRTeacherData(model, examples_by_concept, layers=range(0, 21))            # doctest: +SKIP
    >>> methods = [PSRMethod(data, PSRConfig(layers=[20], d_model=576)), PromptSteering()]  # doctest: +SKIP
    >>> evaluate(model, methods, held_out, eval_prompts, judge=judge, factors=[0.1, 0.2])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hooksteer.data.schema import Concept, SteeringExample
from hooksteer.data.teacher import DEFAULT_STYLE
from hooksteer.evaluate.methods import Factor, GenerationSettings, derive_seed
from hooksteer.psr.model import CONFIG_FILE, PSR, PSRConfig
from hooksteer.psr.teacher import TeacherRecord, compute_teacher, encode_examples
from hooksteer.psr.trainer import fit_metrics, train_psr

__all__ = ["PSRTeacherData", "PSRMethod", "PSRSteerer"]


class PSRTeacherData:
    """Teacher examples per concept and their Δ records, computed once and shared by several PSR methods.

    Args:
        model: the frozen base model.
        examples: ``{concept_id: [SteeringExample, ...]}`` (targets = prompt-steered responses).
        layers: every layer any PSR method will need (records hold ``plain``/``delta`` for all of them).
        style: how the instruction is placed in ``x'`` (same as the teacher targets and prompt baseline).
        max_response_tokens: truncate responses (cost control).
    """

    def __init__(self, model: nn.Module, examples: Mapping[str, Sequence[SteeringExample]], layers: Sequence[int],
                 *, style: str = DEFAULT_STYLE, max_response_tokens: int | None = None) -> None:
        self.model, self.examples, self.layers = model, dict(examples), sorted({int(x) for x in layers})
        self.style, self.max_response_tokens = style, max_response_tokens
        self._records: dict[str, list[TeacherRecord]] = {}

    def records(self, concept_id: str) -> list[TeacherRecord]:
        if concept_id not in self._records:
            examples = list(self.examples.get(concept_id, []))
            if not examples:
                raise ValueError(f"no teacher examples for concept {concept_id!r}: PSR has nothing to learn from")
            pairs = encode_examples(self.model, examples, style=self.style,
                                    max_response_tokens=self.max_response_tokens)
            self._records[concept_id] = compute_teacher(self.model, pairs, self.layers)
        return self._records[concept_id]


class PSRSteerer:
    """Generates with a PSR installed; rows of one batch carry different α (a whole sweep per pass)."""

    def __init__(self, model: nn.Module, psr: PSR, alpha_per_factor: float, info: dict[str, Any] | None = None) -> None:
        psr.check_model(model)
        self.model, self.psr, self.alpha_per_factor = model, psr, float(alpha_per_factor)
        self.info = dict(info or {})

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
            with self.psr.steer(self.model, alphas):
                texts = generate_texts(self.model, [prompts[i] for _, i in picked],
                                       max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                                       temperature=settings.temperature, seed=derive_seed(seed, k))
            for (j, i), text in zip(picked, texts, strict=True):
                outputs[j][i] = text
        return outputs


@dataclass
class PSRMethod:
    """Train (or load) one PSR per concept from its teacher data, then steer with it.

    Args:
        data: shared :class:`PSRTeacherData`.
        psr_config: a :class:`PSRConfig` template (``concept_id``/``steering_prompt`` are filled in per concept).
        magnitude: ``"resid_norm"`` (default) or ``"alpha"`` — see the module docstring.
        save_dir: if given, PSRs are saved to ``save_dir/<concept_id>`` and reloaded from there when present.
        name: method name (default ``config.short_name``, e.g. ``a-psr-mse``).
    """

    data: PSRTeacherData = field(repr=False)
    psr_config: PSRConfig = field(default=None)  # type: ignore[assignment]
    magnitude: str = "resid_norm"
    save_dir: str | Path | None = None
    name: str = ""
    progress: bool = False
    uses_factors: bool = field(default=True, init=False)
    training: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    psrs: dict[str, PSR] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.psr_config, PSRConfig):
            raise TypeError("psr_config must be a PSRConfig")
        if self.magnitude not in ("resid_norm", "alpha"):
            raise ValueError(f"magnitude must be 'resid_norm' or 'alpha', got {self.magnitude!r}")
        missing = [layer for layer in self.psr_config.layers if layer not in self.data.layers]
        if missing:
            raise ValueError(f"teacher data has layers {self.data.layers}, this PSR needs {missing} too")
        self.name = self.name or self.psr_config.short_name

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> PSRSteerer:
        if model is not self.data.model:
            raise ValueError("PSRTeacherData was built for another base model than the one evaluated")
        records = self.data.records(concept.id)
        folder = Path(self.save_dir) / concept.id if self.save_dir is not None else None
        if folder is not None and (folder / CONFIG_FILE).is_file():
            psr = PSR.load(folder, model)
            summary: dict[str, Any] = {"loaded_from": str(folder)}
        else:
            config = dataclasses.replace(self.psr_config, concept_id=concept.id,
                                         steering_prompt=self.data.examples[concept.id][0].steering_prompt,
                                         model_name=str(getattr(model.cfg, "model_name", "")),
                                         extra=dict(self.psr_config.extra))
            psr, result = train_psr(model, records, config, progress=self.progress)
            summary = {"initial_loss": result.initial.get("loss"), "final_loss": result.final.get("loss"),
                       "train_seconds": result.seconds}
            if folder is not None:
                psr.save(folder)
        psr.eval()
        psr.requires_grad_(False)
        top = psr.layers[-1]
        delta_norm = float(torch.cat([r.delta[top].norm(dim=-1) for r in records]).mean())
        resid_norm = float(torch.cat([r.plain[top].norm(dim=-1) for r in records]).mean())
        natural = delta_norm / resid_norm if resid_norm > 0 else float("nan")
        if self.magnitude == "resid_norm":
            if not natural > 0:
                raise ValueError(f"teacher Δ of concept {concept.id!r} is zero: cannot scale factors by it")
            alpha_per_factor = 1.0 / natural
        else:
            alpha_per_factor = 1.0
        fit = fit_metrics(psr, records, model=model)
        info = {"method": "psr", "variant": psr.config.variant, "loss": psr.config.loss, "layers": psr.layers,
                "n_teacher_examples": len(records), "natural_factor": natural, "mean_delta_norm": delta_norm,
                "alpha_per_factor": alpha_per_factor, **summary, **{f"fit_{k}": v for k, v in fit.items()}}
        self.training[concept.id] = info
        self.psrs[concept.id] = psr
        steerer = PSRSteerer(model, psr, alpha_per_factor, info)
        steerer.psr = psr
        return steerer

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__, "magnitude": self.magnitude,
                "teacher_layers": self.data.layers, "style": self.data.style,
                "max_response_tokens": self.data.max_response_tokens,
                **{k: v for k, v in self.psr_config.to_dict().items() if k not in ("concept_id", "steering_prompt")}}
