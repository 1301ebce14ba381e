"""Does H tell concepts apart? Cosine structure of HyperSteer's vectors over concepts × base prompts.

A hypernetwork trained on too few concepts tends to write one concept-independent direction (the
"answer like a steered model" average of its targets) whatever the steering prompt says. That shows
up as a between-concept cosine near 1 long before the steering score says anything. This module
measures it:

* ``between_concepts``: mean cosine between the vectors of two *different* steering prompts for the
  *same* base prompt (1.0 = H ignores the steering prompt);
* ``within_concept``: mean cosine between the vectors of the *same* steering prompt for two different
  base prompts (only for variants that read the base prompt; 1.0 = H ignores the base prompt);
* ``separation``: ``within_concept - between_concepts`` for context variants, ``1 - between_concepts``
  for ``no_context`` (larger = concepts more distinct than prompts are);
* ``shared_fraction``: how much of the vectors' squared norm is their common mean,
  ``‖mean Δ‖² / mean ‖Δ‖²`` (1.0 = one vector for everything, 0 = no shared part);
* ``collapsed``: ``between_concepts`` ≥ :data:`COLLAPSE_COSINE` — H writes (nearly) one vector whatever
  the steering prompt says.

:func:`vector_agreement` compares two hypernetworks (e.g. trained with 2 and with 20 blocks): the mean
cosine between their vectors for the same (steering prompt, base prompt) pairs.

Example:
    >>> import torch
    >>> round(mean_pairwise_cosine(torch.eye(3)), 6)
    0.0
    >>> round(mean_pairwise_cosine(torch.ones(4, 2)), 6)
    1.0
    >>> round(shared_fraction(torch.tensor([[1.0, 1.0], [1.0, -1.0]])), 6)
    0.5
    >>> report = vector_separation(hyper, ["Talk about cats.", "Talk about Paris."], ["Hi!", "Plan a trip."])  # doctest: +SKIP
    >>> report["between_concepts"]   # doctest: +SKIP
    0.41
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["COLLAPSE_COSINE", "mean_pairwise_cosine", "shared_fraction", "vector_agreement", "vector_separation"]

#: Mean between-concept cosine from which a hypernetwork counts as collapsed (one vector for all concepts).
COLLAPSE_COSINE = 0.95


def mean_pairwise_cosine(vectors: Float[Tensor, "n d_model"]) -> float:
    """Mean cosine similarity over the ``n·(n-1)`` ordered pairs of distinct rows.

    Raises:
        ValueError: fewer than two rows, or a zero row (its cosine is undefined).
    """
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise ValueError(f"need at least two vectors of shape (n, d_model), got shape {tuple(vectors.shape)}")
    vectors = vectors.detach().float()
    norms = vectors.norm(dim=-1)
    if bool((norms == 0).any()):
        raise ValueError("a vector is all zeros: its cosine with the others is undefined")
    units = vectors / norms[:, None]
    cosines = units @ units.T
    off_diagonal = ~torch.eye(len(units), dtype=torch.bool, device=units.device)
    return float(cosines[off_diagonal].mean())


def shared_fraction(vectors: Float[Tensor, "n d_model"]) -> float:
    """Share of the vectors' mean squared norm that is their common mean: ``‖mean‖² / mean ‖v‖²``.

    1.0 when every vector is the same, about ``1/n`` for unrelated random vectors, 0 when they cancel out.

    Raises:
        ValueError: fewer than two rows, or all vectors zero.
    """
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise ValueError(f"need at least two vectors of shape (n, d_model), got shape {tuple(vectors.shape)}")
    vectors = vectors.detach().float()
    total = float(vectors.pow(2).sum(-1).mean())
    if total == 0:
        raise ValueError("all vectors are zero: the shared fraction is undefined")
    return float(vectors.mean(0).pow(2).sum()) / total


def _grid(hyper: Any, steering_prompts: Sequence[str], base_prompts: Sequence[str]) -> Float[Tensor, "n d_model"]:
    """H's vectors for every (steering prompt, base prompt) pair, concept-major (several sites' vectors joined
    into one row)."""
    steer = [s for s in steering_prompts for _ in base_prompts]
    if hyper.needs_base_prompt:
        return hyper.vectors(steer, [b for _ in steering_prompts for b in base_prompts]).float().cpu().flatten(1)
    return hyper.vectors(steer).float().cpu().flatten(1)


def vector_separation(hyper: Any, steering_prompts: Sequence[str], base_prompts: Sequence[str]) -> dict[str, Any]:
    """Between-concept and within-concept cosines of ``hyper``'s vectors (see the module docstring).

    Args:
        hyper: a :class:`~hooksteer.hypersteer.HyperSteer`.
        steering_prompts: one steering prompt per concept (at least two).
        base_prompts: base prompts (at least one; at least two for ``within_concept``).
    """
    steering_prompts, base_prompts = list(steering_prompts), list(base_prompts)
    if len(steering_prompts) < 2:
        raise ValueError("need at least two steering prompts (concepts) to compare")
    if not base_prompts:
        raise ValueError("need at least one base prompt")
    uses_context = bool(hyper.needs_base_prompt)
    prompts_used = base_prompts if uses_context else base_prompts[:1]  # H(s) is the same for every prompt
    # (n_prompts, n_concepts, d_model), in one batched pass through H
    stacked = _grid(hyper, steering_prompts, prompts_used).view(len(steering_prompts), len(prompts_used), -1)
    stacked = stacked.transpose(0, 1)
    between = sum(mean_pairwise_cosine(row) for row in stacked) / len(stacked)
    shared = sum(shared_fraction(row) for row in stacked) / len(stacked)
    within = None
    if uses_context and len(prompts_used) > 1:
        within = sum(mean_pairwise_cosine(stacked[:, c]) for c in range(stacked.shape[1])) / stacked.shape[1]
    return {"variant": getattr(hyper, "kind", hyper.config.variant), "between_concepts": between,
            "within_concept": within,
            "separation": (within - between) if within is not None else 1.0 - between,
            "shared_fraction": shared, "collapsed": between >= COLLAPSE_COSINE,
            "n_concepts": len(steering_prompts), "n_prompts": len(prompts_used),
            "mean_norm": float(stacked.norm(dim=-1).mean())}


def vector_agreement(hyper_a: Any, hyper_b: Any, steering_prompts: Sequence[str], base_prompts: Sequence[str]) -> float:
    """Mean cosine between ``hyper_a``'s and ``hyper_b``'s vectors for the same (steering, base prompt) pairs.

    1.0 means the two hypernetworks steer the same way on these pairs, whatever their sizes.
    """
    steering_prompts, base_prompts = list(steering_prompts), list(base_prompts)
    if not steering_prompts or not base_prompts:
        raise ValueError("need at least one steering prompt and one base prompt")
    a, b = _grid(hyper_a, steering_prompts, base_prompts), _grid(hyper_b, steering_prompts, base_prompts)
    if a.shape != b.shape:
        raise ValueError(f"the two hypernetworks write vectors of different shapes: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())
