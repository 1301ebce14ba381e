"""Batched text generation on TransformerLens models (steered or not).

Example:
    >>> from hooksteer.generation import generate_texts                    # doctest: +SKIP
    >>> with hs.steer(model, vec * 4.0, positions="generated"):         # doctest: +SKIP
    ...     answers = generate_texts(model, ["Tell me about your day."], max_new_tokens=40)
    >>> with record_answers() as recorded:                                 # doctest: +SKIP
    ...     generate_texts(model, ["Tell me about your day."], max_new_tokens=128)
    >>> recorded[0].n_tokens, recorded[0].ended                            # doctest: +SKIP
    (57, True)
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from hooksteer.activations import check_texts, left_pad, model_device, pad_token_id, tokenize
from hooksteer.fast_generation import fast_path_hooks, hf_twin, twin_hooks
from hooksteer.hooks import model_lock
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
    stop_at_eos: bool = True,
    progress: bool = False,
    fast: bool = True,
) -> list[str]:
    """Generate a continuation for every prompt in one left-padded batch; returns only the new text.

    Args:
        model: ``HookedTransformer`` or ``TransformerBridge`` with a tokenizer.
        prompts: user messages (``chat=True``) or raw prompts (``chat=False``).
        max_new_tokens: tokens to generate per prompt.
        chat: format prompts with the model's chat template first.
        do_sample / temperature / seed: sampling settings (greedy by default; ``seed`` makes sampling repeatable
            without touching the global torch random state, which is restored afterwards).
        stop_at_eos: stop a row at its end-of-text token (``False`` always generates ``max_new_tokens``).
        progress: show TransformerLens's per-token progress bar.
        fast: on a ``TransformerBridge``, run steering installed with :func:`hooksteer.steer` on the
            weight-sharing Hugging Face twin (:mod:`hooksteer.fast_generation`); ``False`` forces the
            bridge's own hook points. Same tokens either way.

    Raises:
        ValueError: ``max_new_tokens < 1``, a sampling temperature that is not > 0, or a prompt whose
            tokens plus ``max_new_tokens`` do not fit in the model's context (``cfg.n_ctx``): checked
            before anything runs.
    """
    texts = chat_prompts(model, prompts, system=system) if chat else check_texts(prompts, "prompts")
    check_generation_settings(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature)
    with model_lock(model), torch.random.fork_rng(devices=_cuda_devices(model), enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        rows = generate_tokens(model, texts, max_new_tokens=max_new_tokens, do_sample=do_sample,
                               temperature=temperature, stop_at_eos=stop_at_eos, progress=progress, fast=fast)
    return [_decode_until_eos(model, row) for row in rows]


def check_generation_settings(*, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0) -> None:
    """Raise ``ValueError`` for ``max_new_tokens < 1`` or, when sampling, a temperature that is not a finite number > 0."""
    integer = isinstance(max_new_tokens, numbers.Integral) and not isinstance(max_new_tokens, bool)
    if not integer or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if do_sample and not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"sampling temperature must be a finite number > 0, got {temperature!r} "
                         "(for greedy decoding pass do_sample=False)")


def check_context(model: Any, prompt_lengths: Sequence[int], max_new_tokens: int) -> None:
    """Raise ``ValueError`` when the longest prompt plus ``max_new_tokens`` exceeds the model's ``n_ctx``."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    longest = max(prompt_lengths)
    if n_ctx and longest + max_new_tokens > int(n_ctx):
        raise ValueError(
            f"the prompt has {longest} tokens and max_new_tokens={max_new_tokens}: {longest + max_new_tokens} "
            f"positions do not fit in the model's context (n_ctx={n_ctx}); shorten the prompt or ask for at "
            f"most {max(0, int(n_ctx) - longest)} new tokens"
        )


def _cuda_devices(model: Any) -> list[int]:
    device = model_device(model)
    return [device.index or 0] if device.type == "cuda" else []


def generate_tokens(model: Any, texts: list[str], *, max_new_tokens: int, do_sample: bool = False,
                    temperature: float = 1.0, stop_at_eos: bool = True, progress: bool = False,
                    fast: bool = True) -> list[torch.Tensor]:
    """New token ids for each text (already formatted), through the fastest loop for the model class:
    Hugging Face's for a ``TransformerBridge`` (on its weight-sharing twin when every hook on the bridge
    is hooksteer steering at a residual site, see :mod:`hooksteer.fast_generation`), TransformerLens's
    for a ``HookedTransformer``. Holds the model's lock (waits while another thread steers it) and checks
    the context length before generating."""
    check_generation_settings(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature)
    check_context(model, [int(tokenize(model, text).shape[0]) for text in texts], max_new_tokens)
    with model_lock(model):
        return _generate_tokens(model, texts, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                temperature=temperature, stop_at_eos=stop_at_eos, progress=progress, fast=fast)


def _generate_tokens(model: Any, texts: list[str], *, max_new_tokens: int, do_sample: bool, temperature: float,
                     stop_at_eos: bool, progress: bool, fast: bool) -> list[torch.Tensor]:
    if is_bridge(model):
        settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature,
                    "stop_at_eos": stop_at_eos}
        plan = fast_path_hooks(model) if fast else None
        if plan is None:
            return _generate_with_hf_loop(model, model.original_model, texts, **settings)
        twin = hf_twin(model)
        with twin_hooks(twin, plan):
            return _generate_with_hf_loop(model, twin, texts, **settings)
    return _generate_with_transformer_lens(model, texts, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                           temperature=temperature, stop_at_eos=stop_at_eos, progress=progress)


def is_bridge(model: Any) -> bool:
    """True for a TransformerLens ``TransformerBridge`` (wrapping a Hugging Face model)."""
    return hasattr(model, "original_model") and not hasattr(model, "W_E_pos")


def _generate_with_transformer_lens(model: Any, texts: list[str], *, max_new_tokens: int, do_sample: bool,
                                    temperature: float, stop_at_eos: bool, progress: bool) -> list[torch.Tensor]:
    prompt_width = model.to_tokens(texts, padding_side="left").shape[1]
    output = model.generate(
        texts if len(texts) > 1 else texts[0],
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        stop_at_eos=stop_at_eos,
        return_type="tokens",
        padding_side="left",
        verbose=progress,
    )
    if output.ndim == 1:
        output = output[None]
    return list(output[:, prompt_width:])


@torch.no_grad()
def _generate_with_hf_loop(model: Any, hf_module: Any, texts: list[str], *, max_new_tokens: int, do_sample: bool,
                           temperature: float, stop_at_eos: bool) -> list[torch.Tensor]:
    """Hugging Face ``generate`` on ``hf_module``: the module a ``TransformerBridge`` wraps (its hook
    points live inside it, so every TransformerLens hook fires as in ``bridge.generate``), or the
    bridge's weight-sharing twin with steering replayed as plain torch hooks."""
    tokenizer = model.tokenizer
    input_ids, attention_mask = left_pad([tokenize(model, text) for text in texts], pad_token_id(model))
    device = next(hf_module.parameters()).device
    encoded = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if do_sample else {
        "do_sample": False}
    output = hf_module.generate(
        **encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, min_new_tokens=0 if stop_at_eos else max_new_tokens, **sampling,
    )
    return list(output[:, encoded["input_ids"].shape[1]:])


@dataclass(frozen=True)
class GeneratedAnswer:
    """One decoded answer as :func:`record_answers` saw it: its text, the tokens the model wrote before its
    end-of-text token (all of them when it wrote none; padding after EOS not counted) and whether it wrote one
    (``ended``: the answer finished before ``max_new_tokens``; ``False``: it was cut at the limit)."""

    text: str
    n_tokens: int
    ended: bool


_RECORDING = threading.local()


@contextmanager
def record_answers() -> Iterator[list[GeneratedAnswer]]:
    """Record every answer decoded in this thread inside the block — by :func:`generate_texts`, and so by every
    evaluation method and :func:`hooksteer.prefix_attention.generate_with_prefix` — in the order decoded (a
    batch's rows in order). Blocks nest: each records what was decoded while it was open.

    Example:
        >>> from hooksteer.testing import tiny_model
        >>> model = tiny_model("llama", seed=0)
        >>> with record_answers() as recorded:
        ...     _ = generate_texts(model, ["Hi", "Tell me more"], max_new_tokens=5, stop_at_eos=False)
        >>> [(a.n_tokens, a.ended) for a in recorded]
        [(5, False), (5, False)]
    """
    stack = _RECORDING.__dict__.setdefault("stack", [])
    recorded: list[GeneratedAnswer] = []
    stack.append(recorded)
    try:
        yield recorded
    finally:
        stack.remove(recorded)


def _decode_until_eos(model: Any, tokens: torch.Tensor) -> str:
    eos = getattr(model.tokenizer, "eos_token_id", None)
    ids = tokens.tolist()
    ended = eos is not None and eos in ids
    if ended:
        ids = ids[: ids.index(eos)]
    text = model.tokenizer.decode(ids, skip_special_tokens=True).strip()
    for recorded in getattr(_RECORDING, "stack", ()):
        recorded.append(GeneratedAnswer(text, len(ids), ended))
    return text
