"""Steering hooks installed for a ``with`` block: :func:`apply_steering_hooks`, :func:`active_steering`."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from hooksteer.hooks.checks import _no_token_axis, _no_token_axis_message, check_hook_name
from hooksteer.hooks.steering_hook import SteeringHook
from hooksteer.hooks.threads import _ThreadGuard, model_lock
from hooksteer.hooks.tracker import PositionTracker
from hooksteer.hooks.types import HookFn


@dataclass
class SteeringHandle:
    """What :func:`steer` yields: the installed hooks and the position tracker."""

    tracker: PositionTracker
    fwd_hooks: list[tuple[str, SteeringHook]] = field(default_factory=list)

    @property
    def hook_names(self) -> list[str]:
        return [name for name, _ in self.fwd_hooks]


# Steering installed through apply_steering_hooks, per model: lets hooksteer.generation replay the same
# hook objects on a faster module that shares the model's weights (see hooksteer.fast_generation).
_ACTIVE_STEERING: weakref.WeakKeyDictionary[nn.Module, list[SteeringHandle]] = weakref.WeakKeyDictionary()


def active_steering(model: nn.Module) -> list[SteeringHandle]:
    """The steering currently installed on ``model`` by :func:`steer` / :func:`apply_steering_hooks`
    (outermost first).

    Example:
        >>> with steer(model, vec * 4.0):                                  # doctest: +SKIP
        ...     [h.hook_names for h in active_steering(model)]
        [['blocks.6.hook_resid_post']]
    """
    return list(_ACTIVE_STEERING.get(model, []))


@contextmanager
def apply_steering_hooks(model: nn.Module, fwd_hooks: Sequence[tuple[str, HookFn]],
                         tracker: PositionTracker) -> Iterator[SteeringHandle]:
    """Install steering hooks (``(hook_name, hook)`` pairs sharing ``tracker``) for the ``with`` block.

    The lower-level twin of :func:`steer` for hooks you built yourself (e.g. per-row directions).
    The tracker is attached to ``model`` and detached on exit; hooks are removed also when the block
    raises. Steering installed this way is visible to :func:`active_steering`, which lets
    :func:`hooksteer.generation.generate_texts` run it on the fast path.

    Contexts may exit in any order: each removes exactly its own hooks (by handle), and an inner
    ``model.hooks()`` block never removes them. The block holds :func:`model_lock` (see
    :mod:`hooksteer.hooks` for the thread rule).

    Example:
        >>> tracker = PositionTracker()                                    # doctest: +SKIP
        >>> hooks = [("blocks.6.hook_resid_post", add_vector(v, 4.0, positions="generated", tracker=tracker))]  # doctest: +SKIP
        >>> with apply_steering_hooks(model, hooks, tracker):              # doctest: +SKIP
        ...     generate_texts(model, ["Hi"])
    """
    fwd_hooks = list(fwd_hooks)
    for hook_name, hook in fwd_hooks:
        check_hook_name(model, hook_name)
        _check_site(model, hook_name, hook)
    handle = SteeringHandle(tracker=tracker, fwd_hooks=fwd_hooks)  # type: ignore[arg-type]
    with model_lock(model):
        tracker.attach(model)
        try:
            installed = _install_hooks(model, fwd_hooks)
            try:
                _ACTIVE_STEERING.setdefault(model, []).append(handle)
                try:
                    yield handle
                finally:
                    _ACTIVE_STEERING[model].remove(handle)
            finally:
                _remove_hooks(installed)
        finally:
            tracker.detach()
    _warn_unreached(fwd_hooks)


def _check_site(model: nn.Module, hook_name: str, hook: HookFn) -> None:
    """Refuse, before installing anything, steering that the site's shape or the context cannot honour."""
    if not isinstance(hook, SteeringHook):
        return
    hook._reached = None  # positions reached are counted per steering context
    if hook.per_token and _no_token_axis(hook_name):
        raise ValueError(_no_token_axis_message(hook_name))
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if isinstance(hook.positions, Tensor) and n_ctx and int(hook.positions.max()) >= int(n_ctx):
        past = sorted({int(p) for p in hook.positions if int(p) >= int(n_ctx)})
        raise ValueError(
            f"positions {_short_list(past)} are past the model's context (n_ctx={n_ctx}): no token can ever be "
            "there, so they would steer nothing"
        )


def _short_list(values: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', …' if len(values) > limit else ''}]"


def _warn_unreached(fwd_hooks: Sequence[tuple[str, HookFn]]) -> None:
    for hook_name, hook in fwd_hooks:
        missing = hook.unreached_positions() if isinstance(hook, SteeringHook) else []
        if missing:
            warnings.warn(
                f"steering at {hook_name}: positions {_short_list(missing)} were never reached by any forward "
                "pass in the block, so nothing was steered there", UserWarning, stacklevel=4,
            )


def _hook_points(model: nn.Module) -> list[Any]:
    return list({id(point): point for point in model.hook_dict.values()}.values())


def _install_hooks(model: nn.Module, fwd_hooks: Sequence[tuple[str, HookFn]]) -> list[tuple[Any, Any]]:
    """Add the hooks through TransformerLens (aliases resolved as ``model.hooks`` does) and return the
    ``(hook point, handle)`` of each, detached from any context level so only we remove them."""
    guards = {id(guard): guard for guard in (_ThreadGuard(hook) for _, hook in fwd_hooks)}
    pairs = [(name, guard) for (name, _), guard in zip(fwd_hooks, guards.values(), strict=True)]
    try:
        with model.hooks(fwd_hooks=pairs, reset_hooks_end=False):
            pass
    except BaseException:
        _remove_hooks(_installed_guards(model, guards))
        raise
    installed = _installed_guards(model, guards)
    if len(installed) < len(pairs):
        _remove_hooks(installed)
        raise RuntimeError(f"TransformerLens installed {len(installed)} of {len(pairs)} steering hooks")
    return installed


def _installed_guards(model: nn.Module, guards: dict[int, _ThreadGuard]) -> list[tuple[Any, Any]]:
    installed = []
    for point in _hook_points(model):
        for lens in point.fwd_hooks:
            if id(getattr(lens, "user_hook", None)) in guards:
                lens.context_level = None
                installed.append((point, lens))
    return installed


def _remove_hooks(installed: list[tuple[Any, Any]]) -> None:
    for point, lens in installed:
        lens.hook.remove()
        point.fwd_hooks = [other for other in point.fwd_hooks if other is not lens]
