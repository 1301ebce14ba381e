"""Turning SteeringExample records into token batches, and caching the frozen base activations.

The same helpers encode prompts for training and for inference, so H sees identical inputs in both.

Sequence layout for the base model (right-padded): ``[base prompt tokens][target tokens][EOS]``; the
loss covers the target (and EOS) tokens only. H's input is the steering prompt's tokens
(``no_context``, ``cross_attention``) or steering prompt ⊕ base prompt (``in_context``).

Example:
    >>> encoded = encode_examples(model, examples, config)                # doctest: +SKIP
    >>> batch = collate(encoded[:4], pad_id=0)  # doctest: +SKIP
    >>> batch.tokens.shape, batch.h_ids.shape  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from hooksteer.activations import pad_token_id, right_pad
from hooksteer.data.schema import SteeringExample
from hooksteer.hypersteer.config import HyperSteerConfig


# ----------------------------------------------------------------------------- text → tokens
def format_base_prompt(model: Any, text: str, config: HyperSteerConfig) -> str:
    """The base prompt as the base model reads it (chat template when configured and available)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("base prompt must be a non-empty string")
    tokenizer = getattr(model, "tokenizer", None)
    if config.chat_template and getattr(tokenizer, "chat_template", None):
        from hooksteer.models import format_chat

        return format_chat(model, text)
    return text


def steering_ids(model: Any, text: str, config: HyperSteerConfig) -> Int[Tensor, " pos"]:
    """Tokens of a steering prompt for H (model's BOS convention, first ``max_steering_tokens`` kept)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("steering prompt must be a non-empty string")
    return model.to_tokens(text)[0, : config.max_steering_tokens].cpu()


def prompt_ids(model: Any, text: str, config: HyperSteerConfig) -> Int[Tensor, " pos"]:
    """Tokens of a (formatted) base prompt, last ``max_prompt_tokens`` kept."""
    return model.to_tokens(format_base_prompt(model, text, config))[0, -config.max_prompt_tokens :].cpu()


def target_ids(model: Any, text: str, config: HyperSteerConfig) -> Int[Tensor, " pos"]:
    """Tokens of a target completion (no BOS), first ``max_target_tokens`` kept, then EOS if configured."""
    ids = model.to_tokens(text, prepend_bos=False)[0, : config.max_target_tokens].cpu() if text else (
        torch.zeros(0, dtype=torch.long))
    eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
    if config.append_eos and eos is not None:
        ids = torch.cat([ids, torch.tensor([int(eos)])])
    if ids.numel() == 0:
        raise ValueError("target is empty (and no EOS appended): nothing to train on")
    return ids


def h_input_ids(steering: Tensor, prompt: Tensor | None, config: HyperSteerConfig) -> Int[Tensor, " pos"]:
    """H's input tokens for one row: the steering prompt, followed by the base prompt for ``in_context``."""
    if config.variant == "in_context":
        if prompt is None:
            raise ValueError("the in_context variant needs a base prompt")
        return torch.cat([steering, prompt])
    return steering


@dataclass
class EncodedExample:
    """One example as token ids (CPU tensors); ``index`` keys the activation cache."""

    index: int
    h_ids: Int[Tensor, " h_pos"]
    prompt_ids: Int[Tensor, " prompt_pos"]
    target_ids: Int[Tensor, " target_pos"]


def encode_examples(model: Any, examples: Sequence[SteeringExample], config: HyperSteerConfig) -> list[EncodedExample]:
    """Tokenize every example once (identical prompts are tokenized once)."""
    memo: dict[tuple[str, str], Tensor] = {}

    def cached(kind: str, text: str, fn: Any) -> Tensor:
        key = (kind, text)
        if key not in memo:
            memo[key] = fn(model, text, config)
        return memo[key]

    encoded = []
    for index, example in enumerate(examples):
        if not isinstance(example, SteeringExample):
            raise TypeError(f"examples[{index}] is {type(example).__name__}, expected SteeringExample")
        steer = cached("steer", example.steering_prompt, steering_ids)
        prompt = cached("prompt", example.base_prompt, prompt_ids)
        target = target_ids(model, example.target, config)
        encoded.append(EncodedExample(index, h_input_ids(steer, prompt, config), prompt, target))
    return encoded


# ----------------------------------------------------------------------------- batches
@dataclass
class HyperBatch:
    """A right-padded batch. ``tokens`` = prompt + target; loss positions come from the two lengths."""

    indices: list[int]
    h_ids: Int[Tensor, "batch h_pos"]
    h_lengths: Int[Tensor, " batch"]
    tokens: Int[Tensor, "batch pos"]
    prompt_lengths: Int[Tensor, " batch"]
    lengths: Int[Tensor, " batch"]

    def to(self, device: torch.device | str) -> HyperBatch:
        return HyperBatch(self.indices, self.h_ids.to(device), self.h_lengths.to(device), self.tokens.to(device),
                          self.prompt_lengths.to(device), self.lengths.to(device))

    def __len__(self) -> int:
        return len(self.indices)

    def context_mask(self) -> Bool[Tensor, "batch prompt_pos"]:
        """True on base-prompt tokens (what cross-attention may look at)."""
        width = int(self.prompt_lengths.max())
        return torch.arange(width, device=self.tokens.device)[None] < self.prompt_lengths[:, None]

    def loss_mask(self) -> Bool[Tensor, "batch pos_minus_1"]:
        """True where position t predicts a target token t+1 (prompt and padding excluded)."""
        t = torch.arange(self.tokens.shape[1] - 1, device=self.tokens.device)[None]
        return (t >= self.prompt_lengths[:, None] - 1) & (t < self.lengths[:, None] - 1)


def collate(items: Sequence[EncodedExample], pad_id: int) -> HyperBatch:
    """Right-pad a list of encoded examples into one :class:`HyperBatch`."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    full = [torch.cat([item.prompt_ids, item.target_ids]) for item in items]
    return HyperBatch(
        indices=[item.index for item in items],
        h_ids=right_pad([item.h_ids for item in items], pad_id),
        h_lengths=torch.tensor([len(item.h_ids) for item in items]),
        tokens=right_pad(full, pad_id),
        prompt_lengths=torch.tensor([len(item.prompt_ids) for item in items]),
        lengths=torch.tensor([len(seq) for seq in full]),
    )


# ----------------------------------------------------------------------------- frozen activations
@torch.no_grad()
def resid_at_layer(model: Any, tokens: Int[Tensor, "batch pos"], layer: int) -> Float[Tensor, "batch pos d_model"]:
    """Residual stream at ``blocks.{layer}.hook_resid_post`` for right-padded tokens (blocks above not run).

    Right padding needs no attention mask in a causal model, so real positions equal an unpadded run.
    """
    device = next(model.parameters()).device
    return model(tokens.to(device), padding_side="right", stop_at_layer=layer + 1)


class ResidCache:
    """Per-example cache of the frozen layer-``layer`` residual over prompt + target.

    Because the base model is causal, the prompt part of that residual is also exactly the
    cross-attention context, so one cache serves both the loss and H's keys/values.

    Args:
        model: the frozen base model.
        layer: injection layer.
        storage: ``"cpu"`` (default; moved to the device per batch), ``"device"`` or ``"off"`` (recompute).
    """

    def __init__(self, model: Any, layer: int, storage: str = "cpu") -> None:
        self.model, self.layer, self.storage = model, layer, storage
        self._store: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    def get(self, batch: HyperBatch) -> Float[Tensor, "batch pos d_model"]:
        """Residual for every row of ``batch`` (zeros on padding), computing only the rows not cached."""
        device = batch.tokens.device
        missing = [row for row, index in enumerate(batch.indices) if index not in self._store]
        computed: dict[int, Tensor] = {}
        if missing:
            width = int(batch.lengths[missing].max())
            resid = resid_at_layer(self.model, batch.tokens[missing, :width], self.layer)
            for i, row in enumerate(missing):
                computed[row] = resid[i, : int(batch.lengths[row])]
                if self.storage != "off":
                    keep = computed[row].cpu() if self.storage == "cpu" else computed[row]
                    self._store[batch.indices[row]] = keep.clone()
        rows = [computed[row] if row in computed else self._store[index]
                for row, index in enumerate(batch.indices)]
        out = torch.zeros(len(rows), batch.tokens.shape[1], rows[0].shape[-1], device=device, dtype=rows[0].dtype)
        for row, value in enumerate(rows):
            out[row, : value.shape[0]] = value.to(device)
        return out


def default_pad_id(model: Any) -> int:
    return pad_token_id(model)
