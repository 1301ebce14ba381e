"""The HyperSteer training losses under ``h_l ← h_l + Δ``: distillation KL to the prompt-steered model
(``loss="distill"``, :func:`distill_loss`) or cross-entropy of target tokens (``loss="ce"``, :func:`target_loss`).

Two equivalent ways to get the steered logits:

* :func:`steered_logits_above_site` (training default): start from the cached, frozen residual at
  ``blocks.{layer}.hook_resid_post``, add Δ, and run only blocks ``layer+1..`` (``start_at_layer``).
* :func:`steered_loss_above_site`: the same, but the final norm and the unembedding (a large
  matrix for 49k-token vocabularies) are applied only at the target positions.
* :func:`steered_logits_full`: a full forward with :func:`hooksteer.hooks.add_vector` at the same hook
  point - the mechanism used at inference. The two agree to float precision (tested).

Δ goes to every position (``positions="all"``) or to the base prompt's tokens only (``positions="prompt"``,
:func:`steered_positions`): then the answer reads Δ only through attention to the prompt, as it reads a steering
prompt placed in its context.

Example:
    >>> resid = resid_at_layer(model, batch.tokens, layer)                # doctest: +SKIP
    >>> loss_sum, n = steered_loss_above_site(model, resid, layer, delta, batch, "distill")  # doctest: +SKIP
    >>> same_sum, _ = target_loss(steered_logits_full(model, batch.tokens, layer, delta), batch)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from hooksteer.distill.loss import topk_kl
from hooksteer.hooks import add_vector
from hooksteer.hypersteer.data import HyperBatch


def steered_positions(batch: HyperBatch, positions: str = "all") -> Bool[Tensor, "batch pos"] | None:
    """Where Δ is added in ``batch``'s right-padded rows: ``None`` for every position (``"all"``), or True on
    each row's base-prompt tokens (``"prompt"``; the last of them predicts the answer's first token).

    Example:
        >>> steered_positions(batch, "prompt")[0]           # doctest: +SKIP
        tensor([ True,  True,  True, False, False])
    """
    if positions == "all":
        return None
    if positions != "prompt":
        raise ValueError(f"positions must be 'all' or 'prompt', got {positions!r}")
    width = batch.tokens.shape[1]
    return torch.arange(width, device=batch.tokens.device)[None] < batch.prompt_lengths.to(batch.tokens.device)[:, None]


def _add_delta(resid: Tensor, delta: Tensor, steered: Tensor | None) -> Tensor:
    added = delta[:, None, :].to(resid.dtype)
    if steered is None:
        return resid + added
    return resid + added * steered[:, : resid.shape[1], None].to(device=resid.device, dtype=resid.dtype)


def steered_logits_above_site(
    model: Any, resid: Float[Tensor, "batch pos d_model"], layer: int, delta: Float[Tensor, "batch d_model"],
    steered: Bool[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of ``model`` when ``delta`` is added at ``blocks.{layer}.hook_resid_post`` (at every position, or
    where ``steered`` is True: :func:`steered_positions`), computed from that site's (frozen) residual by running
    only the blocks above it."""
    return model(_add_delta(resid, delta, steered), start_at_layer=layer + 1, padding_side="right")


def steered_logits_full(
    model: Any, tokens: Tensor, layer: int, delta: Float[Tensor, "batch d_model"],
    steered: Bool[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of a full forward with a per-row steering hook at ``blocks.{layer}.hook_resid_post`` (every position,
    or where ``steered`` is True)."""
    device = next(model.parameters()).device
    if steered is None:
        hook = add_vector(delta, 1.0)
    else:
        def hook(activation: Tensor, hook: Any) -> Tensor:  # noqa: ARG001 - TransformerLens hook signature
            return _add_delta(activation, delta.to(activation.device), steered)
    with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post", hook)]):
        return model(tokens.to(device), padding_side="right")


def steered_loss_above_site(
    model: Any, resid: Float[Tensor, "batch pos d_model"], layer: int, delta: Float[Tensor, "batch d_model"],
    batch: HyperBatch, loss: str = "ce", positions: str = "all",
) -> tuple[Tensor, Tensor]:
    """``loss`` (``"ce"``: :func:`target_loss`, ``"distill"``: :func:`distill_loss`) of
    :func:`steered_logits_above_site` with Δ at ``positions`` (``"all"`` or ``"prompt"``), unembedding only the
    target positions.

    Blocks ``layer+1..`` still run over every position (prompt tokens are the targets' context), but
    the final norm and the (large) unembedding are applied only where the loss needs them. Equal to
    the loss of ``steered_logits_above_site(...)`` (tested).
    """
    from transformer_lens.utilities.activation_functions import apply_softcap

    steered = _add_delta(resid, delta, steered_positions(batch, positions))
    n_layers = int(model.cfg.n_layers)
    final = model(steered, start_at_layer=layer + 1, stop_at_layer=n_layers, padding_side="right")
    mask = batch.loss_mask().to(final.device)
    picked = final[:, :-1][mask][None]  # (1, n_target_tokens, d_model)
    if model.cfg.normalization_type is not None:
        picked = model.ln_final(picked)
    logits = apply_softcap(model.unembed(picked), model.cfg.output_logits_soft_cap)[0]
    return _loss_at_targets(logits, batch, mask, loss)


def _loss_at_targets(logits: Tensor, batch: HyperBatch, mask: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """Summed loss over the target positions picked by ``mask`` (``logits`` already restricted to them)."""
    if loss == "distill":
        if batch.teacher_ids is None or batch.teacher_logprobs is None:
            raise ValueError("loss='distill' needs teacher distributions in the batch (DistillRecord examples)")
        if batch.teacher_ids.shape[0] != logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} target positions but {batch.teacher_ids.shape[0]} teacher rows")
        return topk_kl(logits, batch.teacher_ids, batch.teacher_logprobs).sum(), mask.sum()
    if loss != "ce":
        raise ValueError(f"unknown loss {loss!r}; expected 'ce' or 'distill'")
    labels = batch.tokens[:, 1:].to(logits.device)[mask]
    return F.cross_entropy(logits.float(), labels, reduction="sum"), mask.sum()


def distill_loss(logits: Float[Tensor, "batch pos d_vocab"], batch: HyperBatch) -> tuple[Tensor, Tensor]:
    """Summed KL(teacher ‖ student) over target tokens (the batch's cached top-k teacher), and how many
    tokens it covers. Zero when the student's distributions equal the teacher's."""
    mask = batch.loss_mask().to(logits.device)
    return _loss_at_targets(logits[:, :-1][mask], batch, mask, "distill")


def target_loss(logits: Float[Tensor, "batch pos d_vocab"], batch: HyperBatch) -> tuple[Tensor, Tensor]:
    """Summed next-token cross-entropy over target tokens only, and how many tokens it covers.

    Returns ``(loss_sum, n_tokens)``; divide for the token-mean loss (kept apart so that losses of
    several batches or processes can be combined exactly).
    """
    mask = batch.loss_mask().to(logits.device)
    return _loss_at_targets(logits[:, :-1][mask], batch, mask, "ce")
