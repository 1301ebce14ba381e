"""Level 1 of the cache: the default model's GGUF dequantized to a float32 Hugging Face copy, and loading it.

``<cache>/smollm2-135m-instruct/hf/`` holds ``config.json``, ``model.safetensors``, the tokenizer and
the chat template; :func:`load_hf_model` and :func:`hooksteer.models.load_bridge` read it.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

import torch

from hooksteer.models.cache import (
    _HF_FILES,
    _ensure_built,
    _model_cache,
    _Steps,
    _warn_rebuild,
    _write_folder_atomically,
)
from hooksteer.models.default import (
    _DISPLAY_NAME,
    DEFAULT_ALIASES,
    DEFAULT_MODEL,
    _is_default,
    find_default_gguf,
)
from hooksteer.models.offline import _hub_offline, _quiet

if TYPE_CHECKING:  # pragma: no cover - imports for type checkers only
    import transformers


def _dequantize_gguf(
    gguf_path: pathlib.Path,
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """Load the GGUF with transformers, which dequantizes every tensor to float32 (slow: 20-40 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    return model, tokenizer


def _drop_quantization(model: transformers.PreTrainedModel) -> None:
    """Make a GGUF-loaded model save as a plain (non-quantized) checkpoint."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _build_hf_dir(folder: pathlib.Path, progress: bool) -> None:
    gguf = find_default_gguf()
    steps = _Steps(
        f"hooksteer: caching {_DISPLAY_NAME} (one-time)", ["dequantize GGUF", "save HF copy"], progress
    )
    try:
        steps.next()
        model, tokenizer = _dequantize_gguf(gguf)
        _drop_quantization(model)
        steps.done()
        steps.next()

        def write(tmp: pathlib.Path) -> None:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))

        _write_folder_atomically(folder, write)
        steps.done()
    finally:
        steps.close()


def _ensure_hf_dir(folder: pathlib.Path, progress: bool, *, force: bool = False) -> pathlib.Path:
    """Build the HF copy into ``folder`` unless a valid one exists (``force`` rebuilds)."""
    return _ensure_built(folder, _HF_FILES, _build_hf_dir, progress, force=force)


def hf_model_dir(name: str = DEFAULT_MODEL, *, progress: bool = True) -> pathlib.Path:
    """Folder with a dequantized float32 Hugging Face copy of ``name`` (built on first call).

    For the default model the folder lives in ``<cache_dir()>/smollm2-135m-instruct/hf`` and holds
    ``config.json``, ``model.safetensors`` and the tokenizer files (incl. the chat template). Any
    other ``name`` must be an existing local model folder, which is returned unchanged.

    Example:
        >>> from transformers import AutoModelForCausalLM                 # doctest: +SKIP
        >>> hf = AutoModelForCausalLM.from_pretrained(hf_model_dir())
    """
    if _is_default(name):
        return _ensure_hf_dir(_model_cache(name) / "hf", progress)
    path = pathlib.Path(name).expanduser()
    if path.is_dir():
        return path
    raise ValueError(
        f"Unknown model {name!r}: expected {DEFAULT_MODEL!r} (aliases: {sorted(DEFAULT_ALIASES)}) "
        "or a local Hugging Face model folder. Models are never downloaded from the hub."
    )


def _load_tokenizer(folder: pathlib.Path) -> transformers.PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    with _hub_offline():
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _load_hf_from(
    folder: pathlib.Path, dtype: torch.dtype
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM

    with _hub_offline(), _quiet(False):
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    return model.eval(), _load_tokenizer(folder)


def _load_hf_checked(
    name: str, device: str | torch.device | None, dtype: torch.dtype, progress: bool
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """Load from :func:`hf_model_dir`; a cached default copy that fails to load is rebuilt once."""
    folder = hf_model_dir(name, progress=progress)
    try:
        model, tokenizer = _load_hf_from(folder, dtype)
    except Exception as error:  # noqa: BLE001 - any load failure of our own cache means "corrupt"
        if not _is_default(name):
            raise RuntimeError(f"Could not load the Hugging Face model from {folder}: {error}") from error
        _warn_rebuild(folder, f"load failed: {error}")
        model, tokenizer = _load_hf_from(_ensure_hf_dir(folder, progress, force=True), dtype)
    return (model.to(device) if device is not None else model), tokenizer


def load_hf_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """Load the plain Hugging Face model and tokenizer (from :func:`hf_model_dir`), in eval mode.

    Useful as a numerical reference for :func:`load_model`. A corrupt cached copy is rebuilt once.
    ``name`` is the default model (or an alias) or a local HF model folder.

    Example:
        >>> hf, tok = load_hf_model()                                     # doctest: +SKIP
        >>> logits = hf(**tok("Hello", return_tensors="pt")).logits
    """
    return _load_hf_checked(name, device, dtype, True)
