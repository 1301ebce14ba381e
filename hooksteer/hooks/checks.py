"""Checks made before steering: finite coefficients, hook names, vector widths, sites without a token axis."""

from __future__ import annotations

import difflib
import math
from typing import Any

from torch import nn

from hooksteer.vectors import SteeringVector

# Hook points whose activation has no (batch, pos, ...) token axis: (batch, head, query_pos, key_pos).
_NO_TOKEN_AXIS = ("hook_pattern", "hook_attn_scores")


def finite_scalar(value: Any, what: str) -> float:
    """``float(value)``, refusing NaN and infinities (which would corrupt every steered activation)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {number}")
    return number


def _no_token_axis(hook_name: str) -> bool:
    return hook_name.rsplit(".", 1)[-1] in _NO_TOKEN_AXIS


def _no_token_axis_message(name: str, shape: tuple[int, ...] | None = None) -> str:
    what = f"has shape {shape}" if shape is not None else "has shape (batch, head, query_pos, key_pos)"
    if shape is not None and _no_token_axis(name):
        what += " = (batch, head, query_pos, key_pos)"
    return (
        f"{name} {what}: it has no single token axis (query_pos, key_pos), so positions, per-token "
        "coefficients and gates are not defined there; steer it with positions='all' and a constant "
        "coefficient, or steer a (batch, pos, ...) site such as attn.hook_z or hook_resid_post"
    )


class UnknownHookError(KeyError):
    """A hook name the model does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def check_hook_name(model: nn.Module, hook_name: str) -> None:
    """Raise :class:`UnknownHookError` listing close valid names if ``hook_name`` is not a hook point."""
    valid = list(model.hook_dict.keys())
    if hook_name in model.hook_dict:
        return
    close = difflib.get_close_matches(hook_name, valid, n=5, cutoff=0.6)
    n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
    hint = (f" Residual sites are blocks.{{0..{n_layers - 1}}}.hook_resid_{{pre,mid,post}}."
            if n_layers else "")
    suggestion = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownHookError(f"unknown hook name {hook_name!r}.{suggestion}{hint}")


def _check_vector_fits(model: nn.Module, vector: SteeringVector) -> None:
    check_hook_name(model, vector.hook_name)
    d_model = int(model.cfg.d_model)
    if ".hook_resid_" in vector.hook_name and vector.d_model != d_model:
        raise ValueError(
            f"vector for {vector.hook_name!r} has width {vector.d_model} but the model has d_model={d_model}: "
            "it was made for another model"
        )
