"""Joint strength search: the :class:`~hooksteer.psr.search.AlphaSearch` es of several methods in shared batches.

Each stage of the search (grid, bisection, report) runs for *every* registered method of a concept in the
same generation batches: every row carries its own PSR gate ``(w, b)``, direction ``z``, strength and
positions at each layer (:class:`MultiRowHook`; a constant vector is a row with w = 0, b = 1). Rows are those
the separate searches would generate, so the outputs agree with searching each method alone (up to
floating-point differences between batch shapes), in a few batches of ``batch_size`` rows instead of many
small ones.

Example:
    >>> joint = JointSearch(GenerationSettings(max_new_tokens=32, batch_size=32))                # doctest: +SKIP
    >>> methods = [AlphaSearch(m, judge, prompts, grid, settings, joint=joint) for m in wrapped]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooksteer.data.schema import Concept
from hooksteer.evaluate.methods import GenerationSettings, derive_seed
from hooksteer.hooks import PositionTracker, SteeringHook
from hooksteer.psr.search import AlphaSearch, Request, SearchedSteerer, _search

__all__ = ["JointSearch", "MultiRowHook", "RowSpec", "row_spec"]


@dataclass
class RowSpec:
    """One method's steering in per-row form: at each layer ``(w, b, z)`` adds ``scale·α·ReLU(w·h + b)·z``
    (a constant vector: w = 0, b = 1) at the positions of ``mode``."""

    layers: dict[int, tuple[Tensor, float, Tensor]]
    mode: Any = "response"
    template_tokens: int = 0
    sink_tokens: int = 1
    scale: float = 1.0
    constant: bool = False


def row_spec(steerer: Any) -> RowSpec | None:
    """The :class:`RowSpec` of a PSR or constant-vector steerer, or ``None`` when it cannot join a batch."""
    from hooksteer.evaluate.methods import VectorSteerer
    from hooksteer.psr.evaluation import PSRSteerer

    if isinstance(steerer, PSRSteerer):
        psr = steerer.psr
        layers = {layer: (psr.gate(layer).weight.detach().float().cpu(), float(psr.gate(layer).bias),
                          psr.direction(layer).detach().float().cpu()) for layer in psr.layers}
        mode = steerer.positions if steerer.positions is not None else psr.config.positions
        return RowSpec(layers, mode, psr.config.template_tokens or 0, psr.config.sink_tokens, steerer.alpha_per_factor)
    if isinstance(steerer, VectorSteerer) and isinstance(steerer.direction, Tensor):
        parts = steerer.hook_name.split(".")
        if len(parts) != 3 or parts[0] != "blocks" or parts[2] != "hook_resid_post":
            return None
        d = steerer.direction.shape[-1]
        z = steerer.direction.detach().float().cpu() * steerer.magnitude
        return RowSpec({int(parts[1]): (torch.zeros(d), 1.0, z)}, steerer.positions, scale=1.0, constant=True)
    return None


class MultiRowHook(SteeringHook):
    """Per-row ``α_r·ReLU(w_r·h + b_r)·z_r`` at each row's own positions (one layer of a joint batch)."""

    def __init__(self, weight: Float[Tensor, "batch d_model"], bias: Float[Tensor, " batch"],
                 z: Float[Tensor, "batch d_model"], alpha: Float[Tensor, " batch"], specs: Sequence[RowSpec],
                 tracker: PositionTracker) -> None:
        super().__init__(z, positions="all", tracker=tracker)
        self.weight, self.bias, self.alpha, self.specs = weight, bias, alpha, list(specs)
        self.sums: dict[str, Tensor] = {}

    @property
    def needs_tracker(self) -> bool:
        return True

    def coefficients(self, activation: Tensor, absolute: Tensor | None) -> Tensor:
        from hooksteer.psr.model import steer_mask

        assert absolute is not None and self.tracker is not None
        w = self.weight.to(activation.device, activation.dtype)
        lam = torch.relu(torch.einsum("bpd,bd->bp", activation, w) + self.bias.to(activation)[:, None])
        masks: dict[Any, Tensor] = {}
        rows = []
        for row, spec in enumerate(self.specs):
            key = (spec.mode if isinstance(spec.mode, str) else tuple(torch.as_tensor(spec.mode).tolist()),
                   spec.template_tokens, spec.sink_tokens)
            if key not in masks:
                masks[key] = steer_mask(spec.mode, absolute, self.tracker.prompt_lengths,
                                        template_tokens=spec.template_tokens, sink_tokens=spec.sink_tokens)
            rows.append(masks[key][row])
        mask = torch.stack(rows).to(lam.dtype)
        values = self.alpha.to(activation)[:, None] * lam * mask
        with torch.no_grad():
            added = values.abs().float() * self.direction.float().norm(dim=-1).to(values.device)[:, None]
            resid = activation.float().norm(dim=-1)
            parts = {"added": added, "resid": resid * mask, "ratio": added / resid.clamp_min(1e-6),
                     "tokens": mask.float(), "dead": (lam == 0).float() * mask}
            for key, value in parts.items():
                total = value.sum(dim=-1).cpu()
                self.sums[key] = total if key not in self.sums else self.sums[key] + total
        return values


class JointSearch:
    """Runs the :class:`AlphaSearch` es registered with it in shared generation batches (see module docstring).

    Args:
        model: the generating model (the one ``evaluate`` gets).
        settings: generation settings (``batch_size`` rows per generate call).
    """

    def __init__(self, settings: GenerationSettings, seed: int = 0) -> None:
        self.settings, self.seed = settings, seed
        self.searches: list[AlphaSearch] = []
        self._done: dict[str, dict[str, SearchedSteerer]] = {}
        self.batches = 0

    def register(self, search: AlphaSearch) -> None:
        if any(s.name == search.name for s in self.searches):
            raise ValueError(f"two searches named {search.name!r}")
        self.searches.append(search)

    def steerer(self, search: AlphaSearch, model: nn.Module, concept: Concept,
                others: Sequence[Concept]) -> SearchedSteerer:
        if concept.id not in self._done:  # ``evaluate`` goes method by method: keep every concept's results
            self._done[concept.id] = self._run(model, concept, others)
        return self._done[concept.id][search.name]

    def _run(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> dict[str, SearchedSteerer]:
        from hooksteer.psr.evaluation import summarise_added

        bases = {s.name: s.method.prepare(model, concept, others) for s in self.searches}
        specs = {name: row_spec(base) for name, base in bases.items()}
        selection, report = self.searches[0].split(concept)
        for s in self.searches[1:]:
            if [p.id for p in s.split(concept)[0]] != [p.id for p in selection]:
                raise ValueError("searches joined in one JointSearch must share prompts and seed")
        stats: dict[str, dict[float, dict[str, Any]]] = {name: {} for name in bases}
        seed = derive_seed(self.seed, "joint-search", concept.id)

        def generate(requests: Sequence[Request]) -> dict[tuple[str, float, str], str]:
            out: dict[tuple[str, float, str], str] = {}
            rows = [(name, alpha, p.text) for name, alpha, prompts in requests if specs[name] is not None
                    for p in prompts]
            for alone in [r for r in requests if specs[r[0]] is None]:
                name, alpha, prompts = alone
                texts = bases[name].generate([p.text for p in prompts], [alpha], self.settings, seed)[0]
                out.update({(name, alpha, p.text): t for p, t in zip(prompts, texts, strict=True)})
                stats[name].update(getattr(bases[name], "added_norms", {}))
            for k in range(0, len(rows), self.settings.batch_size):
                chunk = rows[k : k + self.settings.batch_size]
                texts, sums = self._generate_rows(model, [(specs[n], a, t) for n, a, t in chunk],  # type: ignore[misc]
                                                  derive_seed(seed, self.batches))
                self.batches += 1
                for row, ((name, alpha, text), output) in enumerate(zip(chunk, texts, strict=True)):
                    out[(name, alpha, text)] = output
                    cell = stats[name].setdefault(alpha, {"_sums": {}})
                    for layer, layer_sums in sums.items():
                        if layer not in specs[name].layers:  # type: ignore[union-attr]
                            continue
                        acc = cell["_sums"].setdefault(layer, {"added": 0.0, "resid": 0.0, "ratio": 0.0, "tokens": 0.0,
                                                               "dead": 0.0})
                        for key in acc:
                            acc[key] += float(layer_sums[key][row])
            for per_alpha in stats.values():
                for cell in per_alpha.values():
                    if "_sums" in cell:
                        cell.update(summarise_added(cell["_sums"]))
            return out

        return _search(self.searches, concept, selection, report, generate, lambda name: stats[name], bases)

    def _generate_rows(self, model: nn.Module, rows: Sequence[tuple[RowSpec, float, str]], seed: int
                       ) -> tuple[list[str], dict[int, dict[str, Tensor]]]:
        from hooksteer.generation import generate_texts
        from hooksteer.hooks import apply_steering_hooks

        layers = sorted({layer for spec, _, _ in rows for layer in spec.layers})
        d = int(model.cfg.d_model)
        tracker = PositionTracker()
        hooks = []
        alpha = torch.tensor([spec.scale * float(a) for spec, a, _ in rows])
        for layer in layers:
            weight, bias, z = torch.zeros(len(rows), d), torch.zeros(len(rows)), torch.zeros(len(rows), d)
            for row, (spec, _, _) in enumerate(rows):
                if layer in spec.layers:
                    weight[row], bias[row], z[row] = spec.layers[layer][0], spec.layers[layer][1], spec.layers[layer][2]
            hooks.append((f"blocks.{layer}.hook_resid_post",
                          MultiRowHook(weight, bias, z, alpha, [spec for spec, _, _ in rows], tracker)))
        with apply_steering_hooks(model, hooks, tracker):
            texts = generate_texts(model, [text for _, _, text in rows], max_new_tokens=self.settings.max_new_tokens,
                                   do_sample=self.settings.do_sample, temperature=self.settings.temperature, seed=seed)
        return texts, {layer: hook.sums for layer, (_, hook) in zip(layers, hooks, strict=True)}

