"""SAE-feature steering (AxBench's "SAE" baseline): a decoder direction scaled by the feature's typical max
activation, and a way to find the features of a concept.

Works with any sae-lens ``SAE`` (duck-typed: ``W_dec``, ``encode``, ``cfg``), so importing this module does
not import sae-lens. The steering vector for feature ``f`` is ``d_f · a_f`` where ``d_f`` is the decoder
direction — the change in the reconstruction per unit of activation, ``W_dec[f]`` (divided by its norm when
the SAE rescales activations by decoder norm, as sae-lens TopK SAEs do) — and ``a_f`` is the feature's
typical max activation: the mean over texts of its largest activation in the text. Adding it therefore moves
the residual stream as far as the feature itself does when it fires strongly.

Each text's first position is skipped when reading feature activations: for models without a BOS token
(SmolLM2) it is an attention sink with a residual norm ~100× the rest, far outside what the SAE was trained on.

Example:
    >>> from hooksteer.methods.sae_feature import find_concept_features, sae_feature_vector  # doctest: +SKIP
    >>> found = find_concept_features(model, sae, concept_texts=volcano_texts, background_texts=other, k=5)
    >>> vec = sae_feature_vector(sae, found.feature_ids[0], model=model, texts=volcano_texts)
    >>> with hs.steer(model, vec * 2.0): ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from hooksteer.activations import check_texts, collect_activations
from hooksteer.hooks import check_hook_name
from hooksteer.vectors import SteeringVector

__all__ = [
    "ConceptFeatures",
    "decoder_directions",
    "feature_activations",
    "find_concept_features",
    "sae_feature_vector",
    "sae_hook_name",
    "typical_max_activation",
]


def sae_hook_name(sae: Any, *, required: bool = True) -> str | None:
    """The hook name an sae-lens SAE was trained on (``sae.cfg.metadata.hook_name``)."""
    metadata = getattr(getattr(sae, "cfg", None), "metadata", None)
    name = getattr(metadata, "hook_name", None) if metadata is not None else None
    if name is None and required:
        raise ValueError("the SAE's config does not say which hook it reads (cfg.metadata.hook_name); "
                         "pass hook_name=... explicitly")
    return name


@torch.no_grad()
def decoder_directions(sae: Any) -> Float[Tensor, "d_sae d_in"]:
    """Unit-norm decoder direction of every feature, as float32."""
    w = sae.W_dec.detach().float()
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def _decoder_effect(sae: Any) -> Float[Tensor, "d_sae d_in"]:
    """Change of the reconstruction per unit activation of each feature."""
    w = sae.W_dec.detach().float()
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return w


def _check_feature(sae: Any, feature_id: int) -> int:
    d_sae = int(sae.cfg.d_sae)
    if isinstance(feature_id, bool) or not isinstance(feature_id, int | torch.Tensor) or not 0 <= int(feature_id) < d_sae:
        raise ValueError(f"feature_id must be an integer in [0, {d_sae}), got {feature_id!r}")
    return int(feature_id)


@torch.no_grad()
def feature_activations(
    model: nn.Module, sae: Any, texts: Sequence[str], *, hook_name: str | None = None,
    batch_size: int = 8, skip_first: bool = True,
) -> Iterator[Float[Tensor, "pos d_sae"]]:
    """Yield, per text, the SAE's feature activations on ``model``'s activations (first position skipped)."""
    hook_name = hook_name or sae_hook_name(sae)
    check_hook_name(model, hook_name)
    d_in = int(sae.cfg.d_in)
    for acts in collect_activations(model, texts, hook_name, batch_size=batch_size):
        if acts.shape[-1] != d_in:
            raise ValueError(f"activations at {hook_name!r} have width {acts.shape[-1]}, the SAE expects {d_in}")
        if skip_first:
            acts = acts[1:]
        if acts.shape[0] == 0:
            yield torch.zeros(0, int(sae.cfg.d_sae))
            continue
        yield sae.encode(acts.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()


@torch.no_grad()
def typical_max_activation(
    model: nn.Module, sae: Any, feature_ids: Sequence[int], texts: Sequence[str], *,
    hook_name: str | None = None, batch_size: int = 8,
) -> Float[Tensor, " n_features"]:
    """Mean over ``texts`` of each feature's maximum activation within the text (AxBench's scale)."""
    ids = torch.tensor([_check_feature(sae, f) for f in feature_ids], dtype=torch.long)
    texts = check_texts(texts)
    maxima = [acts[:, ids].max(dim=0).values if acts.shape[0] else torch.zeros(len(ids))
              for acts in feature_activations(model, sae, texts, hook_name=hook_name, batch_size=batch_size)]
    return torch.stack(maxima).mean(dim=0)


def sae_feature_vector(
    sae: Any,
    feature_id: int,
    *,
    hook_name: str | None = None,
    scale: float | None = None,
    model: nn.Module | None = None,
    texts: Sequence[str] | None = None,
) -> SteeringVector:
    """Steering vector of one SAE feature: its decoder direction times ``scale``.

    Args:
        sae: an sae-lens SAE (see :func:`analysis.sae_compare.load_sae` for folders).
        feature_id: the feature.
        hook_name: where to steer; default: the SAE's own hook (``cfg.metadata.hook_name``).
        scale: the activation to emulate. If ``None``, measured as the feature's typical max activation on
            ``texts`` under ``model`` (:func:`typical_max_activation`); without texts, ``ValueError``.

    Example:
        >>> v = sae_feature_vector(sae, 12, scale=3.0)                        # doctest: +SKIP
        >>> v.method, v.source["feature_id"]
        ('sae_feature', 12)
    """
    feature = _check_feature(sae, feature_id)
    hook_name = hook_name or sae_hook_name(sae)
    if scale is None:
        if model is None or texts is None:
            raise ValueError("give scale=..., or model and texts to measure the feature's typical max activation")
        scale = float(typical_max_activation(model, sae, [feature], texts, hook_name=hook_name)[0])
        measured = True
    else:
        measured = False
    if not isinstance(scale, int | float) or scale != scale or abs(scale) == float("inf"):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    direction = _decoder_effect(sae)[feature].cpu()
    return SteeringVector(
        hook_name, direction * float(scale), method="sae_feature",
        source={"feature_id": feature, "scale": float(scale), "scale_measured": measured,
                "d_sae": int(sae.cfg.d_sae)},
    )


@dataclass(frozen=True)
class ConceptFeatures:
    """Features that fire more on concept text than on background text.

    Attributes:
        feature_ids: the top-``k`` features, best first.
        scores: their mean activation on concept tokens minus on background tokens.
        concept_mean / background_mean: the two means for those features.
    """

    feature_ids: list[int]
    scores: list[float]
    concept_mean: list[float]
    background_mean: list[float]


@torch.no_grad()
def _mean_token_activation(model: nn.Module, sae: Any, texts: Sequence[str], hook_name: str | None,
                           label: str, progress: bool) -> Tensor:
    texts = check_texts(texts, label)
    per_text = [acts.mean(dim=0) for acts in tqdm(feature_activations(model, sae, texts, hook_name=hook_name),
                                                  total=len(texts), desc=label, disable=not progress)
                if acts.shape[0] > 0]
    if not per_text:
        raise ValueError(f"{label} are all single-token texts; nothing is left after skipping the first position")
    return torch.stack(per_text).mean(dim=0)


def find_concept_features(
    model: nn.Module,
    sae: Any,
    concept_texts: Sequence[str],
    background_texts: Sequence[str],
    k: int = 10,
    *,
    hook_name: str | None = None,
    progress: bool = False,
) -> ConceptFeatures:
    """Top-``k`` features by mean activation on concept texts minus background texts (per-text token means).

    Example:
        >>> found = find_concept_features(model, sae, ["Volcanoes erupt lava."], ["The cat sat."], k=3)  # doctest: +SKIP
        >>> found.feature_ids
    """
    d_sae = int(sae.cfg.d_sae)
    if not 1 <= k <= d_sae:
        raise ValueError(f"k must be between 1 and d_sae={d_sae}, got {k}")
    concept = _mean_token_activation(model, sae, concept_texts, hook_name, "concept_texts", progress)
    background = _mean_token_activation(model, sae, background_texts, hook_name, "background_texts", progress)
    score = concept - background
    top = torch.topk(score, k).indices
    return ConceptFeatures(
        feature_ids=top.tolist(), scores=score[top].tolist(),
        concept_mean=concept[top].tolist(), background_mean=background[top].tolist(),
    )
