"""Reading activations at one hook point, text by text, without running the layers above it.

Example:
    >>> from hooksteer.activations import collect_activations               # doctest: +SKIP
    >>> acts = list(collect_activations(model, ["Hello there"], "blocks.3.hook_resid_post"))
    >>> acts[0].shape                                                         # (pos, d_model)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooksteer.hooks import check_hook_name, model_lock


class _StopForward(Exception):
    """Raised by the capture hook so the layers above the site are not computed."""


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's parameters."""
    return next(model.parameters()).device


def check_texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    """Validate a list of prompts: non-empty list of non-empty strings."""
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, not a single string")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty: give at least one text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] is {type(text).__name__}, expected str")
        if not text.strip():
            raise ValueError(f"{what}[{i}] is an empty prompt")
    return texts


def tokenize(model: Any, text: str) -> Int[Tensor, " pos"]:
    """Token ids of ``text`` as the model would see it (the model's own BOS convention)."""
    return model.to_tokens(text)[0]


def right_pad(sequences: Sequence[Tensor], pad_id: int) -> Int[Tensor, "batch pos"]:
    """Stack 1-D token tensors, padding on the right (causal models never look at right padding)."""
    width = max(int(s.shape[0]) for s in sequences)
    batch = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        batch[row, : sequence.shape[0]] = sequence
    return batch


def left_pad(sequences: Sequence[Tensor], pad_id: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Stack 1-D token tensors padded on the left (for generation); returns (tokens, attention_mask)."""
    width = max(int(s.shape[0]) for s in sequences)
    batch = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        batch[row, width - sequence.shape[0] :] = sequence
        mask[row, width - sequence.shape[0] :] = 1
    return batch, mask


def pad_token_id(model: Any) -> int:
    tokenizer = getattr(model, "tokenizer", None)
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


@torch.no_grad()
def activations_for_tokens(
    model: nn.Module, tokens: Int[Tensor, "batch pos"], hook_name: str
) -> Float[Tensor, "batch pos d_model"]:
    """Activation at ``hook_name`` for a batch of token ids, stopping the forward pass there (under the
    model's lock: waits while another thread steers the model)."""
    captured: dict[str, Tensor] = {}

    def capture(activation: Tensor, hook: Any) -> Tensor:
        captured["value"] = activation.detach()
        raise _StopForward

    with model_lock(model), model.hooks(fwd_hooks=[(hook_name, capture)]):
        try:
            model(tokens.to(model_device(model)))
        except _StopForward:
            pass
    if "value" not in captured:
        raise RuntimeError(f"hook point {hook_name!r} was never reached in the forward pass")
    return captured["value"]


def collect_activations(
    model: nn.Module, texts: Sequence[str], hook_name: str, *, batch_size: int = 16
) -> Iterator[Float[Tensor, "pos d_model"]]:
    """Yield, for each text, its activations at ``hook_name`` (unpadded, shape ``(pos, d_model)``)."""
    texts = check_texts(texts)
    check_hook_name(model, hook_name)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pad_id = pad_token_id(model)
    for start in range(0, len(texts), batch_size):
        token_lists = [tokenize(model, text) for text in texts[start : start + batch_size]]
        activations = activations_for_tokens(model, right_pad(token_lists, pad_id), hook_name)
        for row, token_ids in enumerate(token_lists):
            yield activations[row, : token_ids.shape[0]].float().cpu()
