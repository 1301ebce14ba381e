"""Thread safety: the per-model lock, and the guard that refuses a forward pass from another thread.

A steering context belongs to the thread that entered it (see :mod:`hooksteer.hooks`).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from torch import Tensor, nn

from hooksteer.hooks.types import HookFn


class SteeringThreadError(RuntimeError):
    """A forward pass from one thread met steering (or a position tracker) installed by another thread."""


def _check_thread(owner: int | None, what: str) -> None:
    if owner is not None and threading.get_ident() != owner:
        raise SteeringThreadError(
            f"{what} was installed by another thread, and steering belongs to the thread that entered it: "
            "this forward pass would be steered by someone else's vectors. Run it through "
            "hooksteer.generation.generate_texts (it waits for the steering to end) or inside "
            "`with hooksteer.hooks.model_lock(model):`"
        )


_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The model's re-entrant lock: held by every active steering context (by the thread that entered it),
    and taken by hooksteer's generation and activation functions, so they wait while another thread
    steers the model. Take it around your own forward passes to wait the same way.

    Example:
        >>> with model_lock(model):                                        # doctest: +SKIP
        ...     logits = model(tokens)      # never runs while another thread is steering
    """
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


class _ThreadGuard:
    """Wraps a steering hook: it runs only in the thread that installed it (see :mod:`hooksteer.hooks`)."""

    def __init__(self, hook: HookFn) -> None:
        self.hook = hook
        self.owner = threading.get_ident()

    def __call__(self, activation: Tensor, hook: Any = None) -> Any:
        _check_thread(self.owner, f"steering at {getattr(hook, 'name', None) or 'a hook point'}")
        return self.hook(activation, hook)

    def __repr__(self) -> str:
        return f"hooksteer({self.hook!r})"
