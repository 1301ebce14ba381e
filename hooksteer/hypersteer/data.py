"""Turning training records into token batches, and caching the frozen base activations.

The same helpers encode prompts for training and for inference, so H sees identical inputs in both.

Sequence layout for the base model (right-padded): ``[base prompt tokens][target tokens]``; the loss
covers the target tokens only. Two kinds of record:

* :class:`~hooksteer.distill.DistillRecord` (``loss="distill"``): the target is the prompted model's own
  answer (token ids, ending with EOS only if the answer did), and each target position carries the
  teacher's top-k log-probabilities;
* :class:`~hooksteer.data.schema.SteeringExample` (``loss="ce"``): the target is a text; EOS is appended
  only when ``finished`` is True (an answer cut at a token limit did not end there).

H's input is the steering prompt's tokens (``no_context``, ``cross_attention``), or base prompt ⊕
steering prompt (``in_context``, ``h_layout="steering_last"``). ``pool_mask`` marks the tokens the head's
mean pooling reads: the steering prompt's, without its first token (an attention sink) when it has others.

Example:
    >>> encoded = encode_examples(model, records, config)                # doctest: +SKIP
    >>> batch = collate(encoded[:4], pad_id=0)  # doctest: +SKIP
    >>> batch.tokens.shape, batch.h_ids.shape, batch.teacher_ids.shape  # doctest: +SKIP
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


def target_ids(model: Any, text: str, config: HyperSteerConfig, finished: bool | None = None) -> Int[Tensor, " pos"]:
    """Tokens of a target completion (no BOS), first ``max_target_tokens`` kept, then EOS when the teacher's
    answer really ended (``finished=True``) and ``config.append_eos`` is set.

    Example:
        >>> target_ids(model, "Lava flows.", config, finished=False)   # no EOS: the answer was cut  # doctest: +SKIP
    """
    ids = model.to_tokens(text, prepend_bos=False)[0, : config.max_target_tokens].cpu() if text else (
        torch.zeros(0, dtype=torch.long))
    eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
    if config.append_eos and finished is True and eos is not None:
        ids = torch.cat([ids, torch.tensor([int(eos)])])
    if ids.numel() == 0:
        raise ValueError("target is empty: nothing to train on")
    return ids


def pool_span(model: Any, n_steering: int) -> tuple[int, int]:
    """``(start, end)`` of the steering-prompt tokens the head's mean pooling reads, within the steering
    prompt: its BOS token (when the model prepends one) and its first token (an attention sink) are left out
    as long as something else remains."""
    start = 1 if getattr(getattr(model, "cfg", None), "default_prepend_bos", False) and n_steering > 1 else 0
    if n_steering - start > 1:
        start += 1
    return start, n_steering


def h_input_ids(steering: Tensor, prompt: Tensor | None, config: HyperSteerConfig, model: Any = None
                ) -> tuple[Int[Tensor, " pos"], tuple[int, int]]:
    """H's input tokens for one row, and the span of them that mean pooling reads.

    The steering prompt alone, or for ``in_context`` base prompt ⊕ steering prompt (``h_layout=
    "steering_last"``) / steering prompt ⊕ base prompt (``"steering_first"``).
    """
    start, end = pool_span(model, len(steering))
    if config.variant == "in_context":
        if prompt is None:
            raise ValueError("the in_context variant needs a base prompt")
        if config.h_layout == "steering_last":
            offset = len(prompt)
            return torch.cat([prompt, steering]), (offset + start, offset + end)
        return torch.cat([steering, prompt]), (start, end)
    return steering, (start, end)


@dataclass
class EncodedExample:
    """One example as token ids (CPU tensors); ``index`` keys the activation cache, ``key`` (the steering
    prompt) keys a vector table. Distillation examples also carry the teacher's top-k per target token."""

    index: int
    h_ids: Int[Tensor, " h_pos"]
    prompt_ids: Int[Tensor, " prompt_pos"]
    target_ids: Int[Tensor, " target_pos"]
    key: str = ""
    pool: tuple[int, int] = (0, 0)
    teacher_ids: Int[Tensor, "target_pos k"] | None = None
    teacher_logprobs: Float[Tensor, "target_pos k"] | None = None


def _is_distill_record(example: Any) -> bool:
    from hooksteer.distill.records import DistillRecord

    return isinstance(example, DistillRecord)


def encode_examples(model: Any, examples: Sequence[Any], config: HyperSteerConfig) -> list[EncodedExample]:
    """Tokenize every example once (identical prompts are tokenized once).

    ``config.loss="distill"`` needs :class:`~hooksteer.distill.DistillRecord` s, ``"ce"`` takes
    :class:`SteeringExample` s (or DistillRecords, whose answers become cross-entropy targets).
    """
    memo: dict[tuple[str, str], Tensor] = {}

    def cached(kind: str, text: str, fn: Any) -> Tensor:
        key = (kind, text)
        if key not in memo:
            memo[key] = fn(model, text, config)
        return memo[key]

    encoded = []
    limit = config.max_target_tokens
    for index, example in enumerate(examples):
        distill = _is_distill_record(example)
        if not distill and not isinstance(example, SteeringExample):
            raise TypeError(f"examples[{index}] is {type(example).__name__}, expected DistillRecord or SteeringExample")
        if config.loss == "distill" and not distill:
            raise TypeError(f"examples[{index}] is a SteeringExample, but loss='distill' needs DistillRecords "
                            "(hooksteer.distill.build_distill_teacher); use loss='ce' for text targets")
        steer = cached("steer", example.steering_prompt, steering_ids)
        prompt = cached("prompt", example.base_prompt, prompt_ids)
        h_ids, pool = h_input_ids(steer, prompt, config, model)
        teacher_ids = teacher_logprobs = None
        if distill:
            target = example.response_ids[:limit].long()
            if config.loss == "distill":
                teacher_ids, teacher_logprobs = example.teacher_ids[:limit], example.teacher_logprobs[:limit]
        else:
            target = target_ids(model, example.target, config, example.finished)
        encoded.append(EncodedExample(index, h_ids, prompt, target, example.steering_prompt, pool,
                                      teacher_ids, teacher_logprobs))
    return encoded


# ----------------------------------------------------------------------------- batches
@dataclass
class HyperBatch:
    """A right-padded batch. ``tokens`` = prompt + target; loss positions come from the two lengths.

    ``teacher_ids`` / ``teacher_logprobs`` (distillation only) hold one row per target token, in the order
    ``loss_mask()`` selects them (row by row).
    """

    indices: list[int]
    h_ids: Int[Tensor, "batch h_pos"]
    h_lengths: Int[Tensor, " batch"]
    tokens: Int[Tensor, "batch pos"]
    prompt_lengths: Int[Tensor, " batch"]
    lengths: Int[Tensor, " batch"]
    pool_mask: Bool[Tensor, "batch h_pos"] | None = None
    keys: list[str] | None = None
    teacher_ids: Int[Tensor, "n_targets k"] | None = None
    teacher_logprobs: Float[Tensor, "n_targets k"] | None = None

    def to(self, device: torch.device | str) -> HyperBatch:
        def move(t: Tensor | None) -> Tensor | None:
            return t.to(device) if t is not None else None

        return HyperBatch(self.indices, self.h_ids.to(device), self.h_lengths.to(device), self.tokens.to(device),
                          self.prompt_lengths.to(device), self.lengths.to(device), move(self.pool_mask), self.keys,
                          move(self.teacher_ids), move(self.teacher_logprobs))

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


def pool_masks(spans: Sequence[tuple[int, int]], width: int) -> Bool[Tensor, "batch h_pos"]:
    """Boolean masks of the pooled span of each row."""
    positions = torch.arange(width)[None]
    starts = torch.tensor([s for s, _ in spans])[:, None]
    ends = torch.tensor([e for _, e in spans])[:, None]
    return (positions >= starts) & (positions < ends)


def collate(items: Sequence[EncodedExample], pad_id: int) -> HyperBatch:
    """Right-pad a list of encoded examples into one :class:`HyperBatch`."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    full = [torch.cat([item.prompt_ids, item.target_ids]) for item in items]
    h_ids = right_pad([item.h_ids for item in items], pad_id)
    teacher_ids = teacher_logprobs = None
    if all(item.teacher_ids is not None for item in items):
        teacher_ids = torch.cat([item.teacher_ids for item in items]).long()  # type: ignore[misc]
        teacher_logprobs = torch.cat([item.teacher_logprobs for item in items]).float()  # type: ignore[misc]
    return HyperBatch(
        indices=[item.index for item in items],
        h_ids=h_ids,
        h_lengths=torch.tensor([len(item.h_ids) for item in items]),
        tokens=right_pad(full, pad_id),
        prompt_lengths=torch.tensor([len(item.prompt_ids) for item in items]),
        lengths=torch.tensor([len(seq) for seq in full]),
        pool_mask=pool_masks([item.pool for item in items], h_ids.shape[1]),
        keys=[item.key for item in items],
        teacher_ids=teacher_ids,
        teacher_logprobs=teacher_logprobs,
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
