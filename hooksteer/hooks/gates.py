"""Gates for :func:`~hooksteer.hooks.add_gated`: a per-token coefficient read from the activation."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


class ReluGate(nn.Module):
    """PSR-style per-token coefficient ``λ(h) = ReLU(w · h + b)``.

    Example:
        >>> import torch
        >>> gate = ReluGate(torch.tensor([1.0, 0.0]), bias=-0.5)
        >>> gate(torch.tensor([[[2.0, 9.0], [0.1, 9.0]]])).tolist()
        [[1.5, 0.0]]
    """

    def __init__(self, weight: Float[Tensor, " d_model"], bias: float | Tensor = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(weight, dtype=torch.float32).clone())
        self.bias = nn.Parameter(torch.as_tensor(bias, dtype=torch.float32).reshape(()).clone())

    def forward(self, activation: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos"]:
        weight = self.weight.to(activation.dtype)
        return torch.relu(activation @ weight + self.bias.to(activation.dtype))
