"""The target model of an export or import: its depth, width and architecture hint."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hooksteer.llamacpp.format import ARCHITECTURE, ControlVectorFileError
from hooksteer.llamacpp.reader import _int_field, _open_reader, _string_field


@dataclass(frozen=True)
class ModelInfo:
    """What an export needs to know about the target model."""

    n_layers: int | None
    d_model: int | None
    hint: str | None


def model_gguf_info(path: str | os.PathLike) -> ModelInfo:
    """Block count, width and architecture read from a model ``.gguf`` file's header (no weights loaded).

    Raises:
        ControlVectorFileError: not a readable GGUF model file.
    """
    reader = _open_reader(Path(path))
    arch = _string_field(reader, "general.architecture")
    if arch is None:
        raise ControlVectorFileError(f"{path} has no general.architecture: not a GGUF model")
    if arch == ARCHITECTURE:
        raise ControlVectorFileError(f"{path} is a control vector, not a model")
    n_layers = _int_field(reader, f"{arch}.block_count")
    d_model = _int_field(reader, f"{arch}.embedding_length")
    return ModelInfo(n_layers, d_model, arch)


def _target_info(model: Any) -> ModelInfo:
    """``model`` is None, a model ``.gguf`` path, a TransformerLens model (``cfg``) or a ``LlamaCppModel``."""
    if model is None:
        return ModelInfo(None, None, None)
    if isinstance(model, str | os.PathLike):
        return model_gguf_info(model)
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        # A LlamaCppModel, known by its int ``n_layers`` / ``n_embd``: importing the class here would be an
        # import cycle (hooksteer.llamacpp.runtime converts vectors with the export and load modules).
        if isinstance(getattr(model, "n_layers", None), int) and isinstance(getattr(model, "n_embd", None), int):
            return ModelInfo(model.n_layers, model.n_embd, None)
        raise TypeError(f"model must be a TransformerLens model or a model .gguf path, got {type(model).__name__}")
    arch = getattr(cfg, "original_architecture", None) or ""
    hint = re.sub(r"(ForCausalLM|LMHeadModel|Model)$", "", str(arch)).lower() or None
    return ModelInfo(int(cfg.n_layers), int(cfg.d_model), hint)
