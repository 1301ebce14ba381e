"""Position specs: ``"all"``, ``"prompt"``, ``"generated"``, ``"answer"`` or explicit absolute token indices.

``"answer"`` is every position that predicts a generated token: the prompt's last token (it predicts the first
answer token) and every generated token — the prompt is read unsteered, the whole answer is steered.

Validation of a spec, and the mask of the current tokens it selects.
"""

from __future__ import annotations

import operator
from typing import Any, get_args

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from hooksteer.hooks.tracker import PositionTracker
from hooksteer.hooks.types import PositionName, PositionSpec

_NAMED_POSITIONS: tuple[str, ...] = get_args(PositionName)
_NAMES_TEXT = ", ".join(f"'{name}'" for name in _NAMED_POSITIONS)  # 'all', 'prompt', … for error messages


def _validate_positions(positions: PositionSpec) -> PositionSpec:
    if isinstance(positions, str):
        if positions not in _NAMED_POSITIONS:
            raise ValueError(f"positions must be one of {_NAMED_POSITIONS} or a list of indices, got {positions!r}")
        return positions
    if isinstance(positions, slice):
        raise TypeError(f"positions must be {_NAMES_TEXT} or explicit indices, not a slice")
    indices = _integer_indices(positions)
    if indices.numel() == 0:
        raise ValueError("positions is an empty list: nothing would be steered")
    if (indices < 0).any():
        raise ValueError(
            "positions are absolute token indices and must be >= 0 (negative indices would move "
            "while generating); use 'generated' or explicit indices"
        )
    return indices


def _integer_indices(positions: Any) -> Int[Tensor, " n"]:
    """A flat LongTensor of token indices; floats, bools and nested lists are refused, not rounded or flattened."""
    if isinstance(positions, Tensor):
        if positions.dtype == torch.bool or positions.is_floating_point() or positions.is_complex():
            raise TypeError(f"positions must be integer token indices, got a {positions.dtype} tensor")
        if positions.ndim > 1:
            raise ValueError(f"positions must be a flat list of token indices, got shape {tuple(positions.shape)}")
        return positions.detach().to("cpu", torch.long).reshape(-1)
    if isinstance(positions, int) and not isinstance(positions, bool):
        positions = [positions]
    try:
        items = list(positions)
    except TypeError:
        raise TypeError(
            f"positions must be {_NAMES_TEXT} or a list of integer token indices, "
            f"got {type(positions).__name__}"
        ) from None
    values = []
    for item in items:
        if isinstance(item, (list, tuple, Tensor)) and not (isinstance(item, Tensor) and item.ndim == 0):
            raise ValueError(f"positions must be a flat list of token indices, got a nested entry {item!r}")
        is_bool = isinstance(item, bool) or (isinstance(item, Tensor) and item.dtype == torch.bool)
        try:
            values.append(operator.index(item) if not is_bool else None)
        except TypeError:
            values.append(None)
        if values[-1] is None:
            raise TypeError(f"positions must be integer token indices, got {item!r}")
    return torch.tensor(values, dtype=torch.long)


def _position_mask(
    positions: PositionSpec, absolute: Int[Tensor, "batch pos"], tracker: PositionTracker | None
) -> Bool[Tensor, "batch pos"] | None:
    """Which of the current positions are steered; ``None`` means all of them."""
    if isinstance(positions, str):
        if positions == "all":
            return None
        assert tracker is not None and tracker.prompt_lengths is not None
        prompt_lengths = tracker.prompt_lengths.to(absolute.device)[:, None]
        if positions == "prompt":
            return (absolute >= 0) & (absolute < prompt_lengths)
        if positions == "answer":
            return absolute >= prompt_lengths - 1
        return absolute >= prompt_lengths
    return torch.isin(absolute, positions.to(absolute.device))
