"""Chat formatting: a single-turn prompt rendered with the tokenizer's chat template."""

from __future__ import annotations

from typing import Any


def _tokenizer_of(model_or_tokenizer: Any) -> Any:
    if hasattr(model_or_tokenizer, "apply_chat_template"):
        return model_or_tokenizer
    tokenizer = getattr(model_or_tokenizer, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"{type(model_or_tokenizer).__name__} has no tokenizer to format a chat with")
    return tokenizer


def format_chat(
    model_or_tokenizer: Any,
    user: str,
    *,
    system: str | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """Render a single-turn chat prompt with the tokenizer's chat template.

    Note SmolLM2's template inserts its default system prompt ("You are a helpful AI assistant
    named SmolLM, ...") when ``system`` is None.

    Raises:
        ValueError: ``user`` is empty/blank, or the tokenizer has no chat template.

    Example:
        >>> format_chat(model, "Hi!")                                     # doctest: +SKIP
        '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n<|im_start|>user\\nHi!<|im_end|>\\n<|im_start|>assistant\\n'
    """
    if not isinstance(user, str) or not user.strip():
        raise ValueError("format_chat() needs a non-empty user message")
    tokenizer = _tokenizer_of(model_or_tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"The tokenizer {type(tokenizer).__name__} has no chat template; pass plain text instead"
        )
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
