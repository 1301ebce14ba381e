"""The on-disk weight cache: where it lives, build locks, atomic folder writes and validation.

Every cache folder is written to a temporary sibling and renamed into place, so an interrupted run
never leaves a half-written cache; a folder that fails validation is rebuilt with a
:class:`CacheRebuildWarning`. Builds take a file lock, so parallel processes do not build twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator

from hooksteer.models.default import DEFAULT_MODEL, _is_default
from hooksteer.models.offline import _hub_offline, _quiet

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 1  # bump to invalidate every existing cache
_MARKER = "hooksteer.json"  # written into each cache folder, last, with the format version
_WEIGHTS_FILE = "model.safetensors"
_HF_FILES = ("config.json", _WEIGHTS_FILE, "tokenizer.json", "tokenizer_config.json", _MARKER)
_TL_FILES = ("config.json", _WEIGHTS_FILE, "tokenizer.json", "tokenizer_config.json", _MARKER)


class CacheRebuildWarning(UserWarning):
    """A cached model file was missing or corrupt and is being rebuilt."""


class _CorruptCacheError(RuntimeError):
    """Internal: a cache folder failed validation while loading."""


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


def _model_cache(name: str) -> pathlib.Path:
    return cache_dir() / DEFAULT_MODEL if _is_default(name) else cache_dir() / name


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


def _ensure_built(
    folder: pathlib.Path,
    required: tuple[str, ...],
    build: Callable[[pathlib.Path, bool], None],
    progress: bool,
    *,
    force: bool = False,
) -> pathlib.Path:
    """Run ``build(folder, progress)`` under the folder's lock unless ``folder`` is a valid cache already."""
    if not force and _folder_problem(folder, required) is None:
        return folder
    with _build_lock(folder), _hub_offline(), _quiet(progress):
        problem = "forced rebuild" if force else _folder_problem(folder, required)
        if problem is None:  # another process built it while we waited for the lock
            return folder
        if folder.exists() and not force:  # forced rebuilds were already reported by the caller
            _warn_rebuild(folder, problem)
        build(folder, progress)
    return folder
