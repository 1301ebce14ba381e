"""hooksteer: activation steering for TransformerLens models.

Attributes are imported lazily, so ``import hooksteer`` (and the pytest plugin that ships with it)
costs nothing until a name is used.

Example:
    >>> import hooksteer as hs                                                  # doctest: +SKIP
    >>> model = hs.load_model()
    >>> vec = hs.methods.diffmean(model, positive=["I love it"], negative=["I hate it"],
    ...                           hook_name="blocks.6.hook_resid_post")
    >>> with hs.steer(model, vec * 4.0, positions="generated"):
    ...     print(model.generate(hs.format_chat(model, "Tell me about your day."), max_new_tokens=40))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "PositionTracker": "hooksteer.hooks",
    "ReluGate": "hooksteer.hooks",
    "UnknownHookError": "hooksteer.hooks",
    "add_gated": "hooksteer.hooks",
    "add_per_token": "hooksteer.hooks",
    "add_vector": "hooksteer.hooks",
    "steer": "hooksteer.hooks",
    "track_positions": "hooksteer.hooks",
    "DEFAULT_MODEL": "hooksteer.models",
    "format_chat": "hooksteer.models",
    "load_bridge": "hooksteer.models",
    "load_model": "hooksteer.models",
    "SteeringFileError": "hooksteer.vectors",
    "SteeringSet": "hooksteer.vectors",
    "SteeringVector": "hooksteer.vectors",
    "export_gguf": "hooksteer.llamacpp",
    "load_gguf": "hooksteer.llamacpp",
}
_SUBMODULES = (
    "hooks", "methods", "models", "vectors", "activations", "generation", "testing", "data", "evaluate", "hypersteer",
    "llamacpp",
)

__all__ = [
    "DEFAULT_MODEL",
    "PositionTracker",
    "ReluGate",
    "SteeringFileError",
    "SteeringSet",
    "SteeringVector",
    "UnknownHookError",
    "add_gated",
    "add_per_token",
    "add_vector",
    "export_gguf",
    "format_chat",
    "hooks",
    "load_bridge",
    "load_gguf",
    "load_model",
    "methods",
    "steer",
    "track_positions",
]

if TYPE_CHECKING:  # pragma: no cover
    from hooksteer import hooks, methods
    from hooksteer.hooks import (
        PositionTracker,
        ReluGate,
        UnknownHookError,
        add_gated,
        add_per_token,
        add_vector,
        steer,
        track_positions,
    )
    from hooksteer.llamacpp import export_gguf, load_gguf
    from hooksteer.models import DEFAULT_MODEL, format_chat, load_bridge, load_model
    from hooksteer.vectors import SteeringFileError, SteeringSet, SteeringVector


def __getattr__(name: str) -> Any:
    # Not cached in globals(): ``hs.load_model`` always resolves to ``hooksteer.models.load_model``,
    # so patching the defining module (e.g. with pytest's monkeypatch) is seen here and undone cleanly.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"hooksteer.{name}")
    raise AttributeError(f"module 'hooksteer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])
