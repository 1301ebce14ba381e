"""The PSR's inference hook: ``α·λ(h_t)·z`` at the positions of a steering mode, per row of a left-padded batch.

Where a PSR acts (``PSRConfig.positions``):

* ``"response"``: the last ``template_tokens`` prompt tokens (the chat-template tokens that open the assistant
  turn, the same in ``x`` and ``x'``) and every generated token — the last prompt token predicts the first
  answer token, so that token is steered too;
* ``"generated"``: generated tokens only;
* ``"generated+K"`` (inference only): generated tokens from the (K+1)-th on — the answer's first K+1 tokens are
  written unsteered, so it starts on the request before the PSR acts (``"generated+0"`` = ``"generated"``);
* ``"generated+K:M"`` (inference only): the slice ``[K:M]`` of the generated positions — as ``"generated+K"``,
  but from the (M+1)-th generated token on the PSR stops again (the M-th, the last one steered, predicts answer
  token M+1); with answers of at most M tokens it writes what ``"generated+K"`` writes;
* ``"after_sink"``: every position from ``sink_tokens`` on (the whole prompt except the attention sink);
* ``"all"``, or explicit absolute positions.

Example:
    >>> import torch
    >>> steer_mask("generated", torch.tensor([[0, 1, 2, 3]]), torch.tensor([2])).int().tolist()
    [[0, 0, 1, 1]]
"""

from __future__ import annotations

import re
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from hooksteer.hooks import AddGated, PositionTracker
from hooksteer.vectors import check_finite

__all__ = ["INFERENCE_MODES", "PSRHook", "RowScaledGate", "check_mode", "generated_delay", "generated_window",
           "steer_mask"]

#: Named modes a PSR can steer at inference (``"generated+K"`` and ``"generated+K:M"`` besides: see
#: :func:`generated_window`).
INFERENCE_MODES: tuple[str, ...] = ("response", "generated", "after_sink", "all")
_DELAYED = re.compile(r"generated\+(\d{1,4})(?::(\d{1,5}))?")


def generated_window(mode: Any) -> tuple[int, int | None] | None:
    """``(K, M)`` of a ``"generated+K:M"`` mode, ``(K, None)`` of ``"generated+K"``, else ``None`` (also when
    ``M <= K``: :func:`check_mode` says why).

    Example:
        >>> generated_window("generated+8:32"), generated_window("generated+4"), generated_window("generated")
        ((8, 32), (4, None), None)
    """
    match = _DELAYED.fullmatch(mode) if isinstance(mode, str) else None
    if match is None:
        return None
    start, end = int(match.group(1)), match.group(2)
    if end is not None and int(end) <= start:
        return None
    return start, None if end is None else int(end)


def generated_delay(mode: Any) -> int | None:
    """K of a ``"generated+K"`` or ``"generated+K:M"`` mode (generated tokens from the (K+1)-th on are steered),
    else ``None``.

    Example:
        >>> generated_delay("generated+4"), generated_delay("generated+4:16"), generated_delay([3, 4])
        (4, 4, None)
    """
    window = generated_window(mode)
    return None if window is None else window[0]


def check_mode(mode: Any) -> Any:
    """``mode`` itself when a PSR can steer it (a named mode, ``"generated+K"``, ``"generated+K:M"`` with
    M > K, or explicit positions), else a ``ValueError`` naming the choices.

    Example:
        >>> check_mode("generated+8:32")
        'generated+8:32'
    """
    if isinstance(mode, str) and mode not in INFERENCE_MODES and generated_window(mode) is None:
        match = _DELAYED.fullmatch(mode)
        if match is not None:  # only an empty window gets here
            raise ValueError(f"positions {mode!r}: the window generated+K:M needs M > K (it steers the generated "
                             "positions K+1 … M)")
        raise ValueError(f"positions must be one of {INFERENCE_MODES}, 'generated+K', 'generated+K:M' (0 <= K < M) "
                         f"or explicit indices, got {mode!r}")
    return mode


def steer_mask(mode: Any, absolute: Int[Tensor, "batch pos"], prompt_lengths: Int[Tensor, " batch"] | None, *,
               template_tokens: int = 0, sink_tokens: int = 1) -> Bool[Tensor, "batch pos"]:
    """Which positions a PSR steers, from absolute positions (−1 = left padding) and each row's prompt length.

    Example:
        >>> absolute = torch.tensor([[-1, 0, 1, 2, 3], [0, 1, 2, 3, 4]])
        >>> steer_mask("response", absolute, torch.tensor([3, 4]), template_tokens=1).int().tolist()
        [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]
        >>> steer_mask("after_sink", absolute, None, sink_tokens=1).int().tolist()
        [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]
        >>> steer_mask("generated+1", absolute, torch.tensor([2, 3])).int().tolist()
        [[0, 0, 0, 0, 1], [0, 0, 0, 0, 1]]
        >>> steer_mask("generated+0:1", absolute, torch.tensor([2, 2])).int().tolist()
        [[0, 0, 0, 1, 0], [0, 0, 1, 0, 0]]
    """
    real = absolute >= 0
    if isinstance(mode, str):
        if mode == "all":
            return real
        if mode == "after_sink":
            return absolute >= sink_tokens
        if prompt_lengths is None:
            raise RuntimeError(f"positions={mode!r} needs the prompt length: no forward pass was tracked")
        start = prompt_lengths.to(absolute.device)[:, None]
        if mode == "response":
            return real & (absolute >= start - int(template_tokens))
        if mode == "generated":
            return absolute >= start
        window = generated_window(mode)
        if window is not None:
            first, end = window
            steered = absolute >= start + first
            return steered if end is None else steered & (absolute < start + end)
        raise ValueError(f"unknown positions mode {mode!r}")
    return torch.isin(absolute, torch.as_tensor(mode, dtype=torch.long, device=absolute.device).reshape(-1))


class PSRHook(AddGated):
    """``α·λ(h_t)·z`` at the positions of a PSR's mode (see :func:`steer_mask`), also in left-padded batches
    and KV-cached generation (positions from a :class:`~hooksteer.hooks.PositionTracker`).

    With ``record=True`` it also sums, per row, ``‖α·λ_t·z‖``, ``‖h_t‖``, the steered tokens and the tokens
    with λ_t = 0 over every forward pass (:meth:`stats`): the added norm relative to ‖h‖ and the dead-gate
    share during generation.
    """

    def __init__(self, direction: Tensor, gate: Any, coefficient: float = 1.0, *, mode: Any = "response",
                 template_tokens: int = 0, sink_tokens: int = 1, tracker: PositionTracker | None = None,
                 record: bool = False) -> None:
        self.mode = check_mode(mode) if isinstance(mode, str) else torch.as_tensor(mode, dtype=torch.long).reshape(-1)
        self.template_tokens, self.sink_tokens = int(template_tokens), int(sink_tokens)
        super().__init__(direction, gate, coefficient, positions="all", tracker=tracker)
        self.record = record
        self.sums: dict[str, Tensor] = {}

    @property
    def needs_tracker(self) -> bool:
        return True

    def coefficients(self, activation: Tensor, absolute: Tensor | None) -> Tensor:
        values = super().coefficients(activation, absolute)  # coefficient · gate, shape (batch, pos)
        assert absolute is not None
        prompt_lengths = self.tracker.prompt_lengths if self.tracker is not None else None
        mask = steer_mask(self.mode, absolute, prompt_lengths, template_tokens=self.template_tokens,
                          sink_tokens=self.sink_tokens)
        values = values * mask.to(values.dtype)
        if self.record:
            self._accumulate(activation, values, mask)
        return values

    @torch.no_grad()
    def _accumulate(self, activation: Tensor, values: Tensor, mask: Tensor) -> None:
        m = mask.float()
        gate = self.last_gate if self.last_gate is not None else values
        added = values.abs().float() * float(self.direction.float().norm()) * m
        resid = activation.float().norm(dim=-1)
        parts = {"added": added, "resid": resid * m, "ratio": added / resid.clamp_min(1e-6), "tokens": m,
                 "dead": (gate == 0).float() * m}
        for key, value in parts.items():
            row = value.sum(dim=-1).cpu()
            previous = self.sums.get(key)
            self.sums[key] = row if previous is None or previous.shape != row.shape else previous + row

    def reset(self) -> None:
        self.sums = {}

    def stats(self) -> dict[str, Tensor]:
        """Per-row sums over steered tokens: ``added`` (Σ‖α·λ·z‖), ``resid`` (Σ‖h‖), ``ratio`` (Σ‖α·λ·z‖/‖h‖),
        ``tokens`` (steered), ``dead`` (λ = 0)."""
        return dict(self.sums)


class RowScaledGate(nn.Module):
    """``α_row · gate(h)``: one α per batch row, so a whole factor sweep runs in one batch."""

    def __init__(self, gate: nn.Module, alphas: Float[Tensor, " batch"]) -> None:
        super().__init__()
        self.gate, self.alphas = gate, torch.as_tensor(alphas, dtype=torch.float32).reshape(-1)
        check_finite(self.alphas, "PSR alphas")

    def forward(self, activation: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos"]:
        values = self.gate(activation)
        if self.alphas.shape[0] != values.shape[0]:
            raise ValueError(f"{self.alphas.shape[0]} alphas for a batch of {values.shape[0]} rows")
        return self.alphas.to(values.device, values.dtype)[:, None] * values
