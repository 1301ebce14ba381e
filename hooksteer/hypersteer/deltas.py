"""What a hypernetwork's Δ becomes: rescaled to a fixed length (:func:`with_norm`), the direction prior's unit rows
(:func:`prior_direction`), and one steering prompt's Δ as steering vectors at its sites (:func:`site_vectors`).

Example:
    >>> import torch
    >>> with_norm(torch.tensor([[3.0, 4.0]]), 5.0)
    tensor([[3., 4.]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxtyping import Float
from torch import Tensor

from hooksteer.vectors import SteeringSet, SteeringVector

__all__ = ["prior_direction", "site_vectors", "with_norm"]


def prior_direction(centred: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_model"]:
    """Unit rows of the centred head input (a row equal to the mean gives 0): the direction prior's Δ per unit gain."""
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def with_norm(delta: Float[Tensor, "batch d_model"], norm: float | None) -> Float[Tensor, "batch d_model"]:
    """``delta`` with every row rescaled to L2 norm ``norm`` (``None``: unchanged), differentiable in the direction.

    Example:
        >>> import torch
        >>> with_norm(torch.tensor([[3.0, 4.0]]), 10.0)
        tensor([[6., 8.]])
    """
    if norm is None:
        return delta
    return delta * (float(norm) / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def site_vectors(hook_names: Sequence[str], delta: Float[Tensor, " d_model"] | Float[Tensor, "n_sites d_model"], *,
                 method: str, source: dict[str, Any]) -> SteeringVector | SteeringSet:
    """One steering prompt's Δ as a :class:`SteeringVector` (one site) or a :class:`SteeringSet` with a vector per
    site (several sites act simultaneously).

    Example:
        >>> import torch
        >>> s = site_vectors(["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"], torch.ones(2, 4),
        ...                  method="hypersteer", source={})
        >>> sorted(s.by_hook())
        ['blocks.1.hook_resid_post', 'blocks.2.hook_resid_post']
    """
    if len(hook_names) == 1:
        return SteeringVector(hook_names[0], delta.reshape(-1), method=method, source=source)
    if delta.ndim != 2 or delta.shape[0] != len(hook_names):
        raise ValueError(f"Δ of shape {tuple(delta.shape)} does not fit {len(hook_names)} sites")
    return SteeringSet(SteeringVector(name, row, method=method, source=source)
                       for name, row in zip(hook_names, delta, strict=True))
