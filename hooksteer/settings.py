"""Settings dataclasses ↔ command-line flags ↔ JSON saved beside a run's outputs.

A run's settings are one dataclass (like sae-lens's runner configs): the CLI builds its flags from the
fields (:func:`add_arguments`), turns parsed flags back into the dataclass (:func:`from_arguments`), and
the run saves it as JSON next to what it wrote (:func:`save_settings`). Field help comes from
``field(metadata={"help": ...})``.

Example:
    >>> import argparse
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Demo:
    ...     steps: int = field(default=10, metadata={"help": "training steps"})
    ...     factors: list[float] = field(default_factory=lambda: [0.1, 0.2])
    ...     retrain: bool = False
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser, Demo, prefix="demo-")
    >>> args = parser.parse_args(["--demo-steps", "3", "--demo-factors", "0.5", "--demo-retrain"])
    >>> from_arguments(Demo, args, prefix="demo-")
    Demo(steps=3, factors=[0.5], retrain=True)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "changed_fields", "from_arguments", "save_settings", "settings_dict"]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _scalar_type(annotation: Any) -> Any:
    """``int`` for ``int | None``, the element type for ``list[float]``, ``str`` for anything unknown."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(options[0]) if len(options) == 1 else str
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return _scalar_type(args[0]) if args else str
    return annotation if annotation in (int, float, str, bool) else str


def _optional_number(kind: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, *, prefix: str = "",
                  skip: tuple[str, ...] = ()) -> None:
    """Add one ``--{prefix}{field-name}`` flag per field of the dataclass ``cls`` (``skip``: fields left out).

    ``bool`` fields become ``--x / --no-x``; ``list`` fields take several values; ``X | None`` fields accept
    ``none``. Defaults are the dataclass's.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        annotation = hints[f.name]
        default = _default(f)
        flag = f"--{prefix}{f.name.replace('_', '-')}"
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        kind = _scalar_type(annotation)
        optional = type(None) in typing.get_args(annotation)
        if kind is bool and typing.get_origin(annotation) not in (list, tuple):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(annotation) in (list, tuple) or (
                optional and any(typing.get_origin(a) in (list, tuple) for a in typing.get_args(annotation))):
            parser.add_argument(flag, nargs="*", type=kind, default=default, help=help_text,
                                choices=f.metadata.get("choices"))
        else:
            parser.add_argument(flag, type=_optional_number(kind) if optional else kind, default=default,
                                help=help_text, choices=f.metadata.get("choices"))


def from_arguments(cls: type, args: argparse.Namespace, *, prefix: str = "", **overrides: Any) -> Any:
    """The dataclass ``cls`` built from parsed flags (added by :func:`add_arguments`) and ``overrides``."""
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        attribute = f"{prefix}{f.name}".replace("-", "_")
        if hasattr(args, attribute):
            value = getattr(args, attribute)
            values[f.name] = list(value) if isinstance(value, tuple) else value
    values.update(overrides)
    return cls(**values)


def changed_fields(settings: Any) -> dict[str, Any]:
    """The fields of a settings dataclass whose value differs from the default."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
            if f.init and getattr(settings, f.name) != _default(f)}


def settings_dict(settings: Any) -> dict[str, Any]:
    """JSON-ready dict of a settings dataclass (paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(settings), default=str))


def save_settings(settings: Any, path: str | os.PathLike) -> Path:
    """Write a settings dataclass as JSON to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps({"class": type(settings).__name__, **settings_dict(settings)}, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
