"""The PSR teacher signal: how a steering instruction changes each response token's activations.

For a response ``y'`` written with the steering instruction in context (a teacher target), the model
reads it twice: after the prompt **with** the instruction (``x'y'``) and after the plain prompt
(``xy'``). On the response tokens, aligned by their position *inside the response* (token ``k`` of
``y'`` sits at absolute position ``len(x') + k`` in one sequence and ``len(x) + k`` in the other):

    Δ_{l,t} = A_l(x'y')_t − A_l(xy')_t          (A_l = ``blocks.{l}.hook_resid_post``)

Both prompts are chat-formatted exactly as the prompting baseline formats them: ``x'`` with
:func:`hooksteer.data.teacher.steered_chat_prompt` (default style ``"split"``), ``x`` with
:func:`hooksteer.models.format_chat`. An **empty** steering prompt means ``x' = x`` (no instruction),
so Δ is exactly zero.

Example:
    >>> rec = encode_pair(model, "Write about cats. Every sentence must be about cats.",  # doctest: +SKIP
    ...                   "Tell me about your day.", "Cats sleep a lot.")
    >>> teacher = compute_teacher(model, [rec], layers=[20])                               # doctest: +SKIP
    >>> teacher[0].delta[20].shape                                    # (response tokens, d_model)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooksteer.activations import model_device, pad_token_id, right_pad
from hooksteer.data.schema import SteeringExample
from hooksteer.data.teacher import DEFAULT_STYLE, steered_chat_prompt
from hooksteer.vectors import check_finite

__all__ = ["TeacherPair", "TeacherRecord", "encode_pair", "encode_examples", "compute_teacher", "hook_name",
           "plain_chat_prompt"]


def hook_name(layer: int) -> str:
    """The residual site PSR reads and steers: ``blocks.{layer}.hook_resid_post``."""
    return f"blocks.{int(layer)}.hook_resid_post"


def plain_chat_prompt(model: Any, base_prompt: str) -> str:
    """``x``: the base prompt in the chat template (or raw text for a model without one)."""
    from hooksteer.models import format_chat

    if getattr(getattr(model, "tokenizer", None), "chat_template", None):
        return format_chat(model, base_prompt)
    return base_prompt


def _steered_prompt(model: Any, steering_prompt: str, base_prompt: str, style: str) -> str:
    if not steering_prompt.strip():
        return plain_chat_prompt(model, base_prompt)
    if not getattr(getattr(model, "tokenizer", None), "chat_template", None):
        from hooksteer.data.teacher import steered_user_message

        return steered_user_message(steering_prompt, base_prompt, style)
    return steered_chat_prompt(model, steering_prompt, base_prompt, style)


@dataclass
class TeacherPair:
    """Token ids of one teacher example: plain prompt ``x``, steered prompt ``x'`` and response ``y'``."""

    plain_prompt: Int[Tensor, " p"]
    steered_prompt: Int[Tensor, " q"]
    response: Int[Tensor, " n"]
    concept_id: str = ""

    def __post_init__(self) -> None:
        for name in ("plain_prompt", "steered_prompt", "response"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or value.ndim != 1 or value.dtype != torch.long:
                raise TypeError(f"{name} must be a 1-D LongTensor of token ids")
        if self.response.numel() == 0:
            raise ValueError("the response is empty: the teacher signal lives on response tokens")
        if self.plain_prompt.numel() == 0 or self.steered_prompt.numel() == 0:
            raise ValueError("prompts must have at least one token")

    @property
    def plain(self) -> Int[Tensor, " seq"]:
        """``xy'``."""
        return torch.cat([self.plain_prompt, self.response])

    @property
    def steered(self) -> Int[Tensor, " seq"]:
        """``x'y'``."""
        return torch.cat([self.steered_prompt, self.response])


@dataclass
class TeacherRecord:
    """Teacher activations of one example on its response tokens, per layer.

    ``plain[l]`` = A_l(xy') and ``delta[l]`` = A_l(x'y') − A_l(xy') on the ``n`` response tokens.
    """

    pair: TeacherPair
    plain: dict[int, Float[Tensor, "n d_model"]] = field(default_factory=dict)
    delta: dict[int, Float[Tensor, "n d_model"]] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(self.pair.response.numel())

    def delta_norms(self, layer: int) -> Float[Tensor, " n"]:
        """‖Δ_t‖ at ``layer`` for every response token."""
        return self.delta[layer].norm(dim=-1)


def encode_pair(model: Any, steering_prompt: str, base_prompt: str, response: str, *,
                style: str = DEFAULT_STYLE, max_response_tokens: int | None = None,
                concept_id: str = "") -> TeacherPair:
    """Tokenize ``x``, ``x'`` and ``y'`` (response without BOS, optionally truncated).

    Raises:
        ValueError: empty base prompt or empty response.
    """
    if not isinstance(base_prompt, str) or not base_prompt.strip():
        raise ValueError("base_prompt must be a non-empty string")
    if not isinstance(response, str) or not response.strip():
        raise ValueError("response is empty: the teacher signal lives on response tokens")
    plain = model.to_tokens(plain_chat_prompt(model, base_prompt))[0].cpu()
    steered = model.to_tokens(_steered_prompt(model, steering_prompt or "", base_prompt, style))[0].cpu()
    ids = model.to_tokens(response, prepend_bos=False)[0].cpu()
    if max_response_tokens is not None:
        ids = ids[:max_response_tokens]
    return TeacherPair(plain, steered, ids, concept_id)


def encode_examples(model: Any, examples: Sequence[SteeringExample], *, style: str = DEFAULT_STYLE,
                    max_response_tokens: int | None = None) -> list[TeacherPair]:
    """:func:`encode_pair` for every teacher example (``target`` is the response ``y'``)."""
    if not examples:
        raise ValueError("no teacher examples given")
    return [encode_pair(model, e.steering_prompt, e.base_prompt, e.target, style=style,
                        max_response_tokens=max_response_tokens, concept_id=e.concept_id) for e in examples]


@torch.no_grad()
def _resid(model: Any, tokens: Int[Tensor, "batch pos"], layers: Sequence[int]) -> dict[int, Tensor]:
    names = {hook_name(layer) for layer in layers}
    _, cache = model.run_with_cache(tokens.to(model_device(model)), names_filter=lambda n: n in names,
                                    stop_at_layer=max(layers) + 1, padding_side="right")
    return {layer: cache[hook_name(layer)].float().cpu() for layer in layers}


def compute_teacher(model: Any, pairs: Sequence[TeacherPair], layers: Sequence[int], *,
                    batch_size: int = 8, progress: bool = False) -> list[TeacherRecord]:
    """Run ``xy'`` and ``x'y'`` for every pair and keep A_l(xy') and Δ_l on the response tokens.

    Args:
        model: frozen ``HookedTransformer``.
        pairs: from :func:`encode_pair` / :func:`encode_examples`.
        layers: block indices whose ``hook_resid_post`` is read.
        batch_size: sequences per forward pass (right-padded: exact for causal models).

    Raises:
        ValueError: no pairs / no layers / a layer outside the model, or non-finite activations.
    """
    from tqdm.auto import tqdm

    if not pairs:
        raise ValueError("no teacher pairs given")
    layers = sorted({int(layer) for layer in layers})
    n_layers = int(model.cfg.n_layers)
    if not layers or layers[0] < 0 or layers[-1] >= n_layers:
        raise ValueError(f"layers must be non-empty block indices in 0..{n_layers - 1}, got {layers}")
    pad = pad_token_id(model)
    records: list[TeacherRecord] = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="teacher Δ", disable=not progress):
        chunk = list(pairs[start : start + batch_size])
        plain = _resid(model, right_pad([p.plain for p in chunk], pad), layers)
        steered = _resid(model, right_pad([p.steered for p in chunk], pad), layers)
        for row, pair in enumerate(chunk):
            n, p, q = pair.response.numel(), pair.plain_prompt.numel(), pair.steered_prompt.numel()
            record = TeacherRecord(pair)
            for layer in layers:
                a_plain = plain[layer][row, p : p + n]
                a_steered = steered[layer][row, q : q + n]
                check_finite(a_plain, f"activations at layer {layer}")
                check_finite(a_steered, f"prompted activations at layer {layer}")
                record.plain[layer] = a_plain.clone()
                record.delta[layer] = (a_steered - a_plain).clone()
            records.append(record)
    return records
