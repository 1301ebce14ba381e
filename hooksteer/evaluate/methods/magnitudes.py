"""How long a steering vector is at factor 1: the residual-stream norm or the AxBench max projection.

``magnitude="resid_norm"`` (default) uses :func:`residual_norm`, the mean L2 norm of the residual stream at
the steering site (the first token of each text left out: attention-sink tokens have norms many times the
rest), so ``factor=1`` adds a vector as long as a typical residual-stream vector. ``"max_projection"``
(:func:`max_projection`) is the AxBench reference: mean over positive texts of the maximum per-token
projection on the unit direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hooksteer.activations import collect_activations


def residual_norm(model: nn.Module, texts: Sequence[str], hook_name: str, *, max_texts: int = 16) -> float:
    """Mean L2 norm of the activation at ``hook_name`` over the tokens of the first ``max_texts`` texts
    (the first token of each text left out). It is a scale reference, so a few hundred tokens suffice.

    Example:
        >>> residual_norm(model, ["Hello there, friend."], "blocks.2.hook_resid_post")   # doctest: +SKIP
        41.3
    """
    norms = [acts[1:].norm(dim=-1) if acts.shape[0] > 1 else acts.norm(dim=-1)
             for acts in collect_activations(model, list(texts)[:max_texts], hook_name)]
    return float(torch.cat(norms).mean())


def max_projection(model: nn.Module, texts: Sequence[str], hook_name: str, unit: Tensor) -> float:
    """AxBench magnitude: mean over ``texts`` of the largest per-token projection onto ``unit``."""
    maxima = [float((acts @ unit.float()).max()) for acts in collect_activations(model, texts, hook_name)]
    return sum(maxima) / len(maxima)
