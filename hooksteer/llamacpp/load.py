"""Reading control vectors back: a ``.gguf`` file into a :class:`SteeringSet`, files into llama.cpp's buffer."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hooksteer.llamacpp.export import _factor
from hooksteer.llamacpp.format import _DIRECTION, ARCHITECTURE, PROVENANCE_KEY, ControlVectorFileError
from hooksteer.llamacpp.reader import _open_reader, _string_field
from hooksteer.llamacpp.target import _target_info
from hooksteer.vectors import SteeringSet, SteeringVector, layer_of


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
