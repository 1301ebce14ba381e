"""Mean-difference steering vectors (DiffMean / CAA).

``v = mean(act(positive)) - mean(act(negative))`` at one hook point, where ``act`` is the
activation at the last token of each text (CAA, van der Weij et al.) or the mean over its
tokens (AxBench DiffMean).

Example:
    >>> import hooksteer as hs                                                  # doctest: +SKIP
    >>> love = hs.methods.diffmean(model, positive=["I love you."], negative=["I hate you."],
    ...                            hook_name="blocks.12.hook_resid_post")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from hooksteer.activations import collect_activations
from hooksteer.vectors import SteeringVector, check_finite

Aggregation = Literal["last", "mean"]


def diffmean(
    model: nn.Module,
    positive: Sequence[str],
    negative: Sequence[str],
    hook_name: str,
    *,
    aggregation: Aggregation = "last",
    batch_size: int = 16,
    progress: bool = False,
) -> SteeringVector:
    """Mean activation on ``positive`` texts minus mean activation on ``negative`` texts.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` with a tokenizer.
        positive: texts that show the behaviour to steer towards.
        negative: texts that do not (they need not be paired with ``positive``).
        hook_name: where to read activations, e.g. ``"blocks.12.hook_resid_post"``.
        aggregation: ``"last"`` (activation at each text's last token, CAA) or ``"mean"``
            (mean over each text's tokens, AxBench DiffMean).
        batch_size: texts per forward pass.
        progress: show a progress bar.

    Returns:
        A :class:`~hooksteer.SteeringVector` (unnormalised) at ``hook_name``.
    """
    positive_mean = _mean_activation(model, positive, hook_name, aggregation, batch_size, progress, "positive")
    negative_mean = _mean_activation(model, negative, hook_name, aggregation, batch_size, progress, "negative")
    vector = positive_mean - negative_mean
    check_finite(vector, "DiffMean vector")
    return SteeringVector(
        hook_name,
        vector,
        method="diffmean",
        source={"aggregation": aggregation, "n_positive": len(positive), "n_negative": len(negative)},
    )


def _mean_activation(
    model: nn.Module, texts: Sequence[str], hook_name: str, aggregation: Aggregation,
    batch_size: int, progress: bool, label: str,
) -> Float[Tensor, " d_model"]:
    if aggregation not in ("last", "mean"):
        raise ValueError(f"aggregation must be 'last' or 'mean', got {aggregation!r}")
    per_text = [
        _aggregate(activation, aggregation)
        for activation in tqdm(collect_activations(model, texts, hook_name, batch_size=batch_size),
                               total=len(texts), desc=f"diffmean {label}", disable=not progress)
    ]
    return torch.stack(per_text).mean(dim=0)


def _aggregate(activation: Float[Tensor, "pos d_model"], aggregation: Aggregation) -> Float[Tensor, " d_model"]:
    return activation[-1] if aggregation == "last" else activation.mean(dim=0)
