"""Batches of PSR teacher records and the steering arithmetic shared by training and its diagnostics.

:class:`PSRBatch` right-pads ``xy'`` and knows, per row, the span (template tokens + response), the positions
that predict response tokens and where the PSR steers (the same rule as at inference,
:func:`hooksteer.psr.hooks.steer_mask`). ``_steer`` is the arithmetic of :class:`hooksteer.psr.hooks.PSRHook`
on a whole residual tensor.

Example:
    >>> batch = make_batch(records, pad_id=0)                                  # doctest: +SKIP
    >>> batch.span_mask().sum(), batch.predict_mask().sum()                     # doctest: +SKIP
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from hooksteer.activations import right_pad
from hooksteer.psr.hooks import steer_mask
from hooksteer.psr.model import PSR, PSRConfig
from hooksteer.psr.teacher import TeacherRecord

__all__ = ["PSRBatch", "make_batch", "split_records"]


@dataclass
class PSRBatch:
    """Right-padded ``xy'`` tokens with the prompt length, response length and span prefix of every row."""

    records: list[TeacherRecord]
    tokens: Int[Tensor, "batch pos"]
    prompt_lengths: Int[Tensor, " batch"]
    response_lengths: Int[Tensor, " batch"]
    n_prefix: Int[Tensor, " batch"]

    def _t(self) -> Tensor:
        return torch.arange(self.tokens.shape[1])[None]

    def response_mask(self) -> Bool[Tensor, "batch pos"]:
        p, n = self.prompt_lengths[:, None], self.response_lengths[:, None]
        return (self._t() >= p) & (self._t() < p + n)

    def span_mask(self) -> Bool[Tensor, "batch pos"]:
        """Where the records hold teacher activations: the last ``n_prefix`` prompt tokens and the response."""
        p, n, k = self.prompt_lengths[:, None], self.response_lengths[:, None], self.n_prefix[:, None]
        return (self._t() >= p - k) & (self._t() < p + n)

    def predict_mask(self) -> Bool[Tensor, "batch pos"]:
        """Positions whose next-token prediction is a response token (``p − 1 .. p + n − 2``)."""
        p, n = self.prompt_lengths[:, None], self.response_lengths[:, None]
        return (self._t() >= p - 1) & (self._t() < p + n - 1)

    def steer_mask(self, config: PSRConfig) -> Bool[Tensor, "batch pos"]:
        """Where the PSR acts, by the same rule as at inference (prompt = ``x``, generated = ``y'``)."""
        t = self._t().expand_as(self.tokens)
        absolute = torch.where(t < (self.prompt_lengths + self.response_lengths)[:, None], t, torch.full_like(t, -1))
        return steer_mask(config.positions, absolute, self.prompt_lengths,
                          template_tokens=config.template_tokens or 0, sink_tokens=config.sink_tokens)

    def stacked(self, kind: str, layer: int) -> Float[Tensor, "batch pos d_model"]:
        """``plain``, ``delta`` or ``target`` (= plain + delta) activations of ``layer`` placed on the span."""
        first = self.records[0].plain[layer]
        out = torch.zeros(len(self.records), self.tokens.shape[1], first.shape[-1])
        for row, record in enumerate(self.records):
            start = record.span_start
            value = record.plain[layer] + record.delta[layer] if kind == "target" else getattr(record, kind)[layer]
            out[row, start : start + record.n_span] = value
        return out


def make_batch(records: Sequence[TeacherRecord], pad_id: int) -> PSRBatch:
    if not records:
        raise ValueError("cannot build an empty batch")
    return PSRBatch(list(records), right_pad([r.pair.plain for r in records], pad_id),
                    torch.tensor([r.pair.plain_prompt.numel() for r in records]),
                    torch.tensor([r.n_tokens for r in records]), torch.tensor([r.n_prefix for r in records]))


def split_records(records: Sequence[TeacherRecord], fraction: float, seed: int = 0
                  ) -> tuple[list[TeacherRecord], list[TeacherRecord]]:
    """(train, held-out) by base prompt: the held-out responses answer prompts no training response answers.

    Example:
        >>> split_records([], 0.2)
        ([], [])
    """
    if fraction <= 0 or not records:
        return list(records), []
    groups: dict[str, list[TeacherRecord]] = {}
    for record in records:
        key = record.pair.base_prompt or str(record.pair.plain_prompt.tolist())
        groups.setdefault(key, []).append(record)
    if len(groups) < 2:
        return list(records), []
    keys = sorted(groups)
    random.Random(f"psr-held-out-{seed}").shuffle(keys)
    n_held = min(len(keys) - 1, max(1, round(fraction * len(keys))))
    held = set(keys[:n_held])
    return ([r for r in records if (r.pair.base_prompt or str(r.pair.plain_prompt.tolist())) not in held],
            [r for r in records if (r.pair.base_prompt or str(r.pair.plain_prompt.tolist())) in held])


def _pre_gate(psr: PSR, layer: int, activation: Tensor) -> Tensor:
    gate = psr.gate(layer)
    return activation @ gate.weight.to(activation.dtype) + gate.bias.to(activation.dtype)


def _steer(psr: PSR, layer: int, activation: Tensor, mask: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(activation + α·λ·z on mask, λ, λ with a straight-through gradient for the dead-gate penalty)``.

    The same arithmetic as :class:`hooksteer.psr.model.PSRHook` at inference.
    """
    pre = _pre_gate(psr, layer, activation)
    lam = torch.relu(pre)
    coefficient = (alpha * lam) * mask.to(lam.dtype)
    steered = activation + coefficient[..., None] * psr.direction(layer).to(activation.dtype)
    return steered, lam, lam + (pre - pre.detach())


def _run_blocks(model: Any, resid: Tensor, start: int, stop: int, chunk: int = 16) -> Tensor:
    """Blocks ``start .. stop − 1`` on a right-padded residual (in row chunks)."""
    if stop <= start:
        return resid
    parts = [model(resid[i : i + chunk], start_at_layer=start, stop_at_layer=stop, padding_side="right")
             for i in range(0, resid.shape[0], chunk)]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


_UNEMBED: weakref.WeakKeyDictionary[Any, tuple[int, Tensor]] = weakref.WeakKeyDictionary()


def _unembed_weight(model: Any) -> Tensor:
    """``W_U.T`` made contiguous once per (frozen) model: TransformerLens copies it on every call (113 MB for
    SmolLM2), which costs as much as the matrix product for the few positions scored here."""
    weight = model.unembed.W_U
    cached = _UNEMBED.get(model)
    if cached is None or cached[0] != weight.data_ptr() or weight.requires_grad:
        cached = (weight.data_ptr(), weight.detach().T.contiguous())
        if not weight.requires_grad:
            _UNEMBED[model] = cached
    return cached[1]


def _logits_at(model: Any, final: Tensor, mask: Tensor) -> Tensor:
    """Final norm + unembedding at the masked positions only (row-major order)."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    picked = final[mask.to(final.device)][None]
    if model.cfg.normalization_type is not None:
        picked = model.ln_final(picked)
    if getattr(model, "unembed", None) is not None and hasattr(model.unembed, "W_U"):
        logits = torch.nn.functional.linear(picked, _unembed_weight(model), model.unembed.b_U)
    else:
        logits = model.unembed(picked)
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)[0]


def _distill_targets(records: Sequence[TeacherRecord]) -> tuple[Tensor, Tensor]:
    if any(not r.pair.has_distill_target for r in records):
        raise ValueError("loss='distill' needs records with teacher top-k (hooksteer.psr.teacher.pairs_from_distill)")
    ids = torch.cat([r.pair.teacher_ids for r in records])  # type: ignore[misc]
    logprobs = torch.cat([r.pair.teacher_logprobs for r in records])  # type: ignore[misc]
    return ids, logprobs
