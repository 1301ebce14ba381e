"""The type aliases of the steering hooks: where to steer, what to add, what a hook is."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

from jaxtyping import Float, Int
from torch import Tensor

from hooksteer.vectors import SteeringVector

PositionName = Literal["all", "prompt", "generated", "answer"]
PositionSpec = Union[PositionName, Sequence[int], Int[Tensor, " n"]]
Direction = Union[SteeringVector, Float[Tensor, " d_model"], Float[Tensor, "batch d_model"]]
CoefficientFn = Callable[[Int[Tensor, "batch pos"]], Tensor]
GateFn = Callable[[Float[Tensor, "batch pos d_model"]], Float[Tensor, "batch pos"]]
HookFn = Callable[[Tensor, Any], Tensor]
