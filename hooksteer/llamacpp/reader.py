"""Opening GGUF files as data only: header checks before the parser, string and integer fields."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from hooksteer.llamacpp.format import ControlVectorFileError

_GGUF_MAGIC = b"GGUF"
_MAX_COUNT = 1 << 16          # more tensors or metadata keys than this: not a control vector


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
