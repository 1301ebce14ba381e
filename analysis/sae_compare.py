"""Steering vectors seen through an SAE: decoder cosines, sparse encodings, snippets, retained effect.

For any :class:`~hooksteer.SteeringVector` (HyperSteer, DiffMean, PSR z, ...) and any sae-lens ``SAE``
(an object, or a folder saved by sae-lens / :func:`analysis.sae_training.train_sae`):

* :func:`compare_vector` — cosine similarity to every decoder direction, the top-k features, and the
  SAE's encoding of the vector (L0, reconstruction error);
* :func:`top_activating_snippets` — the corpus tokens on which chosen features fire most, with context;
* :func:`steering_effect_retained` — how much of the vector's effect on next-token distributions
  survives when it is replaced by its best reconstruction from its top-k features (KL on logits).

Example:
    >>> from analysis.sae_compare import load_sae, compare_vector, steering_effect_retained  # doctest: +SKIP
    >>> sae = load_sae("runs/sae/l20")
    >>> cmp = compare_vector(vector, sae, k=10)
    >>> cmp.top_features[:3], cmp.top_cosines[:3]
    >>> steering_effect_retained(model, vector * 4, sae, ks=(1, 5, 20), prompts=texts)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from hooksteer.activations import check_texts
from hooksteer.hooks import check_hook_name, steer
from hooksteer.methods.sae_feature import decoder_directions, feature_activations, sae_hook_name
from hooksteer.vectors import SteeringVector, check_finite

__all__ = [
    "RetainedEffect",
    "Snippet",
    "VectorComparison",
    "compare_vector",
    "decoder_directions",
    "load_sae",
    "next_token_kl",
    "sae_hook_name",
    "steering_effect_retained",
    "top_activating_snippets",
    "topk_reconstruction",
]


class SAEFileError(ValueError):
    """A folder does not hold a loadable sae-lens SAE."""


def load_sae(sae: Any, device: str = "cpu") -> Any:
    """An sae-lens ``SAE``: returned as is if given one, else loaded from a folder with ``SAE.load_from_disk``.

    Raises:
        SAEFileError: the folder is missing, lacks ``cfg.json`` / weights, or they do not load.
        TypeError: ``sae`` is neither an SAE-like object nor a path.

    Example:
        >>> sae = load_sae("runs/sae/l20")                                     # doctest: +SKIP
        >>> load_sae(sae) is sae
        True
    """
    if hasattr(sae, "W_dec") and hasattr(sae, "encode") and hasattr(sae, "cfg"):
        return sae
    if not isinstance(sae, str | Path):
        raise TypeError(f"expected an sae-lens SAE or a folder path, got {type(sae).__name__}")
    folder = Path(sae)
    if not folder.is_dir():
        raise SAEFileError(f"SAE folder {folder} does not exist")
    if not (folder / "cfg.json").is_file():
        raise SAEFileError(f"{folder} has no cfg.json: not an SAE saved in sae-lens format")
    from sae_lens import SAE

    try:
        return SAE.load_from_disk(folder, device=device)
    except Exception as error:  # corrupt json/safetensors, wrong shapes, unknown architecture
        raise SAEFileError(f"could not load the SAE in {folder}: {type(error).__name__}: {error}") from error


# ---------------------------------------------------------------------------- vector vs decoder
@dataclass
class VectorComparison:
    """How one steering vector relates to an SAE's features.

    Attributes:
        cosines: cosine similarity of the vector to every decoder direction, shape ``(d_sae,)``.
        top_features / top_cosines: the ``k`` features with the largest cosine (descending).
        encoding: the SAE's feature activations for the vector (see :func:`compare_vector`).
        encoding_l0: number of non-zero entries of ``encoding``.
        encoding_participation: ``(Σ|e|)² / Σe²`` — how many features effectively carry the encoding (1 = one
            feature, ``d_sae`` = all equally); unlike L0 it ignores tiny entries (the ``"delta"`` encoding
            of a TopK SAE touches most features a little, because adding a vector reshuffles the top-k).
        reconstruction: the SAE's reconstruction of the vector from ``encoding``.
        reconstruction_error: ``‖reconstruction - vector‖ / ‖vector‖``.
        reconstruction_cosine: cosine between reconstruction and vector.
        encoding_mode: ``"direct"`` or ``"delta"``.
    """

    hook_name: str
    vector_norm: float
    cosines: Float[Tensor, " d_sae"]
    top_features: list[int]
    top_cosines: list[float]
    encoding: Float[Tensor, " d_sae"]
    encoding_l0: int
    encoding_participation: float
    reconstruction: Float[Tensor, " d_model"]
    reconstruction_error: float
    reconstruction_cosine: float
    encoding_mode: str
    top_encoded: list[tuple[int, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (no tensors)."""
        return {
            "hook_name": self.hook_name, "vector_norm": self.vector_norm,
            "top_features": self.top_features, "top_cosines": self.top_cosines,
            "max_abs_cosine": float(self.cosines.abs().max()), "encoding_mode": self.encoding_mode,
            "encoding_l0": self.encoding_l0, "encoding_participation": self.encoding_participation,
            "top_encoded": self.top_encoded,
            "reconstruction_error": self.reconstruction_error,
            "reconstruction_cosine": self.reconstruction_cosine,
        }


def _check_vector(vector: SteeringVector, sae: Any, check_hook: bool) -> Tensor:
    if not isinstance(vector, SteeringVector):
        raise TypeError(f"expected a SteeringVector, got {type(vector).__name__}")
    d_in = int(sae.cfg.d_in)
    if vector.d_model != d_in:
        raise ValueError(f"vector has d_model {vector.d_model} but the SAE reads d_in={d_in} activations")
    site = sae_hook_name(sae, required=False)
    if check_hook and site is not None and site != vector.hook_name:
        raise ValueError(f"the vector lives at {vector.hook_name!r} but the SAE was trained on {site!r}; "
                         "pass check_hook=False to compare anyway")
    return vector.vector.detach().float().to(sae.W_dec.device)


@torch.no_grad()
def compare_vector(
    vector: SteeringVector,
    sae: Any,
    k: int = 10,
    *,
    reference: Float[Tensor, "n d_model"] | None = None,
    check_hook: bool = True,
) -> VectorComparison:
    """Cosine of ``vector`` to every decoder direction, its top-``k`` features and its SAE encoding.

    The encoding has two modes:

    * ``reference=None`` (``"direct"``): the vector read as an offset from the SAE's centre ``b_dec``:
      ``encode(b_dec + vector)`` (``b_dec`` is subtracted again inside ``encode``), reconstruction
      ``decode(·) - b_dec``. The encoder bias still applies, so a short vector may encode to few features;
    * ``reference`` activations given (``"delta"``): the mean change in feature activations when the vector
      is added to them, ``mean(encode(h + v) - encode(h))``; its reconstruction is ``Δf @ W_dec`` (the
      decoder bias cancels). This is what the SAE "sees" the vector do at the activations it steers.

    Example:
        >>> cmp = compare_vector(SteeringVector(hook, sae.W_dec[7]), sae, k=3)   # doctest: +SKIP
        >>> cmp.top_features[0], round(cmp.top_cosines[0], 4)
        (7, 1.0)
    """
    sae = load_sae(sae)
    v = _check_vector(vector, sae, check_hook)
    if not 1 <= k <= int(sae.cfg.d_sae):
        raise ValueError(f"k must be between 1 and d_sae={sae.cfg.d_sae}, got {k}")
    directions = decoder_directions(sae)
    cosines = directions @ v / v.norm().clamp_min(1e-12)
    top = torch.topk(cosines, k)
    dtype = sae.W_dec.dtype
    if reference is None:
        centre = sae.b_dec.detach() if getattr(sae.cfg, "apply_b_dec_to_input", False) else torch.zeros_like(sae.b_dec)
        encoding = sae.encode((centre + v.to(dtype))[None])[0].float()
        reconstruction = (sae.decode(encoding.to(dtype)[None])[0] - sae.b_dec.detach()).float()
        mode = "direct"
    else:
        if reference.ndim != 2 or reference.shape[1] != v.shape[0]:
            raise ValueError(f"reference must have shape (n, {v.shape[0]}), got {tuple(reference.shape)}")
        check_finite(reference, "reference activations")
        h = reference.to(sae.W_dec.device, dtype)
        encoding = (sae.encode(h + v.to(dtype)) - sae.encode(h)).float().mean(dim=0)
        reconstruction = (sae.decode(sae.encode(h + v.to(dtype))) - sae.decode(sae.encode(h))).float().mean(dim=0)
        mode = "delta"
    nonzero = encoding.abs() > 1e-8
    order = torch.argsort(encoding.abs(), descending=True)[: min(k, int(nonzero.sum()))]
    norm = v.norm().clamp_min(1e-12)
    return VectorComparison(
        hook_name=vector.hook_name,
        vector_norm=float(norm),
        cosines=cosines.cpu(),
        top_features=top.indices.tolist(),
        top_cosines=top.values.tolist(),
        encoding=encoding.cpu(),
        encoding_l0=int(nonzero.sum()),
        encoding_participation=float(encoding.abs().sum() ** 2 / encoding.pow(2).sum()) if nonzero.any() else 0.0,
        reconstruction=reconstruction.cpu(),
        reconstruction_error=float((reconstruction - v).norm() / norm),
        reconstruction_cosine=float(F.cosine_similarity(reconstruction, v, dim=0)),
        encoding_mode=mode,
        top_encoded=[(int(i), float(encoding[i])) for i in order],
    )


@torch.no_grad()
def topk_reconstruction(
    vector: SteeringVector, sae: Any, k: int, *, selection: str = "cosine", check_hook: bool = True
) -> SteeringVector:
    """Least-squares reconstruction of ``vector`` from ``k`` decoder directions.

    Args:
        selection: ``"cosine"`` — the ``k`` features with the largest |cosine| to the vector (its "top-k
            features"; a feature pointing the opposite way gets a negative coefficient); ``"omp"`` —
            orthogonal matching pursuit: repeatedly add the feature most aligned with what is still
            unexplained, refitting all coefficients (recovers sparse combinations that cosine ranking misses).

    The result lives at the vector's hook point; ``source`` records the features and coefficients.

    Example:
        >>> approx = topk_reconstruction(vector, sae, k=5)                    # doctest: +SKIP
        >>> approx.source["features"], approx.source["cosine_to_vector"]
    """
    sae = load_sae(sae)
    v = _check_vector(vector, sae, check_hook)
    if not 1 <= k <= int(sae.cfg.d_sae):
        raise ValueError(f"k must be between 1 and d_sae={sae.cfg.d_sae}, got {k}")
    if selection not in ("cosine", "omp"):
        raise ValueError(f"selection must be 'cosine' or 'omp', got {selection!r}")
    directions = decoder_directions(sae).double()
    target = v.double()
    if selection == "cosine":
        chosen = torch.topk((directions @ target).abs(), k).indices.tolist()
        coefficients = _lstsq(directions[chosen], target)
    else:
        chosen, residual = [], target
        for _ in range(k):
            scores = (directions @ residual).abs()
            scores[chosen] = -1.0
            chosen.append(int(torch.argmax(scores)))
            coefficients = _lstsq(directions[chosen], target)
            residual = target - coefficients @ directions[chosen]
    approx = (coefficients @ directions[chosen]).float().cpu()
    return SteeringVector(
        vector.hook_name, approx.to(vector.vector.dtype), method=f"sae_top{k}_reconstruction",
        source={"of": vector.method, "selection": selection, "features": [int(f) for f in chosen],
                "coefficients": coefficients.float().tolist(),
                "cosine_to_vector": float(F.cosine_similarity(approx, v.cpu(), dim=0))},
    )


def _lstsq(basis: Tensor, target: Tensor) -> Tensor:
    return torch.linalg.lstsq(basis.T, target[:, None]).solution[:, 0]


# ---------------------------------------------------------------------------- snippets
@dataclass(frozen=True, order=True)
class Snippet:
    """One token on which a feature fired, with its context; ``text`` marks the token as ``[[token]]``."""

    activation: float
    text: str
    text_index: int
    position: int
    token: str


@torch.no_grad()
def top_activating_snippets(
    model: nn.Module,
    sae: Any,
    feature_ids: Sequence[int],
    texts: Sequence[str],
    *,
    n: int = 5,
    window: int = 8,
    hook_name: str | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[int, list[Snippet]]:
    """For each feature, the ``n`` tokens of ``texts`` where it fires most, with ``window`` tokens of context.

    Each text's first position is skipped (see :func:`hooksteer.methods.sae_feature.feature_activations`).

    Example:
        >>> snips = top_activating_snippets(model, sae, [12], wiki_texts, n=3)  # doctest: +SKIP
        >>> snips[12][0].text
        '... the eruption of the [[volcano]] in 1815 ...'
    """
    sae = load_sae(sae)
    ids = [int(f) for f in feature_ids]
    if not ids:
        raise ValueError("feature_ids is empty")
    bad = [f for f in ids if not 0 <= f < int(sae.cfg.d_sae)]
    if bad:
        raise ValueError(f"feature ids {bad} out of range for d_sae={sae.cfg.d_sae}")
    if n < 1 or window < 0:
        raise ValueError(f"need n >= 1 and window >= 0, got n={n}, window={window}")
    texts = check_texts(texts)
    heaps: dict[int, list[tuple[float, int, int]]] = {f: [] for f in ids}
    index = torch.tensor(ids)
    for text_index, acts in enumerate(tqdm(feature_activations(model, sae, texts, hook_name=hook_name,
                                                               batch_size=batch_size),
                                           total=len(texts), desc="snippets", disable=not progress)):
        chosen = acts[:, index]  # (pos, n_features)
        for column, feature in enumerate(ids):
            values, positions = torch.topk(chosen[:, column], min(n, chosen.shape[0]))
            for value, position in zip(values.tolist(), positions.tolist(), strict=True):
                if value <= 0:
                    continue
                item = (value, text_index, position)
                if len(heaps[feature]) < n:
                    heapq.heappush(heaps[feature], item)
                elif item > heaps[feature][0]:
                    heapq.heapreplace(heaps[feature], item)
    result: dict[int, list[Snippet]] = {}
    for feature, heap in heaps.items():
        snippets = []
        for value, text_index, position in sorted(heap, reverse=True):
            position += 1  # feature_activations skipped each text's first token
            tokens = model.to_tokens(texts[text_index])[0].tolist()
            left = model.tokenizer.decode(tokens[max(0, position - window) : position])
            token = model.tokenizer.decode(tokens[position : position + 1])
            right = model.tokenizer.decode(tokens[position + 1 : position + 1 + window])
            context = f"{left}[[{token}]]{right}".replace("\n", " ")
            snippets.append(Snippet(float(value), context, text_index, position, token))
        result[feature] = snippets
    return result


# ---------------------------------------------------------------------------- retained effect
@torch.no_grad()
def next_token_kl(
    model: nn.Module,
    prompts: Sequence[str],
    vector_p: SteeringVector | None,
    vector_q: SteeringVector | None,
    *,
    batch_size: int = 8,
) -> float:
    """Mean over prompt tokens of KL(P‖Q), P and Q the next-token distributions steered by ``vector_p`` /
    ``vector_q`` (``None`` = unsteered), steering at every position."""
    total, count = 0.0, 0
    for tokens, mask in _batches(model, prompts, batch_size):
        kl = _kl(_log_probs(model, tokens, vector_p), _log_probs(model, tokens, vector_q))
        total += float(kl[mask].sum())
        count += int(mask.sum())
    return total / count


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(P‖Q) per position from log-probabilities, shape (batch, pos)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def _batches(model: nn.Module, prompts: Sequence[str], batch_size: int):
    from hooksteer.activations import pad_token_id, right_pad, tokenize

    prompts = check_texts(prompts, "prompts")
    pad = pad_token_id(model)
    for start in range(0, len(prompts), batch_size):
        seqs = [tokenize(model, p) for p in prompts[start : start + batch_size]]
        tokens = right_pad(seqs, pad)
        mask = torch.zeros(tokens.shape, dtype=torch.bool)
        for row, seq in enumerate(seqs):
            mask[row, : seq.shape[0]] = True
        yield tokens, mask


def _log_probs(model: nn.Module, tokens: Tensor, vector: SteeringVector | None) -> Tensor:
    if vector is None:
        logits = model(tokens)
    else:
        with steer(model, vector):
            logits = model(tokens)
    return torch.log_softmax(logits.float(), dim=-1)


@dataclass
class RetainedEffect:
    """Effect of a vector vs its top-k feature reconstruction, measured by KL on next-token distributions.

    Attributes:
        k: number of features in the reconstruction.
        kl_full: KL(full-steered ‖ unsteered) — the vector's effect.
        kl_topk: KL(top-k-steered ‖ unsteered) — the reconstruction's effect.
        kl_full_vs_topk: KL(full-steered ‖ top-k-steered) — what the reconstruction misses.
        retained: ``1 - kl_full_vs_topk / kl_full``: 1 = same distributions as the full vector, 0 = no closer
            to them than not steering at all (can be negative).
        cosine: cosine between the reconstruction and the vector.
        norm_ratio: ‖reconstruction‖ / ‖vector‖.
        features: the features used.
    """

    k: int
    kl_full: float
    kl_topk: float
    kl_full_vs_topk: float
    retained: float
    cosine: float
    norm_ratio: float
    features: list[int]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@torch.no_grad()
def steering_effect_retained(
    model: nn.Module,
    vector: SteeringVector,
    sae: Any,
    ks: Sequence[int] = (1, 5, 20),
    prompts: Sequence[str] = (),
    *,
    batch_size: int = 8,
    selection: str = "cosine",
    check_hook: bool = True,
    progress: bool = False,
) -> list[RetainedEffect]:
    """How much of ``vector``'s steering effect survives when it is replaced by its top-k reconstruction.

    The vector (at the strength given, e.g. ``vector * 4``) and each :func:`topk_reconstruction` steer all
    positions of ``prompts``; next-token distributions are compared by KL (see :class:`RetainedEffect`).
    ``selection`` picks the features (see :func:`topk_reconstruction`).

    Example:
        >>> for r in steering_effect_retained(model, v * 4, sae, ks=(1, 5, 20), prompts=texts):  # doctest: +SKIP
        ...     print(r.k, round(r.retained, 3))
    """
    sae = load_sae(sae)
    check_hook_name(model, vector.hook_name)
    prompts = check_texts(prompts, "prompts")
    approxes = [topk_reconstruction(vector, sae, int(k), selection=selection, check_hook=check_hook) for k in ks]
    full = topk = gap = count = 0.0
    sums = [[0.0, 0.0] for _ in approxes]  # per k: KL(top-k‖none), KL(full‖top-k)
    batches = list(_batches(model, prompts, batch_size))
    for tokens, mask in tqdm(batches, desc="retained effect", disable=not progress):
        log_none = _log_probs(model, tokens, None)
        log_full = _log_probs(model, tokens, vector)
        full += float(_kl(log_full, log_none)[mask].sum())
        count += int(mask.sum())
        for row, approx in zip(sums, approxes, strict=True):
            log_topk = _log_probs(model, tokens, approx)
            row[0] += float(_kl(log_topk, log_none)[mask].sum())
            row[1] += float(_kl(log_full, log_topk)[mask].sum())
    kl_full = full / count
    if not math.isfinite(kl_full) or kl_full <= 1e-12:
        raise ValueError(f"the vector does not change the next-token distributions (KL={kl_full}); "
                         "scale it up before measuring how much of its effect is retained")
    results = []
    for k, approx, (topk, gap) in zip(ks, approxes, sums, strict=True):
        results.append(RetainedEffect(
            k=int(k), kl_full=kl_full, kl_topk=topk / count, kl_full_vs_topk=gap / count,
            retained=1.0 - (gap / count) / kl_full, cosine=float(approx.source["cosine_to_vector"]),
            norm_ratio=approx.norm() / vector.norm(), features=list(approx.source["features"]),
        ))
    return results
