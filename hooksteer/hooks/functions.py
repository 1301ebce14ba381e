"""The hook functions: :func:`add_vector`, :func:`add_per_token`, :func:`add_gated` and their hook objects."""

from __future__ import annotations

import torch
from torch import Tensor

from hooksteer.hooks.checks import finite_scalar
from hooksteer.hooks.steering_hook import SteeringHook
from hooksteer.hooks.tracker import PositionTracker
from hooksteer.hooks.types import CoefficientFn, Direction, GateFn, PositionSpec
from hooksteer.vectors import check_finite


class AddVector(SteeringHook):
    """Add ``coefficient · v`` at the chosen positions (see :func:`add_vector`)."""

    def __init__(self, direction: Direction, coefficient: float = 1.0, *, positions: PositionSpec = "all",
                 tracker: PositionTracker | None = None) -> None:
        super().__init__(direction, positions=positions, tracker=tracker)
        self.coefficient = finite_scalar(coefficient, "coefficient")

    def coefficients(self, activation: Tensor, absolute: Tensor | None) -> float:
        return self.coefficient


class AddPerToken(SteeringHook):
    """Add ``c_t · v`` where ``c_t`` depends on the absolute position ``t`` (see :func:`add_per_token`)."""

    def __init__(self, direction: Direction, coefficients: Tensor | CoefficientFn, *,
                 tracker: PositionTracker, positions: PositionSpec = "all",
                 fill_value: float | None = None) -> None:
        super().__init__(direction, positions=positions, tracker=tracker)
        if tracker is None:
            raise ValueError("add_per_token needs a PositionTracker (see hooksteer.hooks.track_positions)")
        if isinstance(coefficients, Tensor):
            if coefficients.ndim not in (1, 2) or coefficients.shape[-1] == 0:
                raise ValueError(
                    f"coefficients must have shape (n_positions,) or (batch, n_positions), got {tuple(coefficients.shape)}"
                )
            check_finite(coefficients, "per-token coefficients")
        elif not callable(coefficients):
            raise TypeError("coefficients must be a tensor indexed by absolute position or a callable of positions")
        self.coefficient_source = coefficients
        self.fill_value = fill_value

    @property
    def needs_tracker(self) -> bool:
        return True

    def coefficients(self, activation: Tensor, absolute: Tensor | None) -> Tensor:
        assert absolute is not None
        source = self.coefficient_source
        if callable(source) and not isinstance(source, Tensor):
            values = torch.as_tensor(source(absolute), device=activation.device)
            check_finite(values, "per-token coefficients returned by the callable")
            try:
                return torch.broadcast_to(values, absolute.shape)
            except RuntimeError:
                raise ValueError(
                    f"coefficient function returned shape {tuple(values.shape)} for positions of shape "
                    f"{tuple(absolute.shape)} (batch, pos)"
                ) from None
        n_known = source.shape[-1]
        real = absolute >= 0
        inside = absolute < n_known
        if not bool((inside | ~real).all()) and self.fill_value is None:
            raise IndexError(
                f"per-token coefficients cover absolute positions 0..{n_known - 1} but position "
                f"{int(absolute.max())} was reached; pass fill_value=0.0 to steer no further, or more coefficients"
            )
        source = source.to(activation.device)
        index = absolute.clamp(min=0, max=n_known - 1)
        if source.ndim == 2:
            if source.shape[0] != absolute.shape[0]:
                raise ValueError(
                    f"per-row coefficients have batch {source.shape[0]} but the activation has batch {absolute.shape[0]}"
                )
            gathered = source.gather(1, index)
        else:
            gathered = source[index]
        fill = torch.tensor(self.fill_value if self.fill_value is not None else 0.0, device=activation.device)
        gathered = torch.where(inside, gathered, fill.to(gathered.dtype))
        return torch.where(real, gathered, torch.zeros_like(gathered))


class AddGated(SteeringHook):
    """Add ``coefficient · g(h_t) · v`` with a gate read from the activation (see :func:`add_gated`)."""

    def __init__(self, direction: Direction, gate: GateFn, coefficient: float = 1.0, *,
                 positions: PositionSpec = "all", tracker: PositionTracker | None = None) -> None:
        super().__init__(direction, positions=positions, tracker=tracker)
        if not callable(gate):
            raise TypeError("gate must be callable: activation (batch, pos, d_model) -> (batch, pos)")
        self.gate = gate
        self.coefficient = finite_scalar(coefficient, "coefficient")
        self.last_gate: Tensor | None = None

    @property
    def per_token(self) -> bool:
        return True

    def coefficients(self, activation: Tensor, absolute: Tensor | None) -> Tensor:
        values = self.gate(activation)
        if values.shape != activation.shape[:-1]:
            raise ValueError(
                f"gate returned shape {tuple(values.shape)}, expected {tuple(activation.shape[:-1])}"
            )
        check_finite(values, "gate values")
        self.last_gate = values.detach()
        return self.coefficient * values


def add_vector(direction: Direction, coefficient: float = 1.0, *, positions: PositionSpec = "all",
               tracker: PositionTracker | None = None) -> AddVector:
    """Hook that adds ``coefficient · v`` at ``positions`` (absolute indices, 'prompt', 'generated', 'all').

    Example:
        >>> with model.hooks(fwd_hooks=[("blocks.2.hook_resid_post", add_vector(v, 4.0))]):  # doctest: +SKIP
        ...     logits = model("Hello")
    """
    return AddVector(direction, coefficient, positions=positions, tracker=tracker)


def add_per_token(direction: Direction, coefficients: Tensor | CoefficientFn, *, tracker: PositionTracker,
                  positions: PositionSpec = "all", fill_value: float | None = None) -> AddPerToken:
    """Hook that adds ``c_t · v`` with ``c_t = coefficients[t]`` (or ``coefficients(t)``) at absolute position t.

    ``coefficients`` is a tensor of shape ``(n,)`` / ``(batch, n)`` indexed by absolute position, or a
    callable mapping a LongTensor of absolute positions, shape ``(batch, pos)``, to coefficients of the
    same (or a broadcastable) shape. Positions past ``n`` raise unless ``fill_value`` is given.
    Left-padding tokens (position -1) always get coefficient 0 from a tensor.

    Example:
        >>> with track_positions(model) as tracker:                                 # doctest: +SKIP
        ...     hook = add_per_token(v, torch.linspace(0, 1, 20), tracker=tracker)
    """
    return AddPerToken(direction, coefficients, tracker=tracker, positions=positions, fill_value=fill_value)


def add_gated(direction: Direction, gate: GateFn, coefficient: float = 1.0, *,
              positions: PositionSpec = "all", tracker: PositionTracker | None = None) -> AddGated:
    """Hook that adds ``coefficient · gate(h)_t · v``: a coefficient read from each token's own activation.

    Example:
        >>> hook = add_gated(v, ReluGate(w, bias=0.1), coefficient=2.0)             # doctest: +SKIP
    """
    return AddGated(direction, gate, coefficient, positions=positions, tracker=tracker)
