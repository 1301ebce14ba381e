"""Files shipped inside installed packages, found without importing the package.

Weights and data come from registry packages (some with heavy import-time dependencies), so
hooksteer reads their files through ``importlib.util.find_spec`` only.

Example:
    >>> packaged_file("hooksteer", "packaged.py").name
    'packaged.py'
    >>> packaged_file("no_such_package_xyz", "x") is None
    True
"""

from __future__ import annotations

import importlib.util
import pathlib

__all__ = ["PackageMissingError", "packaged_file"]


class PackageMissingError(RuntimeError):
    """A registry package that ships weights or data is not installed; the message has the install command.

    The model, concept, base-prompt and corpus loaders raise subclasses of it, so one ``except`` catches
    every "data not installed" case.
    """


def packaged_file(package: str, relative: str) -> pathlib.Path | None:
    """Path of ``relative`` inside installed ``package``, or ``None`` if either is missing."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = pathlib.Path(location) / relative
        if path.exists():
            return path
    return None
