"""The :class:`SteeringHook` base: ``hook(activation, hook) -> activation + c_t · v`` at chosen positions."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from hooksteer.hooks.checks import _no_token_axis, _no_token_axis_message
from hooksteer.hooks.positions import _position_mask, _validate_positions
from hooksteer.hooks.tracker import PositionTracker
from hooksteer.hooks.types import Direction, PositionSpec
from hooksteer.vectors import SteeringVector, check_finite


def _direction_tensor(direction: Direction) -> Tensor:
    tensor = direction.vector if isinstance(direction, SteeringVector) else direction
    if not isinstance(tensor, Tensor):
        raise TypeError(f"direction must be a SteeringVector or a tensor, got {type(tensor).__name__}")
    if tensor.ndim not in (1, 2) or not tensor.is_floating_point():
        raise ValueError(
            f"direction must be a float tensor of shape (d_model,) or (batch, d_model), got "
            f"{tuple(tensor.shape)} {tensor.dtype}"
        )
    check_finite(tensor, "steering direction")
    return tensor


def _trailing_ones(tensor: Tensor, ndim: int) -> Tensor:
    """``tensor`` with singleton axes appended up to ``ndim`` axes (to broadcast over heads / features)."""
    return tensor.reshape(*tensor.shape, *([1] * (ndim - tensor.ndim)))


class SteeringHook:
    """Base of the hook objects: ``hook(activation, hook) -> activation + c_t · v``.

    Subclasses define :meth:`coefficients`, the per-token coefficient for the current pass.

    The token axis is axis 1 of every activation with one: ``(batch, pos, d)`` residual / MLP sites and
    ``(batch, pos, head, d_head)`` attention sites (``hook_q/k/v/z``), where ``v`` is added to every head.
    Position-dependent steering (``positions``, per-token coefficients, gates) at a site without a
    token axis (``hook_pattern`` / ``hook_attn_scores``, ``(batch, head, query_pos, key_pos)``) raises
    ``ValueError``; it is never applied to the wrong axis.
    """

    def __init__(self, direction: Direction, *, positions: PositionSpec = "all",
                 tracker: PositionTracker | None = None) -> None:
        self.direction = _direction_tensor(direction)
        self.positions = _validate_positions(positions)
        self.tracker = tracker
        self._reached: Tensor | None = None  # which explicit positions some forward pass has reached
        if self.needs_tracker and tracker is None:
            raise ValueError(
                f"{type(self).__name__} with positions={positions!r} needs a PositionTracker, because "
                "KV-cached generate feeds one token per forward pass; create one with "
                "`hooksteer.hooks.track_positions(model)` (or use `hooksteer.steer`, which does it for you)"
            )

    @property
    def needs_tracker(self) -> bool:
        return not (isinstance(self.positions, str) and self.positions == "all")

    @property
    def per_token(self) -> bool:
        """Whether the added amount differs between tokens (so the site needs a token axis)."""
        return self.needs_tracker

    def coefficients(self, activation: Tensor, absolute: Tensor | None) -> Tensor | float:
        raise NotImplementedError

    def __call__(self, activation: Float[Tensor, "batch pos d_model"], hook: Any = None) -> Tensor:
        name = getattr(hook, "name", None) or "this hook point"
        direction = self.direction.to(device=activation.device, dtype=activation.dtype)
        if activation.shape[-1] != direction.shape[-1]:
            raise ValueError(
                f"steering vector has width {direction.shape[-1]} but {name} has width {activation.shape[-1]}"
            )
        if direction.ndim == 2:
            if direction.shape[0] != activation.shape[0]:
                raise ValueError(
                    f"per-row directions have batch {direction.shape[0]} but the activation has batch "
                    f"{activation.shape[0]}"
                )
            direction = direction.reshape(direction.shape[0], *([1] * (activation.ndim - 2)), direction.shape[1])
        if not self.per_token:
            return activation + self.coefficients(activation, None) * direction
        absolute = self._absolute_positions(activation, name)
        coefficient = self.coefficients(activation, absolute)
        if isinstance(coefficient, Tensor):
            coefficient = _trailing_ones(coefficient.to(activation.dtype), activation.ndim)
        steered = activation + coefficient * direction
        mask = _position_mask(self.positions, absolute, self.tracker) if absolute is not None else None
        if mask is None:
            return steered
        return torch.where(_trailing_ones(mask, activation.ndim), steered, activation)

    def _absolute_positions(self, activation: Tensor, name: str) -> Tensor | None:
        if _no_token_axis(name) or activation.ndim < 3:
            raise ValueError(_no_token_axis_message(name, tuple(activation.shape)))
        if not self.needs_tracker:
            return None
        assert self.tracker is not None  # checked in __init__
        known = self.tracker.absolute
        if known is not None and tuple(activation.shape[:2]) != tuple(known.shape):
            raise ValueError(
                f"{name} has shape {tuple(activation.shape)} but the tokens of this forward pass are "
                f"(batch, pos) = {tuple(known.shape)}: its axis 1 is not the token axis, so positions / "
                "per-token coefficients cannot be honoured there; steer it with positions='all'"
            )
        absolute = self.tracker.positions(activation.shape[1], activation.device)
        if isinstance(self.positions, Tensor):
            reached = torch.isin(self.positions.to(absolute.device), absolute)
            self._reached = reached if self._reached is None else self._reached | reached
        return absolute

    def unreached_positions(self) -> list[int]:
        """Explicit positions no forward pass has reached so far (empty before the first pass)."""
        if not isinstance(self.positions, Tensor) or self._reached is None:
            return []
        return self.positions[~self._reached.cpu()].tolist()
