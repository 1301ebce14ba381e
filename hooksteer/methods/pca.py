"""PCA steering vectors: the first principal component of contrastive activations.

Two variants (AxBench's PCA baseline and RepE-style "reading vectors"):

* ``mode="paired"`` (default): the top right-singular vector of the matrix of paired differences
  ``act(positive_i) - act(negative_i)``. The differences are *not* centred: centring would remove
  the mean difference, which is the signal. Uncentred PCA of the differences equals PCA of the
  sign-symmetrised set ``{±d_i}`` (RepE flips pair order at random for the same reason).
* ``mode="centred"``: the first principal component of all activations (positive and negative
  together) after subtracting their overall mean; unpaired texts are fine.

In both modes the sign is fixed so that positives project higher than negatives on average, i.e.
the vector points from negative to positive. The length is set by ``scale``: ``"diff"`` (default)
makes it the projection of the mean difference onto the direction, so it is comparable in size
to a DiffMean vector; ``"unit"`` returns a unit vector.

Example:
    >>> import torch
    >>> pos = torch.tensor([[3.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]); neg = torch.zeros(3, 2)
    >>> pca_direction(pos, neg, mode="paired").tolist()          # dominant difference direction
    [1.0, 0.0]
    >>> v = hs.methods.pca(model, ["I love it."], ["I hate it."], "blocks.6.hook_resid_post")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooksteer.activations import collect_activations
from hooksteer.methods.diffmean import Aggregation, _aggregate
from hooksteer.vectors import SteeringVector, check_finite

PCAMode = Literal["paired", "centred"]
Scale = Literal["diff", "unit"]


def pca(
    model: nn.Module,
    positive: Sequence[str],
    negative: Sequence[str],
    hook_name: str,
    *,
    mode: PCAMode = "paired",
    aggregation: Aggregation = "mean",
    scale: Scale = "diff",
    batch_size: int = 16,
) -> SteeringVector:
    """First principal component of contrastive activations at ``hook_name``, pointing negative → positive.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` with a tokenizer.
        positive / negative: texts with / without the behaviour. ``mode="paired"`` needs equally
            many (``positive[i]`` is paired with ``negative[i]``).
        hook_name: where to read activations, e.g. ``"blocks.12.hook_resid_post"``.
        mode: ``"paired"`` (PC of paired differences) or ``"centred"`` (PC of centred activations).
        aggregation: ``"mean"`` over each text's tokens (AxBench) or ``"last"`` token (CAA).
        scale: ``"diff"`` (length = mean difference projected on the direction) or ``"unit"``.
        batch_size: texts per forward pass.

    Example:
        >>> v = pca(model, ["I love it."], ["I hate it."], "blocks.6.hook_resid_post")  # doctest: +SKIP
    """
    positive_acts = _text_activations(model, positive, hook_name, aggregation, batch_size)
    negative_acts = _text_activations(model, negative, hook_name, aggregation, batch_size)
    direction = pca_direction(positive_acts, negative_acts, mode=mode)
    vector = direction * _length(direction, positive_acts, negative_acts, scale)
    check_finite(vector, "PCA vector")
    return SteeringVector(
        hook_name, vector, method="pca",
        source={"mode": mode, "aggregation": aggregation, "scale": scale,
                "n_positive": len(positive), "n_negative": len(negative)},
    )


def pca_direction(
    positive: Float[Tensor, "n_pos d_model"], negative: Float[Tensor, "n_neg d_model"], *, mode: PCAMode = "paired"
) -> Float[Tensor, " d_model"]:
    """Unit first principal component, sign-fixed so ``mean(positive·u) > mean(negative·u)``.

    Example:
        >>> [x + 0.0 for x in pca_direction(torch.tensor([[0.0, 2.0]]), torch.zeros(1, 2)).tolist()]
        [0.0, 1.0]
    """
    _check_activation_matrix(positive, "positive")
    _check_activation_matrix(negative, "negative")
    if mode == "paired":
        if positive.shape != negative.shape:
            raise ValueError(
                f"mode='paired' needs as many positive as negative texts, got {positive.shape[0]} and "
                f"{negative.shape[0]}; use mode='centred' for unpaired texts"
            )
        data = positive - negative
    elif mode == "centred":
        stacked = torch.cat([positive, negative])
        data = stacked - stacked.mean(dim=0)
    else:
        raise ValueError(f"mode must be 'paired' or 'centred', got {mode!r}")
    direction = _top_right_singular_vector(data.double())
    return _orient(direction, positive.double(), negative.double()).to(positive.dtype)


def _check_activation_matrix(acts: Tensor, what: str) -> None:
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise ValueError(f"{what} activations must have shape (n_texts >= 1, d_model), got {tuple(acts.shape)}")
    check_finite(acts, f"{what} activations")


def _top_right_singular_vector(data: Float[Tensor, "n d_model"]) -> Float[Tensor, " d_model"]:
    _, singular_values, right = torch.linalg.svd(data, full_matrices=False)
    if singular_values.numel() == 0 or float(singular_values[0]) == 0.0:
        raise ValueError("PCA input has no variance (all differences are zero): positive and negative "
                         "activations are identical")
    return right[0]


def _orient(direction: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    gap = float((positive @ direction).mean() - (negative @ direction).mean())
    if gap == 0.0:
        raise ValueError("the principal component does not separate positive from negative texts "
                         "(equal mean projections); its sign is undefined")
    return direction if gap > 0 else -direction


def _length(direction: Tensor, positive: Tensor, negative: Tensor, scale: Scale) -> float:
    if scale == "unit":
        return 1.0
    if scale == "diff":
        return float((positive.mean(dim=0) - negative.mean(dim=0)) @ direction)
    raise ValueError(f"scale must be 'diff' or 'unit', got {scale!r}")


def _text_activations(
    model: nn.Module, texts: Sequence[str], hook_name: str, aggregation: Aggregation, batch_size: int
) -> Float[Tensor, "n d_model"]:
    if aggregation not in ("last", "mean"):
        raise ValueError(f"aggregation must be 'last' or 'mean', got {aggregation!r}")
    return torch.stack([_aggregate(a, aggregation)
                        for a in collect_activations(model, texts, hook_name, batch_size=batch_size)])
