"""Concept vectors read off the model: what a steering prompt changes in the activations, site by site.

For one steering prompt ``s`` and its distillation records (base prompt ``x``, the prompted model's answer ``y``),
the vector at site ``l`` is the mean, over the answer's tokens and the assistant-turn template before them, of

    A_l(s ⊕ x, y) − A_l(x, y),   the second steered by the vectors already set at the sites below ``l``,

so each site adds only what the sites below it did not already cause (PSR's constant ``init="mean_delta"``,
:func:`hooksteer.psr.passes.steered_pass`, one concept at a time, no gate and no training). With
``positions="answer"`` (vectors for a :class:`~hooksteer.hypersteer.HyperSteerConfig` that steers only where answer
tokens are predicted) the mean runs over the prompt's last token and the answer, and the sites below steer only
there. Nothing is learned:
the vector of a new steering prompt costs the prompted model's answers to a few base prompts and three passes over
them (prompted, plain, steered), and it is specific to the prompt by construction. It is the steering prompt's *activation difference* — the form a
hypernetwork reading the model's own activations could write directly.

Example:
    >>> from hooksteer.hypersteer import ConceptVectors, HyperSteerConfig                      # doctest: +SKIP
    >>> table = prompt_difference_vectors(model, distill_records, layers=range(10, 30))         # doctest: +SKIP
    >>> vectors = ConceptVectors.from_vectors(model, table, HyperSteerConfig(layers=list(range(10, 30))))  # doctest: +SKIP
    >>> vectors.vector("Write about Volcano. Every sentence must be about Volcano.")           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["prompt_difference_vectors"]


def prompt_difference_vectors(model: Any, records: Sequence[Any], layers: Sequence[int], *,
                              distill_config: Any = None, concepts: Mapping[str, Any] | None = None,
                              batch_size: int = 8, positions: str = "all",
                              progress: bool = False) -> dict[str, Float[Tensor, "n_sites d_model"]]:
    """One ``(n_sites, d_model)`` stack of mean activation differences per steering prompt of ``records``.

    Args:
        model: the frozen ``HookedTransformer`` the records were made with.
        records: :class:`hooksteer.distill.DistillRecord` s (several base prompts per steering prompt; the
            vectors are averaged over all of a prompt's answer tokens).
        layers: the sites (``blocks.{l}.hook_resid_post``), ascending.
        positions: where the vectors will steer, as ``HyperSteerConfig.positions``: ``"all"`` (every token; the mean
            runs over the assistant-turn template and the answer) or ``"answer"`` (the prompt's last token and the
            answer: the mean runs over those, and the sites below steer only there).
        distill_config: the :class:`hooksteer.distill.DistillConfig` the records were made with (default: that
            of a :class:`~hooksteer.distill.DistillData`, else the default): it fixes the prompted text.
        concepts: ``{concept_id: Concept}`` when the teacher read the concept's reference text.
        batch_size: sequences per forward pass.
        progress: a progress bar over steering prompts.

    Returns:
        ``{steering_prompt: vectors}`` in the order the prompts first appear, on the CPU, float32.

    Raises:
        ValueError: no records, layers empty / outside the model, or positions other than ``"all"`` /
            ``"answer"`` (a mean over the answer says nothing about a vector placed on the prompt only).
    """
    from tqdm.auto import tqdm

    from hooksteer.psr.model import PSR, PSRConfig
    from hooksteer.psr.passes import steered_pass
    from hooksteer.psr.teacher import (
        block_indices,
        compute_teacher,
        pairs_from_distill,
        template_suffix_length,
    )

    if not records:
        raise ValueError("no distillation records: the activation difference needs answers to average over")
    if positions not in ("all", "answer"):
        raise ValueError(f"positions must be 'all' or 'answer' for vectors read off the answers, got {positions!r}")
    sites = block_indices(model, layers)
    pairs = pairs_from_distill(model, records, distill_config, concepts=concepts)  # tokenised as the teacher read it
    groups: dict[str, list[Any]] = {}
    for record, pair in zip(records, pairs, strict=True):
        groups.setdefault(record.steering_prompt, []).append(pair)
    prefix = template_suffix_length(model) if positions == "all" else 1  # "answer": the last prompt token on
    config = PSRConfig(layers=sites, d_model=int(model.cfg.d_model), variant="single" if len(sites) == 1 else "adaptive",
                       positions="all" if positions == "all" else "response", init="mean_delta", local_steps=0, steps=0,
                       template_tokens=prefix)
    vectors: dict[str, Tensor] = {}
    with torch.no_grad():
        for steering_prompt, group in tqdm(groups.items(), desc="activation differences", disable=not progress):
            teacher = compute_teacher(model, group, sites, batch_size=batch_size, prefix_tokens=prefix)
            psr = PSR(config).to(next(model.parameters()).device)
            steered_pass(model, psr, teacher, fit="mean_delta", chunk=batch_size)
            vectors[steering_prompt] = torch.stack([psr.direction(layer).detach().float().cpu() for layer in sites])
    return vectors
