"""Atomic file writes for run records: a reader sees the old file or the new one, never half of one.

Every writer stages its bytes in a temporary file in the target's own folder (same file system),
flushes it to disk (``fsync``) and then renames it over the target with :func:`os.replace`, which is
atomic. If anything fails, the temporary file is removed and the old target is left as it was.
:func:`atomic_write_files` stages several files first and renames them only when all are on disk, so a
failed save never mixes new and old files (e.g. new weights with an old config).

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = atomic_write_json(folder / "config.json", {"seed": 0})
    >>> sorted(p.name for p in folder.iterdir())
    ['config.json']
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union

__all__ = ["atomic_save_file", "atomic_write_bytes", "atomic_write_files", "atomic_write_json", "atomic_write_text"]

#: What to write: the bytes themselves, or a function that writes the file at the path it is given.
Content = Union[bytes, Callable[[Path], None]]


def _stage(path: Path, content: Content) -> Path:
    """Write ``content`` to a new temporary file beside ``path``, fsynced; returns the temporary path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        if isinstance(content, bytes):
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            os.close(fd)
            content(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_files(files: Mapping[str | os.PathLike, Content]) -> list[Path]:
    """Write several files atomically as a group: all are staged (and fsynced) before any is renamed.

    Returns the target paths. On failure no target has changed and no temporary file is left.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for target, content in files.items():
            path = Path(target)
            if path.is_dir():
                raise IsADirectoryError(f"cannot write {path}: it is a directory")
            staged.append((_stage(path, content), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return [path for _, path in staged]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename). Returns the path."""
    return atomic_write_files({path: data})[0]


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically. Returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, data: Any, **dumps: Any) -> Path:
    """Serialise ``data`` (``json.dumps(data, indent=2, **dumps)``) first, then write it atomically.

    Serialisation errors are raised before anything is written."""
    return atomic_write_text(path, json.dumps(data, **{"indent": 2, **dumps}))


def atomic_save_file(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` made atomic."""
    from safetensors.torch import save_file

    return atomic_write_files({path: lambda tmp: save_file(tensors, str(tmp), metadata=metadata)})[0]
