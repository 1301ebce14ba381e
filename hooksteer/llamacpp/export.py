"""Writing control vectors: what llama.cpp can express, the ``direction.N`` arrays, the ``.gguf`` file."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hooksteer.llamacpp.format import (
    ARCHITECTURE,
    FORMAT_VERSION,
    PROVENANCE_KEY,
    NotExportableError,
    control_vector_layer,
)
from hooksteer.llamacpp.target import _target_info
from hooksteer.vectors import SteeringSet, SteeringVector

_DYNAMIC_SOURCE_KEYS = ("per_token", "gate")


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
