"""The HyperSteer training losses under ``h_l ← h_l + Δ``: distillation KL to the prompt-steered model
(``loss="distill"``, :func:`distill_loss`) or cross-entropy of target tokens (``loss="ce"``, :func:`target_loss`).

Two equivalent ways to get the steered logits:

* :func:`steered_logits_above_site` (training default): start from the cached, frozen residual at
  ``blocks.{layer}.hook_resid_post``, add Δ, and run only blocks ``layer+1..`` (``start_at_layer``).
* :func:`steered_loss_above_site`: the same, but the final norm and the unembedding (a large
  matrix for 49k-token vocabularies) are applied only at the target positions.
* :func:`steered_logits_full`: a full forward with :func:`hooksteer.hooks.add_vector` at the same hook
  point - the mechanism used at inference. The two agree to float precision (tested).

With ``token_weights="teacher_shift"`` (distillation only) each answer token's KL is weighted by
KL(teacher ‖ unsteered model) at that token (:func:`teacher_shift_weights`, kept per example by
:class:`TeacherShiftCache`): the tokens where the steering prompt changed the prediction count, the generic ones
hardly do.

With several sites (``HyperSteerConfig.layers``) Δ has shape ``(batch, n_sites, d_model)``: its first row is added
to the cached residual at the lowest site, the others by hooks at ``blocks.{l}.hook_resid_post`` while the blocks
above run (:func:`site_hooks`); every function taking ``layer`` also takes the list of sites. With gates
(``HyperSteerConfig.gate``) each site's row is ``[z | w | b]`` and adds ``λ(h_t)·z`` (:mod:`.gating`).

Δ goes to every position (``positions="all"``), to the base prompt's tokens only (``positions="prompt"``,
:func:`steered_positions`: then the answer reads Δ only through attention to the prompt, as it reads a steering
prompt placed in its context) or to the positions that predict answer tokens (``positions="answer"``: the prompt's
last token and the answer, so the instruction is read unsteered; ``hooksteer.steer(..., positions="answer")`` at
inference).

Example:
    >>> resid = resid_at_layer(model, batch.tokens, layer)                # doctest: +SKIP
    >>> loss_sum, n = steered_loss_above_site(model, resid, layer, delta, batch, "distill")  # doctest: +SKIP
    >>> same_sum, _ = target_loss(steered_logits_full(model, batch.tokens, layer, delta), batch)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from hooksteer.distill.loss import topk_kl
from hooksteer.hooks import add_vector
from hooksteer.hypersteer.config import STEERED_POSITIONS
from hooksteer.hypersteer.data import HyperBatch
from hooksteer.hypersteer.gating import add_site_params, is_gated


def steered_positions(batch: HyperBatch, positions: str = "all") -> Bool[Tensor, "batch pos"] | None:
    """Where Δ is added in ``batch``'s right-padded rows: ``None`` for every position (``"all"``), True on
    each row's base-prompt tokens (``"prompt"``; the last of them predicts the answer's first token), or True from
    each row's last prompt token on (``"answer"``: every position predicting an answer token; padding after the
    answer is steered too, harmlessly, as nothing reads it).

    Example:
        >>> steered_positions(batch, "prompt")[0]           # doctest: +SKIP
        tensor([ True,  True,  True, False, False])
        >>> steered_positions(batch, "answer")[0]           # doctest: +SKIP
        tensor([False, False,  True,  True,  True])
    """
    if positions == "all":
        return None
    if positions not in STEERED_POSITIONS:
        raise ValueError(f"positions must be one of {STEERED_POSITIONS}, got {positions!r}")
    width = batch.tokens.shape[1]
    t = torch.arange(width, device=batch.tokens.device)[None]
    prompt_lengths = batch.prompt_lengths.to(batch.tokens.device)[:, None]
    return t < prompt_lengths if positions == "prompt" else t >= prompt_lengths - 1


def site_list(layer: int | Sequence[int]) -> list[int]:
    """The injection layers as a list, lowest first (one int: one site).

    Example:
        >>> site_list(20), site_list([10, 20])
        ([20], [10, 20])
    """
    return [int(layer)] if isinstance(layer, int) else [int(x) for x in layer]


def per_site(delta: Tensor, layers: Sequence[int]) -> list[Tensor]:
    """``delta`` split into one ``(batch, d_model)`` vector per site: a 2-D Δ is the one site's, a 3-D Δ
    ``(batch, n_sites, d_model)`` has a row per site."""
    if delta.ndim == 2:
        if len(layers) != 1:
            raise ValueError(f"a (batch, d_model) Δ steers one site, but {len(layers)} layers were given")
        return [delta]
    if delta.ndim != 3 or delta.shape[1] != len(layers):
        raise ValueError(f"Δ of shape {tuple(delta.shape)} does not fit {len(layers)} sites "
                         "(expected (batch, n_sites, d_model))")
    return list(delta.unbind(1))


def site_hooks(layers: Sequence[int], deltas: Sequence[Tensor], steered: Tensor | None
               ) -> list[tuple[str, Callable[..., Tensor]]]:
    """TransformerLens forward hooks adding ``deltas[i]`` at ``blocks.{layers[i]}.hook_resid_post`` (every position,
    or where ``steered`` is True), for the given sites."""
    def make(delta: Tensor) -> Callable[..., Tensor]:
        def hook(activation: Tensor, hook: Any) -> Tensor:  # noqa: ARG001 - TransformerLens hook signature
            return _add_delta(activation, delta.to(activation.device), steered)
        return hook
    return [(f"blocks.{layer}.hook_resid_post", make(delta)) for layer, delta in zip(layers, deltas, strict=True)]


def _upper_sites(model: Any, layers: list[int], deltas: list[Tensor], steered: Tensor | None) -> Any:
    """Context installing the hooks of every site above the lowest (nothing for one site)."""
    if len(layers) == 1:
        return nullcontext()
    return model.hooks(fwd_hooks=site_hooks(layers[1:], deltas[1:], steered))


def _add_delta(resid: Tensor, delta: Tensor, steered: Tensor | None) -> Tensor:
    """One site's steering added to ``resid``: a vector row, or a gated row ``[z | w | b]`` (:mod:`.gating`)."""
    return add_site_params(resid, delta, steered)


def steered_logits_above_site(
    model: Any, resid: Float[Tensor, "batch pos d_model"], layer: int | Sequence[int],
    delta: Float[Tensor, "batch d_model"] | Float[Tensor, "batch n_sites d_model"],
    steered: Bool[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of ``model`` when ``delta`` is added at ``blocks.{layer}.hook_resid_post`` (at every position, or
    where ``steered`` is True: :func:`steered_positions`), computed from that site's (frozen) residual by running
    only the blocks above it. With several sites, ``resid`` is the lowest site's."""
    layers = site_list(layer)
    deltas = per_site(delta, layers)
    with _upper_sites(model, layers, deltas, steered):
        return model(_add_delta(resid, deltas[0], steered), start_at_layer=layers[0] + 1, padding_side="right")


def steered_logits_full(
    model: Any, tokens: Tensor, layer: int | Sequence[int],
    delta: Float[Tensor, "batch d_model"] | Float[Tensor, "batch n_sites d_model"],
    steered: Bool[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of a full forward with a per-row steering hook at ``blocks.{layer}.hook_resid_post`` (every position,
    or where ``steered`` is True), at each site when several are given."""
    device = next(model.parameters()).device
    layers = site_list(layer)
    deltas = per_site(delta, layers)
    if steered is None and len(layers) == 1 and not is_gated(deltas[0], int(model.cfg.d_model)):
        hooks = [(f"blocks.{layers[0]}.hook_resid_post", add_vector(deltas[0], 1.0))]
    else:
        hooks = site_hooks(layers, deltas, steered)
    with model.hooks(fwd_hooks=hooks):
        return model(tokens.to(device), padding_side="right")


def target_logits_above_site(model: Any, resid: Tensor, layer: int, mask: Tensor) -> Tensor:
    """Logits at the target positions picked by ``mask``, running blocks ``layer+1..`` on ``resid``; the final norm
    and the unembedding only where ``mask`` is True."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    final = model(resid, start_at_layer=layer + 1, stop_at_layer=int(model.cfg.n_layers), padding_side="right")
    picked = final[:, :-1][mask.to(final.device)][None]  # (1, n_target_tokens, d_model)
    if model.cfg.normalization_type is not None:
        picked = model.ln_final(picked)
    return apply_softcap(model.unembed(picked), model.cfg.output_logits_soft_cap)[0]


def steered_loss_above_site(
    model: Any, resid: Float[Tensor, "batch pos d_model"], layer: int | Sequence[int],
    delta: Float[Tensor, "batch d_model"] | Float[Tensor, "batch n_sites d_model"], batch: HyperBatch, loss: str = "ce", positions: str = "all", weights: Float[Tensor, " n"] | None = None,
) -> tuple[Tensor, Tensor]:
    """``loss`` (``"ce"``: :func:`target_loss`, ``"distill"``: :func:`distill_loss`) of
    :func:`steered_logits_above_site` with Δ at ``positions`` (``"all"`` or ``"prompt"``), unembedding only the
    target positions; ``weights`` (one per target token, e.g. :meth:`TeacherShiftCache.weights`) scale each
    token's KL.

    Blocks ``layer+1..`` still run over every position (prompt tokens are the targets' context), but
    the final norm and the (large) unembedding are applied only where the loss needs them. Equal to
    the loss of ``steered_logits_above_site(...)`` (tested).
    """
    mask = batch.loss_mask().to(resid.device)
    layers = site_list(layer)
    deltas = per_site(delta, layers)
    steered = steered_positions(batch, positions)
    with _upper_sites(model, layers, deltas, steered):
        logits = target_logits_above_site(model, _add_delta(resid, deltas[0], steered), layers[0], mask)
    return _loss_at_targets(logits, batch, mask, loss, weights)


def teacher_shift(unsteered_logits: Float[Tensor, "n d_vocab"], batch: HyperBatch) -> Float[Tensor, " n"]:
    """KL(teacher ‖ unsteered model) at each of the batch's target tokens: how far the steering prompt moved the
    prediction there."""
    if batch.teacher_ids is None or batch.teacher_logprobs is None:
        raise ValueError("teacher_shift weights need teacher distributions in the batch (DistillRecord examples)")
    return topk_kl(unsteered_logits, batch.teacher_ids, batch.teacher_logprobs).clamp_min(0.0)


def mean_one(shift: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """``shift`` rescaled to mean 1 (all ones when it is 0 everywhere)."""
    mean = shift.mean()
    if not bool(mean > 1e-12):
        return torch.ones_like(shift)
    return shift / mean


def teacher_shift_weights(unsteered_logits: Float[Tensor, "n d_vocab"], batch: HyperBatch) -> Float[Tensor, " n"]:
    """Per-target-token weights ∝ KL(teacher ‖ unsteered model), normalised to mean 1 over the batch's target tokens
    (all 1 when the teacher equals the unsteered model everywhere).

    Example:
        >>> w = teacher_shift_weights(unsteered_logits_at_targets, batch)   # doctest: +SKIP
        >>> float(w.mean())                                                  # doctest: +SKIP
        1.0
    """
    return mean_one(teacher_shift(unsteered_logits, batch))


class TeacherShiftCache:
    """Per-example :func:`teacher_shift` of each target token, kept on the CPU: the base model is frozen and the
    teacher cached, so it is the same every epoch and is computed once per example rather than every step.

    Example:
        >>> shifts = TeacherShiftCache()
        >>> w = shifts.weights(batch, lambda: target_logits_above_site(model, resid, layer, batch.loss_mask()))  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._store: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    def weights(self, batch: HyperBatch, unsteered_logits: Callable[[], Tensor]) -> Float[Tensor, " n"]:
        """:func:`teacher_shift_weights` of ``batch`` (mean 1 over its target tokens); ``unsteered_logits()`` gives
        the unsteered model's logits at the batch's target tokens and is called only when a row is not cached."""
        if any(index not in self._store for index in batch.indices):
            with torch.no_grad():
                shift = teacher_shift(unsteered_logits(), batch)
            for index, row in zip(batch.indices, shift.split(batch.loss_mask().sum(1).tolist()), strict=True):
                self._store[index] = row.detach().cpu()
        return mean_one(torch.cat([self._store[index] for index in batch.indices]).to(batch.tokens.device))


def _loss_at_targets(logits: Tensor, batch: HyperBatch, mask: Tensor, loss: str,
                     weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Summed loss over the target positions picked by ``mask`` (``logits`` already restricted to them), each
    position's term times ``weights`` when given (distillation only)."""
    if loss == "distill":
        if batch.teacher_ids is None or batch.teacher_logprobs is None:
            raise ValueError("loss='distill' needs teacher distributions in the batch (DistillRecord examples)")
        if batch.teacher_ids.shape[0] != logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} target positions but {batch.teacher_ids.shape[0]} teacher rows")
        per_token = topk_kl(logits, batch.teacher_ids, batch.teacher_logprobs)
        if weights is not None:
            per_token = per_token * weights.to(per_token.device)
        return per_token.sum(), mask.sum()
    if weights is not None:
        raise ValueError("token weights apply to loss='distill' only")
    if loss != "ce":
        raise ValueError(f"unknown loss {loss!r}; expected 'ce' or 'distill'")
    labels = batch.tokens[:, 1:].to(logits.device)[mask]
    return F.cross_entropy(logits.float(), labels, reduction="sum"), mask.sum()


def distill_loss(logits: Float[Tensor, "batch pos d_vocab"], batch: HyperBatch,
                 weights: Float[Tensor, " n"] | None = None) -> tuple[Tensor, Tensor]:
    """Summed KL(teacher ‖ student) over target tokens (the batch's cached top-k teacher), and how many
    tokens it covers. Zero when the student's distributions equal the teacher's. ``weights`` (one per target
    token, e.g. :meth:`TeacherShiftCache.weights`) scale each token's KL."""
    mask = batch.loss_mask().to(logits.device)
    return _loss_at_targets(logits[:, :-1][mask], batch, mask, "distill", weights)


def target_loss(logits: Float[Tensor, "batch pos d_vocab"], batch: HyperBatch) -> tuple[Tensor, Tensor]:
    """Summed next-token cross-entropy over target tokens only, and how many tokens it covers.

    Returns ``(loss_sum, n_tokens)``; divide for the token-mean loss (kept apart so that losses of
    several batches or processes can be combined exactly).
    """
    mask = batch.loss_mask().to(logits.device)
    return _loss_at_targets(logits[:, :-1][mask], batch, mask, "ce")
