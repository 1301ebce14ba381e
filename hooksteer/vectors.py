"""Steering vectors addressed by TransformerLens hook names.

A :class:`SteeringVector` is a direction in the activation space of one hook point
(``blocks.12.hook_resid_post``) plus metadata saying where it came from. A
:class:`SteeringSet` holds several, possibly at different hook points.

Both save to safetensors with JSON metadata in the file header (no pickle), so a file
from an untrusted source can be loaded safely.

Example:
    >>> import torch
    >>> from hooksteer import SteeringVector
    >>> v = SteeringVector("blocks.1.hook_resid_post", torch.ones(4), method="demo")
    >>> (2 * v).vector.tolist()
    [2.0, 2.0, 2.0, 2.0]
    >>> v.layer
    1
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import SafetensorError, safe_open
from torch import Tensor

from hooksteer.io import atomic_save_file

FORMAT_VERSION = "1"
_LAYER_PATTERN = re.compile(r"^blocks\.(\d+)\.")


class SteeringFileError(ValueError):
    """A steering file is missing, corrupt, truncated, or made for another model."""


def layer_of(hook_name: str) -> int | None:
    """Layer index encoded in a hook name, or ``None`` for sites outside the blocks.

    Example:
        >>> layer_of("blocks.7.hook_resid_pre"), layer_of("hook_embed")
        (7, None)
    """
    match = _LAYER_PATTERN.match(hook_name)
    return int(match.group(1)) if match else None


def check_finite(tensor: Tensor, what: str) -> None:
    """Raise ``ValueError`` if ``tensor`` holds NaN or infinite values (or no values: the meta device)."""
    if tensor.device.type == "meta":
        raise ValueError(
            f"{what} is on the meta device: it has a shape but no values (materialise it, e.g. load the "
            "weights, before steering with it)"
        )
    if not torch.isfinite(tensor).all():
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{what} contains {n_bad} NaN/inf value(s); steering with it would corrupt activations.")


def _as_vector(vector: Any, hook_name: str) -> Float[Tensor, " d_model"]:
    if not isinstance(vector, Tensor):
        raise TypeError(f"vector for {hook_name!r} must be a torch.Tensor, got {type(vector).__name__}")
    if vector.ndim != 1:
        raise ValueError(
            f"vector for {hook_name!r} must be 1-D (d_model,), got shape {tuple(vector.shape)}"
        )
    if not vector.is_floating_point():
        raise TypeError(f"vector for {hook_name!r} must be a floating-point tensor, got dtype {vector.dtype}")
    if vector.numel() == 0:
        raise ValueError(f"vector for {hook_name!r} is empty")
    check_finite(vector, f"vector for {hook_name!r}")
    return vector


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """A steering direction at one TransformerLens hook point.

    Args:
        hook_name: TransformerLens address of the site, e.g. ``"blocks.12.hook_resid_post"``.
        vector: the direction, shape ``(d_model,)``; its norm is the steering strength.
        method: how it was made (``"diffmean"``, ``"hypersteer"``, ...).
        source: free-form JSON-serialisable metadata (prompts, model name, settings).

    Example:
        >>> import torch
        >>> v = SteeringVector("blocks.0.hook_resid_post", torch.tensor([3.0, 4.0]))
        >>> v.norm(), v.unit().vector.tolist()
        (5.0, [0.6000000238418579, 0.800000011920929])
    """

    hook_name: str
    vector: Float[Tensor, " d_model"]
    method: str = "custom"
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.hook_name, str) or not self.hook_name:
            raise ValueError("hook_name must be a non-empty string such as 'blocks.12.hook_resid_post'")
        _as_vector(self.vector, self.hook_name)

    # ----------------------------------------------------------------- properties
    @property
    def layer(self) -> int | None:
        """Block index of the hook point (``None`` for ``hook_embed`` and similar)."""
        return layer_of(self.hook_name)

    @property
    def d_model(self) -> int:
        """Width of the vector."""
        return int(self.vector.shape[0])

    def norm(self) -> float:
        """Euclidean norm of the vector."""
        return float(self.vector.float().norm())

    # ----------------------------------------------------------------- arithmetic
    def _with(self, vector: Tensor, **changes: Any) -> SteeringVector:
        return replace(self, vector=vector, **changes)

    def __mul__(self, factor: float) -> SteeringVector:
        if isinstance(factor, Tensor) and factor.numel() == 1:
            factor = float(factor)
        if not isinstance(factor, int | float) or isinstance(factor, bool):
            return NotImplemented
        if not math.isfinite(factor):
            raise ValueError(f"cannot scale a steering vector by {factor}")
        return self._with(self.vector * factor)

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> SteeringVector:
        if divisor == 0:
            raise ZeroDivisionError("cannot divide a steering vector by zero")
        return self * (1.0 / divisor)

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def _check_compatible(self, other: SteeringVector) -> None:
        if other.hook_name != self.hook_name:
            raise ValueError(
                f"cannot add vectors at different hook points ({self.hook_name!r} vs {other.hook_name!r}); "
                "put them in a SteeringSet to steer at both sites simultaneously"
            )
        if other.d_model != self.d_model:
            raise ValueError(f"d_model mismatch: {self.d_model} vs {other.d_model}")

    def __add__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        self._check_compatible(other)
        method = self.method if self.method == other.method else "combined"
        return self._with(self.vector + other.vector.to(self.vector), method=method)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self + (-other)

    def unit(self) -> SteeringVector:
        """The same direction with norm 1."""
        norm = self.vector.norm()
        if norm == 0:
            raise ValueError("cannot normalise a zero vector")
        return self._with(self.vector / norm)

    def cosine_similarity(self, other: SteeringVector | Tensor) -> float:
        """Cosine similarity with another vector (any hook point) or a raw tensor."""
        other_tensor = other.vector if isinstance(other, SteeringVector) else other
        if other_tensor.shape != self.vector.shape:
            raise ValueError(f"shape mismatch: {tuple(self.vector.shape)} vs {tuple(other_tensor.shape)}")
        return float(torch.nn.functional.cosine_similarity(self.vector.float(), other_tensor.float(), dim=0))

    def to(self, *args: Any, **kwargs: Any) -> SteeringVector:
        """Move/cast the tensor like :meth:`torch.Tensor.to`."""
        return self._with(self.vector.to(*args, **kwargs))

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Save to a ``.safetensors`` file (tensor + JSON metadata). Returns the path."""
        return SteeringSet([self]).save(path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, d_model: int | None = None, model: Any = None) -> SteeringVector:
        """Load a vector saved with :meth:`save`.

        Args:
            path: the ``.safetensors`` file.
            d_model: expected width; a mismatch raises :class:`SteeringFileError`.
            model: alternatively a TransformerLens model whose ``cfg.d_model`` is expected.
        """
        loaded = SteeringSet.load(path, d_model=d_model, model=model)
        if len(loaded) != 1:
            raise SteeringFileError(
                f"{path} holds {len(loaded)} vectors; load it with SteeringSet.load instead"
            )
        return loaded[0]

    def __repr__(self) -> str:
        return (
            f"SteeringVector(hook_name={self.hook_name!r}, d_model={self.d_model}, "
            f"norm={self.norm():.4g}, method={self.method!r})"
        )


class SteeringSet:
    """Several steering vectors, possibly at different hook points.

    Vectors sharing a hook point are *combined* (summed) when steering; vectors at
    different hook points act *simultaneously*.

    Example:
        >>> import torch
        >>> a = SteeringVector("blocks.0.hook_resid_post", torch.ones(2))
        >>> b = SteeringVector("blocks.1.hook_resid_post", torch.ones(2))
        >>> s = SteeringSet([a, b]) * 2.0
        >>> sorted(s.by_hook())
        ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post']
    """

    def __init__(self, vectors: Iterable[SteeringVector] = ()) -> None:
        self._vectors: list[SteeringVector] = []
        for vector in vectors:
            self.append(vector)

    def append(self, vector: SteeringVector) -> None:
        if not isinstance(vector, SteeringVector):
            raise TypeError(f"SteeringSet holds SteeringVector objects, got {type(vector).__name__}")
        if self._vectors and vector.d_model != self._vectors[0].d_model:
            raise ValueError(f"d_model mismatch in SteeringSet: {vector.d_model} vs {self._vectors[0].d_model}")
        self._vectors.append(vector)

    def __len__(self) -> int:
        return len(self._vectors)

    def __iter__(self) -> Iterator[SteeringVector]:
        return iter(self._vectors)

    def __getitem__(self, index: int) -> SteeringVector:
        return self._vectors[index]

    def __mul__(self, factor: float) -> SteeringSet:
        return SteeringSet(v * factor for v in self._vectors)

    __rmul__ = __mul__

    def __neg__(self) -> SteeringSet:
        return self * -1.0

    def __add__(self, other: SteeringSet | SteeringVector) -> SteeringSet:
        if isinstance(other, SteeringVector):
            other = SteeringSet([other])
        if not isinstance(other, SteeringSet):
            return NotImplemented
        return SteeringSet([*self._vectors, *other._vectors])

    def by_hook(self) -> dict[str, Float[Tensor, " d_model"]]:
        """Sum of the vectors at each hook point (what steering adds there)."""
        summed: dict[str, Tensor] = {}
        for v in self._vectors:
            summed[v.hook_name] = summed[v.hook_name] + v.vector if v.hook_name in summed else v.vector
        return summed

    @property
    def hook_names(self) -> list[str]:
        return list(dict.fromkeys(v.hook_name for v in self._vectors))

    def save(self, path: str | os.PathLike) -> Path:
        """Save all vectors to one ``.safetensors`` file with JSON metadata."""
        if not self._vectors:
            raise ValueError("cannot save an empty SteeringSet")
        path = Path(path)
        tensors = {f"vector.{i}": v.vector.detach().cpu().contiguous() for i, v in enumerate(self._vectors)}
        entries = [
            {"hook_name": v.hook_name, "method": v.method, "source": v.source} for v in self._vectors
        ]
        try:
            entries_json = json.dumps(entries)
        except TypeError as error:
            raise TypeError(f"vector metadata must be JSON-serialisable: {error}") from error
        metadata = {
            "format": "hooksteer.steering",
            "format_version": FORMAT_VERSION,
            "d_model": str(self._vectors[0].d_model),
            "vectors": entries_json,
        }
        return atomic_save_file(tensors, path, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, *, d_model: int | None = None, model: Any = None) -> SteeringSet:
        """Load a file written by :meth:`save` (or :meth:`SteeringVector.save`).

        The header (metadata and every tensor's shape and dtype) is checked before any tensor is read;
        anything malformed raises :class:`SteeringFileError` saying what.
        """
        path = Path(path)
        if model is not None:
            d_model = int(model.cfg.d_model)
        if not path.is_file():
            raise SteeringFileError(f"no steering file at {path}" + (" (it is a directory)" if path.is_dir() else ""))
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                entries = _checked_entries(path, metadata, {key: handle.get_slice(key) for key in handle.keys()},
                                           d_model)
                tensors = [handle.get_tensor(f"vector.{i}") for i in range(len(entries))]
        except (SafetensorError, OSError) as error:
            raise SteeringFileError(f"{path} is not a valid safetensors file (corrupt or truncated?): {error}") from error
        vectors = []
        for i, (entry, tensor) in enumerate(zip(entries, tensors, strict=True)):
            try:
                vectors.append(SteeringVector(entry["hook_name"], tensor, method=entry.get("method", "custom"),
                                              source=entry.get("source", {})))
            except (TypeError, ValueError) as error:
                raise SteeringFileError(f"{path}: vector {i}: {error}") from error
        return cls(vectors)

    def __repr__(self) -> str:
        inner = ", ".join(repr(v) for v in self._vectors)
        return f"SteeringSet([{inner}])"


def _checked_entries(path: Path, metadata: dict[str, str], slices: dict[str, Any],
                     d_model: int | None) -> list[dict[str, Any]]:
    """The ``vectors`` entries of a steering file's header, after checking them against its tensors."""
    if metadata.get("format") != "hooksteer.steering":
        raise SteeringFileError(f"{path} is a safetensors file but not a hooksteer steering file")
    try:
        entries = json.loads(metadata["vectors"])
    except (KeyError, json.JSONDecodeError) as error:
        raise SteeringFileError(f"{path} has corrupt metadata: {error}") from error
    if not isinstance(entries, list):
        raise SteeringFileError(f"{path}: metadata 'vectors' must be a list of entries, got {type(entries).__name__}")
    if not entries:
        raise SteeringFileError(f"{path} holds no vectors")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise SteeringFileError(f"{path}: metadata entry {i} must be an object, got {type(entry).__name__}")
        for key, kind, required in (("hook_name", str, True), ("method", str, False), ("source", dict, False)):
            if (required or key in entry) and not isinstance(entry.get(key), kind):
                raise SteeringFileError(f"{path}: entry {i}: '{key}' must be a {kind.__name__}, got {entry.get(key)!r}")
        if not entry["hook_name"]:
            raise SteeringFileError(f"{path}: entry {i}: 'hook_name' is empty")
    expected = [f"vector.{i}" for i in range(len(entries))]
    missing, extra = [k for k in expected if k not in slices], sorted(set(slices) - set(expected))
    if missing:
        raise SteeringFileError(f"{path} lacks tensor {missing[0]!r} (corrupt file)")
    if extra:
        raise SteeringFileError(f"{path} holds tensors not described by its metadata: {extra[:5]}")
    header_width = metadata.get("d_model")
    for i, key in enumerate(expected):
        shape, dtype = list(slices[key].get_shape()), str(slices[key].get_dtype())
        hook_name = entries[i]["hook_name"]
        if len(shape) != 1:
            raise SteeringFileError(f"{path}: vector {i} for {hook_name!r} must be 1-D (d_model,), got shape {shape}")
        if not dtype.startswith(("F", "BF")):
            raise SteeringFileError(f"{path}: vector {i} for {hook_name!r} must be floating-point, got {dtype}")
        if shape[0] == 0:
            raise SteeringFileError(f"{path}: vector {i} for {hook_name!r} is empty")
        if header_width is not None and str(shape[0]) != str(header_width):
            raise SteeringFileError(f"{path}: vector {i} has width {shape[0]} but the header says d_model={header_width}")
        if d_model is not None and shape[0] != d_model:
            raise SteeringFileError(
                f"{path} holds a vector of width {shape[0]} for {hook_name!r}, "
                f"but the model has d_model={d_model}: it was made for another model"
            )
    return entries


def as_vector_list(items: Iterable[SteeringVector | SteeringSet] | Mapping[str, Tensor]) -> list[SteeringVector]:
    """Flatten vectors and sets (or a ``{hook_name: tensor}`` dict) into a list of vectors."""
    if isinstance(items, Mapping):
        return [SteeringVector(name, tensor) for name, tensor in items.items()]
    flat: list[SteeringVector] = []
    for item in items:
        if isinstance(item, SteeringSet):
            flat.extend(item)
        elif isinstance(item, SteeringVector):
            flat.append(item)
        else:
            raise TypeError(
                f"expected SteeringVector or SteeringSet, got {type(item).__name__}; "
                "wrap a raw tensor as SteeringVector(hook_name, tensor)"
            )
    return flat
