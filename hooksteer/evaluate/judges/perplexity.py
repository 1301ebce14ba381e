"""Perplexity under a language model: the fluency scorer of :class:`~hooksteer.evaluate.judges.EmbeddingJudge`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

#: Any callable mapping texts to their per-token perplexities (the pluggable fluency scorer).
PerplexityFn = Callable[[Sequence[str]], list[float]]


class LMPerplexity:
    """Per-token perplexity of plain texts under a TransformerLens model (no hooks, no chat template).

    Texts are right-padded (causal attention never looks at later padding) and scored in batches;
    the first token of each text is context only. With ``prepend_bos`` the model's BOS token is put
    in front (use it for models trained with BOS, e.g. Gemma; SmolLM2 has none).

    Example:
        >>> ppl = LMPerplexity(hooksteer.load_model())                    # doctest: +SKIP
        >>> ppl(["The cat sat on the mat.", "mat the on sat cat The"])
        [30.1, 900.2]
    """

    def __init__(self, model: Any, *, batch_size: int = 16, max_tokens: int = 256, prepend_bos: bool | None = None):
        self.model = model
        self.batch_size = batch_size
        self.max_tokens = min(max_tokens, int(model.cfg.n_ctx) - 1)  # leave room for BOS
        if prepend_bos is None:
            prepend_bos = bool(getattr(model.cfg, "default_prepend_bos", False))
        self.prepend_bos = prepend_bos

    def _ids(self, text: str) -> list[int]:
        tokenizer = self.model.tokenizer
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_tokens]
        if self.prepend_bos and tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id, *ids]
        return ids

    @torch.no_grad()
    def _batch(self, texts: Sequence[str]) -> list[float]:
        ids = [self._ids(t) for t in texts]
        width = max(max(len(i) for i in ids), 2)
        pad = self.model.tokenizer.pad_token_id or 0
        tokens = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.bool)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = True
        device = next(self.model.parameters()).device
        logits = self.model(tokens.to(device), return_type="logits").float().cpu()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -logprobs.gather(-1, tokens[:, 1:, None])[..., 0]
        valid = mask[:, 1:]
        counts = valid.sum(1)
        mean_nll = (nll * valid).sum(1) / counts.clamp(min=1)
        return [float(math.exp(v)) if c > 0 else float("nan") for v, c in zip(mean_nll.tolist(), counts.tolist(), strict=True)]

    def __call__(self, texts: Sequence[str]) -> list[float]:
        """Per-token perplexity of each text (NaN for texts with fewer than 2 tokens)."""
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._batch(texts[start : start + self.batch_size]))
        return out


def default_perplexity() -> LMPerplexity:
    """The default fluency scorer: the embedded SmolLM2-135M-Instruct, unsteered."""
    from hooksteer.models import load_model

    return LMPerplexity(load_model(progress=False))
