"""PSR losses: activation matching (MSE), likelihood of the teacher response, and the dead-ReLU regulariser.

Example:
    >>> import torch
    >>> pred, target = torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    >>> mask = torch.tensor([[True, True, False]])
    >>> float(activation_mse(pred, target, mask))
    1.0
    >>> float(dead_gate_penalty(torch.tensor([[0.2, 0.3, 5.0]]), mask))   # 1 - (0.2 + 0.3)
    0.5
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = ["activation_mse", "dead_gate_penalty", "response_nll"]


def _check_mask(mask: Tensor, shape: torch.Size) -> None:
    if mask.shape != shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(shape)} (batch, pos)")
    if not bool(mask.any()):
        raise ValueError("mask selects no response token: nothing to fit")


def activation_mse(
    steered: Float[Tensor, "batch pos d_model"], prompted: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
) -> Tensor:
    """Mean squared error (over masked tokens and dimensions) between steered and prompt-steered activations."""
    if steered.shape != prompted.shape:
        raise ValueError(f"steered {tuple(steered.shape)} and prompted {tuple(prompted.shape)} activations differ "
                         "in shape")
    _check_mask(mask, steered.shape[:-1])
    return (steered - prompted)[mask].float().pow(2).mean()


def response_nll(
    logits: Float[Tensor, "n d_vocab"], labels: Int[Tensor, " n"],
) -> Tensor:
    """Mean −log p(y'_t | x, y'_<t) over the response tokens (logits already gathered at their positions)."""
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    if labels.numel() == 0:
        raise ValueError("no response tokens to score")
    return F.cross_entropy(logits.float(), labels)


def dead_gate_penalty(gates: Float[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"]) -> Tensor:
    """Mean over examples of max(0, 1 − Σ_t λ_t) on the response tokens: zero unless a gate is (nearly) dead."""
    _check_mask(mask, gates.shape)
    total = (gates * mask.to(gates.dtype)).sum(dim=-1)
    return torch.relu(1.0 - total).mean()
