"""llama.cpp control vectors: export hooksteer vectors as ``.gguf``, read them back, steer llama.cpp.

A llama.cpp *control vector* is a GGUF file of architecture ``controlvector`` holding one F32 tensor
``direction.N`` per steered layer (``llama-cli -m model.gguf --control-vector cv.gguf``, or
``--control-vector-scaled cv.gguf 0.8``). :func:`export_gguf` writes a :class:`SteeringVector` or
:class:`SteeringSet` in that format, :func:`load_gguf` reads one (from hooksteer, llama.cpp's own
``llama-cvector-generator`` or repeng) back into a :class:`SteeringSet`, and :class:`LlamaCppModel`
runs a GGUF model through llama-cpp-python's low-level C API with a control vector applied.

Layer mapping, from llama.cpp's source (as vendored in llama-cpp-python 0.3.36):

* ``src/models/llama.cpp`` (likewise the other model graphs): at the end of block ``il`` -- after the
  FFN output is added back to the residual stream -- ``cur = build_cvec(cur, il)``, which is
  ``llama_adapter_cvec::apply_to`` in ``src/llama-adapter.cpp``: ``cur = ggml_add(cur, tensors[il])``.
  That residual is TransformerLens's ``blocks.{il}.hook_resid_post`` (``il`` counts from 0).
* ``src/llama-adapter.cpp`` ``llama_adapter_cvec::init``: "there's never a tensor for layer 0";
  tensors exist for ``il = 1 .. n_layer - 1``.
* ``common/common.cpp`` ``common_control_vector_load_one``: tensor ``direction.N`` is layer ``N``
  (``N = 0`` is rejected, other names are rejected), must be F32 and 1-D, and is written at offset
  ``n_embd * (N - 1)`` of the buffer given to ``llama_set_adapter_cvec``; tensors for the same layer
  -- in one file or in several ``--control-vector`` files -- are *summed*, each times its strength.

So ``direction.N`` <-> ``blocks.N.hook_resid_post`` for ``1 <= N <= n_layers - 1``, exactly (no
off-by-one). ``blocks.L.hook_resid_pre`` is the same activation as ``blocks.{L-1}.hook_resid_post``
and exports as ``direction.{L-1}`` for ``L >= 2``. llama.cpp adds the vector at every token (prompt and
generated), i.e. ``hs.steer(model, vector, positions="all")``.

What llama.cpp cannot express is refused with :class:`NotExportableError`: block 0's output, the
embeddings (``blocks.0/1.hook_resid_pre``) and any non-residual site; per-token coefficients; gated
vectors (PSR, ``ReluGate``); and vectors that depend on the prompt (in-context / cross-attention
HyperSteer). A no-context HyperSteer vector depends only on its steering prompt and exports fine.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from hooksteer import SteeringVector
    >>> v = SteeringVector("blocks.3.hook_resid_post", torch.tensor([1.0, -2.0, 0.5]))
    >>> path = export_gguf(v, Path(tempfile.mkdtemp()) / "cv.gguf")
    >>> back = load_gguf(path)[0]
    >>> back.hook_name, torch.equal(back.vector, v.vector)
    ('blocks.3.hook_resid_post', True)
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hooksteer.vectors import SteeringFileError, SteeringSet, SteeringVector, layer_of

__all__ = [
    "ARCHITECTURE",
    "ControlVectorFileError",
    "LlamaCppModel",
    "NotExportableError",
    "control_vector_buffer",
    "control_vector_layer",
    "directions",
    "export_gguf",
    "load_gguf",
    "model_gguf_info",
    "read_with_ggml",
]

#: ``general.architecture`` of a llama.cpp control-vector file.
ARCHITECTURE = "controlvector"
#: hooksteer's own metadata key: JSON list of the vectors that went into each ``direction.N``.
PROVENANCE_KEY = "hooksteer.vectors"
FORMAT_VERSION = "1"

_DIRECTION = re.compile(r"^direction\.(\d+)$")
_SITE = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_GGUF_MAGIC = b"GGUF"
_MAX_COUNT = 1 << 16          # more tensors or metadata keys than this: not a control vector
_DYNAMIC_SOURCE_KEYS = ("per_token", "gate")


class ControlVectorFileError(SteeringFileError):
    """A ``.gguf`` file is not a valid llama.cpp control vector (or not for this model)."""


class NotExportableError(ValueError):
    """The steering cannot be expressed as a llama.cpp control vector; the message says why."""


# ---------------------------------------------------------------------------- target model
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
    if model is None:
        return ModelInfo(None, None, None)
    if isinstance(model, str | os.PathLike):
        return model_gguf_info(model)
    if isinstance(model, LlamaCppModel):
        return ModelInfo(model.n_layers, model.n_embd, None)
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise TypeError(f"model must be a TransformerLens model or a model .gguf path, got {type(model).__name__}")
    arch = getattr(cfg, "original_architecture", None) or ""
    hint = re.sub(r"(ForCausalLM|LMHeadModel|Model)$", "", str(arch)).lower() or None
    return ModelInfo(int(cfg.n_layers), int(cfg.d_model), hint)


# ---------------------------------------------------------------------------- export
def control_vector_layer(hook_name: str, n_layers: int | None = None) -> int:
    """The ``direction.N`` index llama.cpp uses for a TransformerLens hook point.

    Raises:
        NotExportableError: llama.cpp has no control vector at that site.

    Example:
        >>> control_vector_layer("blocks.10.hook_resid_post"), control_vector_layer("blocks.10.hook_resid_pre")
        (10, 9)
    """
    match = _SITE.match(hook_name)
    if match is None:
        raise NotExportableError(
            f"{hook_name!r}: llama.cpp control vectors are added only to the residual stream after a whole "
            "block (blocks.N.hook_resid_post, or the equal blocks.N+1.hook_resid_pre); "
            "attention/MLP/mid-block and embedding sites have no llama.cpp equivalent"
        )
    layer, site = int(match.group(1)), match.group(2)
    direction = layer if site == "post" else layer - 1
    if direction < 1:
        where = "block 0's output" if direction == 0 else "the embeddings"
        raise NotExportableError(
            f"{hook_name!r} is {where}: llama.cpp never applies a control vector there (src/llama-adapter.cpp: "
            "\"there's never a tensor for layer 0\"; common.cpp rejects direction.0). Use a later layer."
        )
    if n_layers is not None and direction > n_layers - 1:
        raise NotExportableError(f"{hook_name!r} is outside the model's {n_layers} blocks")
    return direction


def _refuse_dynamic(vector: SteeringVector) -> None:
    source = vector.source if isinstance(vector.source, Mapping) else {}
    variant = source.get("variant")
    if vector.method == "hypersteer" and variant in ("in_context", "cross_attention"):
        raise NotExportableError(
            f"this HyperSteer vector ({variant} variant) depends on the base prompt it was computed for"
            f"{' (' + repr(source['base_prompt'][:40]) + ')' if isinstance(source.get('base_prompt'), str) else ''}; "
            "a llama.cpp control vector is one fixed vector for every prompt. Export a no_context "
            "HyperSteer's vector instead."
        )
    if vector.method == "psr" or any(key in source for key in _DYNAMIC_SOURCE_KEYS):
        raise NotExportableError(
            f"{vector.hook_name!r}: this vector is scaled per token (gated or per-token coefficients); "
            "llama.cpp adds the same vector at every token"
        )


_PSR_REASON = (
    "a PSR scales its direction per token by a gate ReLU(w·h + b) computed from each token's activation; "
    "llama.cpp control vectors add one fixed vector at every token"
)
_HYPERSTEER_REASON = (
    "a HyperSteer writes vectors, it is not one: export hyper.vector(steering_prompt) from a no_context "
    "HyperSteer (in-context and cross-attention vectors depend on the base prompt)"
)


def _as_vectors(steering: Any) -> list[SteeringVector]:
    """Flatten what :func:`export_gguf` accepts, refusing what llama.cpp cannot express."""
    kind = type(steering).__name__
    if kind == "PSR" or hasattr(steering, "gates"):
        raise NotExportableError(_PSR_REASON)
    if kind == "HyperSteer":
        raise NotExportableError(_HYPERSTEER_REASON)
    if kind == "ReluGate" or callable(steering) and not isinstance(steering, SteeringVector | SteeringSet):
        raise NotExportableError(
            f"a {kind} computes its steering per token at run time (a gate or per-token coefficients); "
            "llama.cpp control vectors add one fixed vector at every token"
        )
    if isinstance(steering, SteeringVector):
        items: list[Any] = [steering]
    elif isinstance(steering, SteeringSet):
        items = list(steering)
    elif isinstance(steering, Mapping):
        items = list(steering.items())
    elif isinstance(steering, Iterable) and not isinstance(steering, str | bytes | torch.Tensor):
        items = list(steering)
    else:
        raise TypeError(f"expected a SteeringVector or SteeringSet, got {kind}")
    out: list[SteeringVector] = []
    for item in items:
        if isinstance(item, SteeringSet):
            out.extend(item)
            continue
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor):
            name, tensor = item
            if tensor.ndim == 2:
                raise NotExportableError(
                    f"{name!r}: a 2-D tensor holds one vector per token or per batch row; llama.cpp adds one "
                    "fixed vector at every token"
                )
            item = SteeringVector(name, tensor)
        if not isinstance(item, SteeringVector):
            raise TypeError(f"expected SteeringVector or SteeringSet items, got {type(item).__name__}")
        out.append(item)
    if not out:
        raise ValueError("nothing to export: the steering holds no vector")
    for vector in out:
        _refuse_dynamic(vector)
    return out


def _factor(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def directions(
    steering: Any,
    *,
    scale: float = 1.0,
    layer_scales: Mapping[int, float] | None = None,
    n_layers: int | None = None,
    d_model: int | None = None,
) -> dict[int, np.ndarray]:
    """The ``direction.N`` float32 arrays llama.cpp would add, keyed by ``N`` (sorted).

    Vectors landing on the same layer are summed (what llama.cpp does with several directions or files
    for one layer), then multiplied by ``scale`` and by ``layer_scales.get(N, 1)``.

    Raises:
        NotExportableError: a site or kind of steering llama.cpp cannot express.
        ValueError: wrong width, non-finite values or scales.
    """
    scale = _factor(scale, "scale")
    layer_scales = {int(k): _factor(v, f"layer_scales[{k}]") for k, v in (layer_scales or {}).items()}
    summed: dict[int, torch.Tensor] = {}
    for vector in _as_vectors(steering):
        if d_model is not None and vector.d_model != d_model:
            raise ValueError(
                f"{vector.hook_name!r} has width {vector.d_model}, but the model has d_model={d_model}"
            )
        n = control_vector_layer(vector.hook_name, n_layers)
        tensor = vector.vector.detach().to(device="cpu", dtype=torch.float32)
        summed[n] = summed[n] + tensor if n in summed else tensor
    unknown = sorted(set(layer_scales) - set(summed))
    if unknown:
        raise ValueError(f"layer_scales names layers {unknown} that hold no vector (layers: {sorted(summed)})")
    out: dict[int, np.ndarray] = {}
    for n in sorted(summed):
        factor = scale * layer_scales.get(n, 1.0)
        tensor = summed[n] if factor == 1.0 else summed[n] * factor
        array = tensor.numpy().astype(np.float32, copy=True)
        if not np.isfinite(array).all():
            raise ValueError(f"direction.{n} overflows to NaN/inf after scaling by {factor:g}")
        out[n] = array
    return out


def _provenance(vectors: list[SteeringVector], n_layers: int | None, factors: dict[int, float]) -> str:
    entries = [
        {"direction": control_vector_layer(v.hook_name, n_layers), "hook_name": v.hook_name, "method": v.method,
         "source": v.source}
        for v in vectors
    ]
    for entry in entries:
        entry["factor"] = factors[entry["direction"]]
    return json.dumps(entries, default=str)


def export_gguf(
    steering: Any,
    path: str | os.PathLike,
    *,
    scale: float = 1.0,
    layer_scales: Mapping[int, float] | None = None,
    model: Any = None,
    model_hint: str | None = None,
) -> Path:
    """Write a llama.cpp control vector ``.gguf`` (architecture ``controlvector``, ``direction.N`` tensors).

    Args:
        steering: a :class:`SteeringVector`, a :class:`SteeringSet`, or an iterable of them.
        path: output file, written atomically (temporary sibling + rename).
        scale: multiplies every direction (``llama-cli --control-vector-scaled`` scales again at load).
        layer_scales: extra factor per llama.cpp layer ``N`` (= ``blocks.N.hook_resid_post``).
        model: the target model, to check width and depth: a TransformerLens model, or the path of the
            model's ``.gguf`` (only its header is read).
        model_hint: ``controlvector.model_hint`` (repeng writes the HF ``model_type``, e.g. ``"llama"``);
            default: from ``model``, else ``"unknown"``. llama.cpp does not check it.

    Returns:
        The path written.

    Raises:
        NotExportableError: per-token, gated or prompt-dependent steering, or a site llama.cpp lacks.
        ValueError: width mismatch, non-finite values, bad scales.
    """
    info = _target_info(model)
    vectors = _as_vectors(steering)
    arrays = directions(vectors, scale=scale, layer_scales=layer_scales, n_layers=info.n_layers,
                        d_model=info.d_model)
    per_layer = {int(k): float(v) for k, v in (layer_scales or {}).items()}
    factors = {n: float(scale) * per_layer.get(n, 1.0) for n in arrays}
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        writer.add_string(f"{ARCHITECTURE}.model_hint", model_hint or info.hint or "unknown")
        writer.add_uint32(f"{ARCHITECTURE}.layer_count", len(arrays))
        writer.add_string("hooksteer.format_version", FORMAT_VERSION)
        writer.add_string(PROVENANCE_KEY, _provenance(vectors, info.n_layers, factors))
        for n, array in arrays.items():
            writer.add_tensor(f"direction.{n}", array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------- import
def _check_header(path: Path) -> None:
    """Cheap checks before the GGUF parser: magic, version and sane counts."""
    if not path.is_file():
        raise ControlVectorFileError(f"no control-vector file at {path}")
    with path.open("rb") as handle:
        head = handle.read(24)
    if len(head) < 4 or head[:4] != _GGUF_MAGIC:
        raise ControlVectorFileError(f"{path} is not a GGUF file (bad magic {head[:4]!r})")
    if len(head) < 24:
        raise ControlVectorFileError(f"{path} is truncated ({len(head)} bytes, no complete GGUF header)")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in (2, 3):
        raise ControlVectorFileError(f"{path}: unsupported GGUF version {version} (corrupt file?)")
    if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
        raise ControlVectorFileError(f"{path}: implausible header ({n_tensors} tensors, {n_kv} keys): corrupt file")


def _open_reader(path: Path) -> Any:
    import gguf

    _check_header(path)
    try:
        return gguf.GGUFReader(path)
    except Exception as error:  # the reader raises ValueError, IndexError, KeyError, ... on bad bytes
        raise ControlVectorFileError(f"{path} is not a valid GGUF file (corrupt or truncated?): {error}") from error


def _string_field(reader: Any, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or not field.parts:
        return None
    try:
        return bytes(field.parts[-1]).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _int_field(reader: Any, key: str) -> int | None:
    field = reader.get_field(key)
    if field is None or not field.parts:
        return None
    try:
        return int(np.asarray(field.parts[-1]).reshape(-1)[0])
    except (ValueError, TypeError, IndexError):
        return None


def _read_provenance(reader: Any, path: Path) -> dict[int, list[dict[str, Any]]]:
    text = _string_field(reader, PROVENANCE_KEY)
    if text is None:
        return {}
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise ControlVectorFileError(f"{path} has corrupt {PROVENANCE_KEY} metadata: {error}") from error
    by_layer: dict[int, list[dict[str, Any]]] = {}
    if not isinstance(entries, list):
        raise ControlVectorFileError(f"{path} has corrupt {PROVENANCE_KEY} metadata (not a list)")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("direction"), int):
            raise ControlVectorFileError(f"{path} has corrupt {PROVENANCE_KEY} metadata entry {entry!r:.80}")
        by_layer.setdefault(entry["direction"], []).append(entry)
    return by_layer


def load_gguf(
    path: str | os.PathLike,
    *,
    model: Any = None,
    d_model: int | None = None,
    n_layers: int | None = None,
    strength: float = 1.0,
) -> SteeringSet:
    """Read a llama.cpp / repeng / hooksteer control-vector ``.gguf`` into a :class:`SteeringSet`.

    ``direction.N`` becomes a vector at ``blocks.N.hook_resid_post`` (times ``strength``, like
    ``--control-vector-scaled``). A file written by :func:`export_gguf` from one vector per layer at
    ``resid_post`` with factor 1 comes back with the same method and source; otherwise the method is
    ``"controlvector"`` and the source holds the model hint and what the file says went into it.

    The file is parsed as data only (GGUF header, metadata, tensors): nothing in it is executed.

    Args:
        model: TransformerLens model or model ``.gguf`` path whose width/depth the file must fit.
        d_model, n_layers: the same checks without a model.

    Raises:
        ControlVectorFileError: missing, corrupt or truncated file; another architecture; tensors that
            llama.cpp would reject (names other than ``direction.N`` with ``N >= 1``, non-F32, not 1-D,
            mixed widths); non-finite values; width or depth that does not fit the model.
    """
    path = Path(path)
    info = _target_info(model)
    d_model = d_model if d_model is not None else info.d_model
    n_layers = n_layers if n_layers is not None else info.n_layers
    strength = _factor(strength, "strength")
    reader = _open_reader(path)
    arch = _string_field(reader, "general.architecture")
    if arch is None:
        raise ControlVectorFileError(f"{path} has no general.architecture: not a llama.cpp control vector")
    if arch != ARCHITECTURE:
        raise ControlVectorFileError(
            f"{path} is a GGUF file of architecture {arch!r} (a model?), not a llama.cpp control vector "
            f"(architecture {ARCHITECTURE!r})"
        )
    hint = _string_field(reader, f"{ARCHITECTURE}.model_hint")
    provenance = _read_provenance(reader, path)
    import gguf

    arrays: dict[int, np.ndarray] = {}
    width: int | None = None
    for tensor in reader.tensors:
        match = _DIRECTION.match(tensor.name)
        if match is None:
            raise ControlVectorFileError(
                f"{path}: tensor {tensor.name!r} is not named direction.N (llama.cpp rejects the file)"
            )
        n = int(match.group(1))
        if n == 0:
            raise ControlVectorFileError(f"{path}: direction.0 is invalid (llama.cpp never steers layer 0)")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ControlVectorFileError(
                f"{path}: {tensor.name} has type {tensor.tensor_type.name}; llama.cpp accepts only F32"
            )
        shape = [int(d) for d in np.asarray(tensor.shape).reshape(-1)]
        n_dims = max((i + 1 for i, d in enumerate(shape) if d != 1), default=1)   # ggml_n_dims
        if n_dims != 1:
            raise ControlVectorFileError(f"{path}: {tensor.name} has shape {shape}; llama.cpp needs a 1-D tensor")
        n_elements = int(tensor.n_elements)
        data = np.asarray(tensor.data).reshape(-1)
        if data.size != n_elements:
            raise ControlVectorFileError(
                f"{path}: {tensor.name} has {data.size} of its {n_elements} values (truncated file)"
            )
        if width is None:
            width = n_elements
        elif n_elements != width:
            raise ControlVectorFileError(f"{path}: {tensor.name} has width {n_elements}, the others {width}")
        if not np.isfinite(data).all():
            bad = int((~np.isfinite(data)).sum())
            raise ControlVectorFileError(f"{path}: {tensor.name} holds {bad} NaN/inf value(s)")
        arrays[n] = np.array(data, dtype=np.float32, copy=True)
    del reader
    if not arrays:
        raise ControlVectorFileError(f"{path} holds no direction tensors")
    if d_model is not None and width != d_model:
        raise ControlVectorFileError(
            f"{path} holds directions of width {width}, but the model has d_model={d_model}: "
            f"it was made for another model (model_hint {hint!r})"
        )
    if n_layers is not None and max(arrays) > n_layers - 1:
        raise ControlVectorFileError(
            f"{path} steers layer {max(arrays)}, but the model has only {n_layers} blocks "
            f"(layers 1..{n_layers - 1}): it was made for another model (model_hint {hint!r})"
        )
    vectors = []
    for n in sorted(arrays):
        tensor = torch.from_numpy(arrays[n])
        if strength != 1.0:
            tensor = tensor * strength
        hook_name = f"blocks.{n}.hook_resid_post"
        entries = provenance.get(n, [])
        if (len(entries) == 1 and entries[0].get("hook_name") == hook_name and entries[0].get("factor") == 1.0
                and isinstance(entries[0].get("method"), str) and isinstance(entries[0].get("source"), dict)):
            method, source = entries[0]["method"], entries[0]["source"]
        else:
            methods = {e.get("method") for e in entries}
            method = methods.pop() if len(methods) == 1 and isinstance(next(iter(methods)), str) else "controlvector"
            source = {"file": path.name, "model_hint": hint, "direction": n}
            if entries:
                source["contributions"] = entries
        vectors.append(SteeringVector(hook_name, tensor, method=method, source=source))
    return SteeringSet(vectors)


def control_vector_buffer(
    files: Sequence[str | os.PathLike | tuple[str | os.PathLike, float]], *, n_layers: int | None = None
) -> tuple[int, np.ndarray]:
    """``(n_embd, data)`` for ``llama_set_adapter_cvec``, summed over files as ``common_control_vector_load``.

    Each item is a path or ``(path, strength)``; ``data[n_embd * (N - 1):][:n_embd]`` is layer ``N``'s sum.
    """
    total: np.ndarray | None = None
    width: int | None = None
    for item in files:
        file, strength = (item, 1.0) if isinstance(item, str | os.PathLike) else item
        loaded = load_gguf(file, n_layers=n_layers, strength=strength)
        for vector in loaded:
            n = int(layer_of(vector.hook_name) or 0)
            array = vector.vector.numpy()
            if width is None:
                width = array.size
            elif array.size != width:
                raise ControlVectorFileError(f"control vectors in {file} do not match previous dimensions")
            needed = width * n
            if total is None:
                total = np.zeros(needed, dtype=np.float32)
            elif total.size < needed:
                total = np.concatenate([total, np.zeros(needed - total.size, dtype=np.float32)])
            total[width * (n - 1): width * n] += array
    if total is None or width is None:
        raise ValueError("no control-vector files given")
    return width, total


# ---------------------------------------------------------------------------- llama.cpp runtime
def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as error:
        raise ImportError(
            "llama-cpp-python is not installed; `make llamacpp` builds it into the project's venv "
            "(CMAKE_ARGS='-DGGML_NATIVE=OFF ...' pip install llama-cpp-python==0.3.36)"
        ) from error
    return llama_cpp


class _GGUFInitParams(ctypes.Structure):
    """ggml's ``struct gguf_init_params`` (ggml/include/gguf.h)."""

    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


_VOID, _I64, _STR = ctypes.c_void_p, ctypes.c_int64, ctypes.c_char_p
#: ggml / gguf C functions used by :func:`read_with_ggml`: name -> (argument types, return type).
_GGML_PROTOTYPES: dict[str, tuple[list[Any], Any]] = {
    "gguf_init_from_file": ([_STR, _GGUFInitParams], _VOID),
    "gguf_free": ([_VOID], None),
    "gguf_get_n_tensors": ([_VOID], _I64),
    "gguf_get_tensor_name": ([_VOID, _I64], _STR),
    "gguf_get_tensor_type": ([_VOID, _I64], ctypes.c_int),
    "gguf_find_key": ([_VOID, _STR], _I64),
    "gguf_get_kv_type": ([_VOID, _I64], ctypes.c_int),
    "gguf_get_val_str": ([_VOID, _I64], _STR),
    "ggml_get_tensor": ([_VOID, _STR], _VOID),
    "ggml_n_dims": ([_VOID], ctypes.c_int),
    "ggml_nelements": ([_VOID], _I64),
    "ggml_get_data_f32": ([_VOID], ctypes.POINTER(ctypes.c_float)),
    "ggml_free": ([_VOID], None),
}


def read_with_ggml(path: str | os.PathLike) -> tuple[str | None, dict[int, np.ndarray]]:
    """Parse a control vector with llama.cpp's own GGUF reader (ggml's C ``gguf_init_from_file``).

    Mirrors ``common_control_vector_load_one`` (common/common.cpp): returns the architecture and the
    ``direction.N`` arrays; raises :class:`ControlVectorFileError` where llama.cpp would reject the file.
    Needs llama-cpp-python (its shared ggml library).
    """
    from llama_cpp import _ggml

    lib = _ggml.libggml
    for name, (argtypes, restype) in _GGML_PROTOTYPES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype

    ggml_ctx = ctypes.c_void_p()
    gguf_ctx = lib.gguf_init_from_file(os.fsencode(path), _GGUFInitParams(False, ctypes.pointer(ggml_ctx)))
    if not gguf_ctx:
        raise ControlVectorFileError(f"llama.cpp's gguf_init_from_file could not read {path}")
    try:
        key = lib.gguf_find_key(gguf_ctx, b"general.architecture")
        is_string = key >= 0 and lib.gguf_get_kv_type(gguf_ctx, key) == 8   # GGUF_TYPE_STRING
        arch = lib.gguf_get_val_str(gguf_ctx, key).decode() if is_string else None
        out: dict[int, np.ndarray] = {}
        for i in range(lib.gguf_get_n_tensors(gguf_ctx)):
            name = lib.gguf_get_tensor_name(gguf_ctx, i).decode()
            match = _DIRECTION.match(name)
            if match is None or int(match.group(1)) == 0:
                raise ControlVectorFileError(f"{path}: llama.cpp rejects tensor {name!r}")
            if lib.gguf_get_tensor_type(gguf_ctx, i) != 0:  # GGML_TYPE_F32
                raise ControlVectorFileError(f"{path}: llama.cpp rejects non-F32 tensor {name!r}")
            tensor = lib.ggml_get_tensor(ggml_ctx, name.encode())
            if lib.ggml_n_dims(tensor) != 1:
                raise ControlVectorFileError(f"{path}: llama.cpp rejects non-1-D tensor {name!r}")
            count = lib.ggml_nelements(tensor)
            data = np.ctypeslib.as_array(lib.ggml_get_data_f32(tensor), shape=(count,))
            out[int(match.group(1))] = np.array(data, dtype=np.float32, copy=True)
        return arch, out
    finally:
        lib.gguf_free(gguf_ctx)
        if ggml_ctx.value:
            lib.ggml_free(ggml_ctx)


class LlamaCppModel:
    """A GGUF model in llama.cpp (llama-cpp-python's low-level C API) with an optional control vector.

    Example:
        >>> llm = LlamaCppModel(find_default_gguf())                                  # doctest: +SKIP
        >>> base = llm.next_token_logits(tokens)                                      # doctest: +SKIP
        >>> llm.set_control_vector(["love.gguf"])                                      # doctest: +SKIP
        >>> steered = llm.next_token_logits(tokens)                                    # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, *, n_ctx: int = 512, n_threads: int | None = None,
                 quiet: bool = True) -> None:
        lc = _llama_cpp()
        self._lc = lc
        if quiet:
            _silence_llama_cpp_logs(lc)
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(os.fsencode(path), params)
        if not self.model:
            raise ControlVectorFileError(f"llama.cpp could not load the model {path}")
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx
        cparams.n_ubatch = n_ctx
        threads = n_threads or max(1, min(4, os.cpu_count() or 1))
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise RuntimeError("llama.cpp could not create a context")
        self.n_layers = int(lc.llama_model_n_layer(self.model))
        self.n_embd = int(lc.llama_model_n_embd(self.model))
        self.n_vocab = int(lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model)))
        self._cvec: Any = None

    def set_control_vector(
        self,
        control: Any,
        *,
        layer_start: int = 1,
        layer_end: int | None = None,
    ) -> None:
        """Apply a control vector through ``llama_set_adapter_cvec`` (``None`` removes it).

        ``control`` is a list of ``.gguf`` paths / ``(path, strength)`` pairs (summed as llama-cli does),
        a :class:`SteeringVector` / :class:`SteeringSet` (converted with :func:`directions`), or a
        float32 buffer as :func:`control_vector_buffer` returns.
        ``layer_start``/``layer_end`` are llama-cli's ``--control-vector-layer-range`` (inclusive;
        default 1 .. n_layers, as common.cpp).
        """
        lc = self._lc
        if control is None:
            self._cvec = None
            if lc.llama_set_adapter_cvec(self.ctx, None, 0, self.n_embd, -1, -1) != 0:
                raise RuntimeError("llama_set_adapter_cvec failed to clear the control vector")
            return
        if isinstance(control, np.ndarray):   # a ready buffer: layer N at [n_embd * (N - 1), n_embd * N)
            n_embd, data = self.n_embd, control
            if data.ndim != 1 or data.size % n_embd:
                raise ValueError(f"a control-vector buffer must be 1-D with a multiple of {n_embd} values")
        elif isinstance(control, SteeringVector | SteeringSet):
            arrays = directions(control, n_layers=self.n_layers, d_model=self.n_embd)
            n_embd = self.n_embd
            data = np.zeros(n_embd * max(arrays), dtype=np.float32)
            for n, array in arrays.items():
                data[n_embd * (n - 1): n_embd * n] = array
        else:
            n_embd, data = control_vector_buffer(list(control), n_layers=self.n_layers)
        # llama_adapter_cvec::apply copies only the layers the buffer covers and leaves the others as they
        # were: a shorter buffer after a longer one would keep the old vector's deeper layers. Pad to full
        # depth (layers 1 .. n_layers-1) so every layer is overwritten.
        full = n_embd * (self.n_layers - 1)
        if data.size > full:
            raise ValueError(f"the control vector has {data.size // n_embd} layers; the model has {self.n_layers - 1}")
        self._cvec = np.zeros(full, dtype=np.float32)       # kept alive while llama.cpp copies it
        self._cvec[: data.size] = data
        pointer = self._cvec.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        end = self.n_layers if layer_end is None else layer_end
        if lc.llama_set_adapter_cvec(self.ctx, pointer, self._cvec.size, n_embd, layer_start, end) != 0:
            raise ControlVectorFileError(
                f"llama_set_adapter_cvec rejected the control vector (width {n_embd} vs model {self.n_embd}?)"
            )

    def next_token_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits (``n_vocab``, float32) after ``tokens``, decoded from an empty KV cache."""
        lc = self._lc
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("no tokens to decode")
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        array = (lc.llama_token * len(tokens))(*tokens)
        batch = lc.llama_batch_get_one(array, len(tokens))
        if lc.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        logits = lc.llama_get_logits_ith(self.ctx, -1)
        return np.array(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)), dtype=np.float32, copy=True)

    def close(self) -> None:
        lc = self._lc
        if getattr(self, "ctx", None):
            lc.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            lc.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LOG_CALLBACK: Any = None


def _silence_llama_cpp_logs(lc: Any) -> None:
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = lc.llama_log_callback(lambda level, text, user_data: None)
        lc.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


# ---------------------------------------------------------------------------- command line
def load_exportable(path: str | os.PathLike) -> SteeringSet:
    """Load a hooksteer steering file for export, refusing PSR and HyperSteer files with the reason."""
    path = Path(path)
    if path.is_dir():
        if (path / "psr_config.json").is_file():
            raise NotExportableError(f"{path} is a saved PSR: {_PSR_REASON}")
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            raise NotExportableError(f"{path} is a saved HyperSteer: {_HYPERSTEER_REASON}")
        raise SteeringFileError(f"{path} is a folder, not a steering vector file")
    if path.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                file_format = (handle.metadata() or {}).get("format")
        except (SafetensorError, OSError, ValueError):
            file_format = None  # SteeringSet.load reports the problem
        if file_format == "hooksteer-psr-1":
            raise NotExportableError(f"{path} holds a PSR: {_PSR_REASON}")
        if file_format == "hooksteer.hypersteer":
            raise NotExportableError(f"{path} holds HyperSteer weights: {_HYPERSTEER_REASON}")
    return SteeringSet.load(path)


def run_export_gguf(args: Any) -> int:
    """``hooksteer export-gguf VECTOR.safetensors --out cv.gguf [--scale S] [--model-gguf PATH]``."""
    steering = load_exportable(args.vector)
    model = args.model_gguf
    if model == "default":
        from hooksteer.models import find_default_gguf

        model = find_default_gguf()
    out = export_gguf(steering, args.out, scale=args.scale, model=model, model_hint=args.model_hint)
    layers = ", ".join(f"direction.{n}" for n in sorted(directions(steering, scale=args.scale)))
    print(f"Wrote {out} ({layers}); steer llama.cpp with: llama-cli -m MODEL.gguf --control-vector {out}")
    return 0


def add_parser(commands: Any) -> Any:
    """Register ``export-gguf`` on the CLI's subparsers."""
    parser = commands.add_parser(
        "export-gguf", help="write a saved vector as a llama.cpp control vector (.gguf, --control-vector)")
    parser.add_argument("vector", help="a .safetensors file saved by hooksteer (SteeringVector / SteeringSet)")
    parser.add_argument("--out", required=True, help="output .gguf")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every direction (default 1)")
    parser.add_argument("--model-gguf", default=None,
                        help="the model .gguf the vector is for (header read to check width and depth); "
                             "'default' = the embedded SmolLM2")
    parser.add_argument("--model-hint", default=None, help="controlvector.model_hint (default: from --model-gguf)")
    parser.set_defaults(func=run_export_gguf)
    return parser
