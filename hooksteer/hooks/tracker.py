"""The :class:`PositionTracker`: absolute token positions of the forward pass under way."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from jaxtyping import Int
from torch import Tensor, nn

from hooksteer.hooks.threads import _check_thread


class PositionTracker:
    """Tracks the absolute position of every token in the forward pass under way.

    It registers a forward pre-hook on the model's first block, where both model classes reveal
    where the current tokens sit in their sequences:

    - ``HookedTransformer`` passes the attention mask over cached + current tokens (absolute
      position = number of real tokens before it, so left padding is skipped) and the KV-cache entry;
    - ``TransformerBridge`` / Hugging Face modules pass ``position_ids`` (already per row, padding-aware).

    Positions are per row: ``positions()`` has shape ``(batch, pos)``; left-padding tokens get -1.
    The tracker also remembers each row's *prompt length*: the number of real tokens in the first
    forward pass of a new sequence. A later pass with an empty cache whose input extends the
    previous input (uncached ``generate``) continues the same sequence; any other pass starts anew.

    Example:
        >>> with track_positions(model) as tracker:        # doctest: +SKIP
        ...     model("Hello world")
        ...     tracker.prompt_lengths
    """

    def __init__(self) -> None:
        self.absolute: Int[Tensor, "batch pos"] | None = None
        self.prompt_lengths: Int[Tensor, " batch"] | None = None
        self._last_input: Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._owner: int | None = None

    # -- attaching
    def attach(self, model: nn.Module) -> PositionTracker:
        """Start tracking ``model``'s forward passes. Returns ``self``."""
        if self._handle is not None:
            raise RuntimeError("this PositionTracker is already attached to a model")
        first_block = _first_block(model)
        self._handle = first_block.register_forward_pre_hook(self._on_first_block, with_kwargs=True)
        self._owner = threading.get_ident()
        return self

    def detach(self) -> None:
        """Stop tracking (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
            self._owner = None

    @property
    def attached(self) -> bool:
        return self._handle is not None

    # -- the pre-hook
    def _on_first_block(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        _check_thread(self._owner, "a PositionTracker on this model")
        hidden = args[0] if args else next(
            (kwargs[k] for k in ("resid_pre", "hidden_states", "x") if k in kwargs), None
        )
        if not isinstance(hidden, Tensor) or hidden.ndim != 3:
            return
        past = _past_length(kwargs)
        absolute = _absolute_positions(kwargs, past, batch=int(hidden.shape[0]), length=int(hidden.shape[1]),
                                       device=hidden.device)
        if past > 0 or _continues_from_position_ids(kwargs, absolute):
            if self.prompt_lengths is None or self.prompt_lengths.shape[0] != absolute.shape[0]:
                self.prompt_lengths = absolute.clamp(min=0).min(dim=-1).values
            self._last_input = None
        else:
            if not self._extends_last_input(hidden):
                self.prompt_lengths = absolute.max(dim=-1).values + 1
            self._last_input = hidden.detach().clone()
        self.absolute = absolute

    def _extends_last_input(self, hidden: Tensor) -> bool:
        last = self._last_input
        if last is None or self.prompt_lengths is None:
            return False
        if hidden.shape[0] != last.shape[0] or hidden.shape[1] <= last.shape[1]:
            return False
        return torch.equal(hidden[:, : last.shape[1]], last)

    # -- what hooks ask
    @property
    def prompt_length(self) -> int | None:
        """Prompt length of the current sequence when all rows agree (``None`` before any pass)."""
        if self.prompt_lengths is None:
            return None
        return int(self.prompt_lengths.max())

    def positions(self, n_positions: int, device: torch.device | str | None = None) -> Int[Tensor, "batch pos"]:
        """Absolute positions of the tokens in the current forward pass, shape ``(batch, n_positions)``."""
        if self.absolute is None:
            raise RuntimeError(
                "PositionTracker has seen no forward pass: attach it with "
                "`hooksteer.hooks.track_positions(model)` before running the model"
            )
        if n_positions != self.absolute.shape[1]:
            raise RuntimeError(
                f"activation has {n_positions} positions but the forward pass has {self.absolute.shape[1]}; "
                "position-dependent steering only supports hook points with a token dimension"
            )
        return self.absolute.to(device) if device is not None else self.absolute


def _absolute_positions(kwargs: dict, past: int, *, batch: int, length: int,
                        device: torch.device) -> Int[Tensor, "batch pos"]:
    """Per-row absolute positions of the current tokens (-1 for left padding where it is known)."""
    mask = kwargs.get("attention_mask")
    if isinstance(mask, Tensor) and mask.ndim == 2 and mask.shape[1] == past + length:
        real = mask.to(device=device, dtype=torch.long)
        counted = real.cumsum(dim=-1) - 1
        return torch.where(real.bool(), counted, torch.full_like(counted, -1))[:, -length:].expand(batch, -1)
    position_ids = kwargs.get("position_ids")
    if isinstance(position_ids, Tensor) and position_ids.shape[-1] == length:
        return position_ids.to(device=device, dtype=torch.long).reshape(-1, length).expand(batch, -1)
    return torch.arange(past, past + length, device=device).expand(batch, -1)


def _continues_from_position_ids(kwargs: dict, absolute: Int[Tensor, "batch pos"]) -> bool:
    """With Hugging Face ``position_ids``, a new sequence has position 0 in every row; a cached
    continuation has none. (A ``TransformerBridge`` passes a cache that reports length 0, so the
    cache cannot tell.)"""
    if not isinstance(kwargs.get("position_ids"), Tensor):
        return False
    return not bool((absolute == 0).any(dim=-1).all())


def _first_block(model: nn.Module) -> nn.Module:
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise TypeError(
            f"{type(model).__name__} has no `blocks`; hooksteer steers TransformerLens "
            "HookedTransformer and TransformerBridge models"
        )
    return blocks[0]


def _past_length(kwargs: dict) -> int:
    entry = kwargs.get("past_kv_cache_entry")
    if entry is not None:
        return int(entry.past_keys.shape[1])
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, Tensor) and cache_position.numel() > 0:
        return int(cache_position.reshape(-1)[0])
    cache = kwargs.get("past_key_values", kwargs.get("past_key_value", kwargs.get("cache")))
    if cache is not None and hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return 0


@contextmanager
def track_positions(model: nn.Module) -> Iterator[PositionTracker]:
    """Attach a :class:`PositionTracker` to ``model`` for the duration of the block.

    Example:
        >>> with track_positions(model) as tracker:        # doctest: +SKIP
        ...     hook = add_per_token(v, coefficients, tracker=tracker)
    """
    tracker = PositionTracker().attach(model)
    try:
        yield tracker
    finally:
        tracker.detach()
