"""Constant-vector steering for the protocol: :class:`VectorSteerer` adds ``factor · magnitude · direction``.

The direction is one unit vector, or a callable giving one per base prompt (HyperSteer); a whole factor
sweep runs batched, each row of a batch carrying its own factor through a per-row direction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooksteer.evaluate.methods.common import Factor, GenerationSettings, _chunks, _generate, derive_seed
from hooksteer.hooks import PositionSpec, PositionTracker, add_vector, apply_steering_hooks, check_hook_name
from hooksteer.vectors import check_finite

DirectionSource = Union[Float[Tensor, " d_model"], Callable[[Sequence[str]], Float[Tensor, "n d_model"]]]


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
            batch_directions = self._scaled(directions[[i for _, i in picked]], scale)
            texts = self._generate_rows([prompts[i] for _, i in picked], batch_directions, settings,
                                        derive_seed(seed, k))
            for (j, i), text in zip(picked, texts, strict=True):
                outputs[j][i] = text
        return outputs

    def _scaled(self, directions: Tensor, scale: Float[Tensor, " n"]) -> Tensor:
        """Each row's direction times its ``factor · magnitude``."""
        return directions * scale.view(-1, *([1] * (directions.ndim - 1)))

    def _generate_rows(self, prompts: list[str], directions: Tensor, settings: GenerationSettings,
                       seed: int) -> list[str]:
        tracker = PositionTracker()
        hook = add_vector(directions, 1.0, positions=self.positions, tracker=tracker)
        with apply_steering_hooks(self.model, [(self.hook_name, hook)], tracker):
            return _generate(self.model, prompts, settings, seed)
