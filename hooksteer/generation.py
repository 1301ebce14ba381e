"""Batched text generation on TransformerLens models (steered or not).

Example:
    >>> from hooksteer.generation import generate_texts                    # doctest: +SKIP
    >>> with hs.steer(model, vec * 4.0, positions="generated"):
    ...     answers = generate_texts(model, ["Tell me about your day."], max_new_tokens=40)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hooksteer.activations import check_texts
from hooksteer.models import format_chat


def chat_prompts(model: Any, prompts: Sequence[str], *, system: str | None = None) -> list[str]:
    """Wrap each user message in the model's chat template (ending with the assistant turn)."""
    return [format_chat(model, prompt, system=system) for prompt in check_texts(prompts, "prompts")]


def generate_texts(
    model: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 40,
    chat: bool = True,
    system: str | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int | None = None,
    progress: bool = False,
) -> list[str]:
    """Generate a continuation for every prompt in one left-padded batch; returns only the new text.

    Args:
        model: ``HookedTransformer`` or ``TransformerBridge`` with a tokenizer.
        prompts: user messages (``chat=True``) or raw prompts (``chat=False``).
        max_new_tokens: tokens to generate per prompt.
        chat: format prompts with the model's chat template first.
        do_sample / temperature / seed: sampling settings (greedy by default; ``seed`` makes sampling repeatable).
        progress: show TransformerLens's per-token progress bar.
    """
    texts = chat_prompts(model, prompts, system=system) if chat else check_texts(prompts, "prompts")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if seed is not None:
        torch.manual_seed(seed)
    prompt_width = model.to_tokens(texts, padding_side="left").shape[1]
    output = model.generate(
        texts if len(texts) > 1 else texts[0],
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        stop_at_eos=True,
        return_type="tokens",
        padding_side="left",
        verbose=progress,
    )
    if output.ndim == 1:
        output = output[None]
    return [_decode_until_eos(model, row[prompt_width:]) for row in output]


def _decode_until_eos(model: Any, tokens: torch.Tensor) -> str:
    eos = getattr(model.tokenizer, "eos_token_id", None)
    ids = tokens.tolist()
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return model.tokenizer.decode(ids, skip_special_tokens=True).strip()
