"""The :func:`steer` context manager: steering hooks built from vectors, installed for the ``with`` block."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from hooksteer.hooks.apply import SteeringHandle, apply_steering_hooks
from hooksteer.hooks.checks import _check_vector_fits, finite_scalar
from hooksteer.hooks.functions import AddGated, AddPerToken, AddVector
from hooksteer.hooks.steering_hook import SteeringHook
from hooksteer.hooks.tracker import PositionTracker
from hooksteer.hooks.types import CoefficientFn, GateFn, PositionSpec
from hooksteer.vectors import SteeringSet, SteeringVector, as_vector_list


def build_steering_hooks(
    model: nn.Module, vectors: Sequence[SteeringVector | SteeringSet], *, tracker: PositionTracker,
    coefficient: float = 1.0, positions: PositionSpec = "all", per_token: Tensor | CoefficientFn | None = None,
    gate: GateFn | None = None, fill_value: float | None = None,
) -> list[tuple[str, SteeringHook]]:
    """One hook per hook point: vectors sharing a site are summed ("combined"), sites act together."""
    flat = as_vector_list(vectors)
    if not flat:
        raise ValueError("steer() needs at least one SteeringVector or SteeringSet")
    coefficient = finite_scalar(coefficient, "coefficient")
    if per_token is not None and gate is not None:
        raise ValueError("pass either per_token or gate, not both")
    for vector in flat:
        _check_vector_fits(model, vector)
    hooks: list[tuple[str, SteeringHook]] = []
    for hook_name, summed in SteeringSet(flat).by_hook().items():
        if per_token is not None:
            per_site_coefficients = coefficient * per_token if isinstance(per_token, Tensor) else (
                lambda absolute, fn=per_token: coefficient * torch.as_tensor(fn(absolute)))
            hook: SteeringHook = AddPerToken(summed, per_site_coefficients, tracker=tracker, positions=positions,
                                             fill_value=fill_value)
        elif gate is not None:
            hook = AddGated(summed, gate, coefficient, positions=positions, tracker=tracker)
        else:
            hook = AddVector(summed, coefficient, positions=positions, tracker=tracker)
        hooks.append((hook_name, hook))
    return hooks


@contextmanager
def steer(
    model: nn.Module, *vectors: SteeringVector | SteeringSet, coefficient: float = 1.0,
    positions: PositionSpec = "all", per_token: Tensor | CoefficientFn | None = None,
    gate: GateFn | None = None, fill_value: float | None = None,
) -> Iterator[SteeringHandle]:
    """Steer ``model`` with one or more vectors while the ``with`` block runs.

    Vectors at the same hook point are summed ("combined"); vectors at different hook points
    act together ("simultaneous"). Hooks are removed on exit, also when the block raises.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        *vectors: :class:`SteeringVector` / :class:`SteeringSet` objects (scale them to set strength).
        coefficient: extra scalar applied to every vector.
        positions: ``"all"``, ``"prompt"``, ``"generated"``, ``"answer"`` (the prompt's last token and every generated
            token: each position that predicts an answer token) or explicit absolute token indices.
        per_token: coefficients by absolute position (tensor or callable), multiplied by ``coefficient``.
        gate: callable reading each token's activation and returning its coefficient (e.g. :class:`ReluGate`).
        fill_value: coefficient for positions past the end of a ``per_token`` tensor (default: raise).

    Example:
        >>> with steer(model, love * 4.0, positions="generated"):          # doctest: +SKIP
        ...     print(model.generate("Tell me about your day.", max_new_tokens=40))
    """
    tracker = PositionTracker()
    fwd_hooks = build_steering_hooks(model, vectors, tracker=tracker, coefficient=coefficient,
                                     positions=positions, per_token=per_token, gate=gate, fill_value=fill_value)
    with apply_steering_hooks(model, fwd_hooks, tracker) as handle:
        yield handle
