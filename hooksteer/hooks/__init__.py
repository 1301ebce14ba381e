"""TransformerLens hook functions that steer, and the :func:`steer` context manager.

Every hook here adds ``coefficient_t · v`` to the activation of a hook point at a chosen
set of **absolute** token positions. Absolute means "index of the token in the whole
sequence", not "index in the tensor this forward pass sees": during KV-cached
``generate`` the model is fed one token per call, and a hook that used tensor indices
would silently apply the wrong coefficient. A :class:`PositionTracker` attached to the
model reads the KV-cache length at the first block and tells the hooks where they are.

Example (TransformerLens style, with your own hook list):
    >>> from hooksteer.hooks import add_vector, track_positions          # doctest: +SKIP
    >>> with track_positions(model) as tracker:                          # doctest: +SKIP
    ...     hook = add_vector(v, coefficient=4.0, positions="generated", tracker=tracker)
    ...     with model.hooks(fwd_hooks=[("blocks.6.hook_resid_post", hook)]):
    ...         model.generate("Hello", max_new_tokens=10)

Example (one line):
    >>> with steer(model, vec * 4.0, positions="generated"):             # doctest: +SKIP
    ...     model.generate("Hello", max_new_tokens=10)

Threads: a steering context belongs to the thread that entered it. While it is active it holds the
model's lock (:func:`model_lock`), so :func:`steer` and hooksteer's generation / activation functions in
other threads wait for it to exit, and a forward pass another thread runs on the model by itself is
refused with :class:`SteeringThreadError` instead of being steered.

One module per job (every name is importable from ``hooksteer.hooks``):

* :mod:`~hooksteer.hooks.types` - the type aliases (``PositionSpec``, ``Direction``, ``HookFn``...);
* :mod:`~hooksteer.hooks.positions` - position specs: validation and the mask of steered tokens;
* :mod:`~hooksteer.hooks.tracker` - :class:`PositionTracker` and :func:`track_positions`;
* :mod:`~hooksteer.hooks.checks` - finite coefficients, hook names, vector widths, token axes;
* :mod:`~hooksteer.hooks.steering_hook` - the :class:`SteeringHook` base (``activation + c_t · v``);
* :mod:`~hooksteer.hooks.functions` - :func:`add_vector`, :func:`add_per_token`, :func:`add_gated`;
* :mod:`~hooksteer.hooks.gates` - :class:`ReluGate`;
* :mod:`~hooksteer.hooks.threads` - the per-model lock and the thread guard;
* :mod:`~hooksteer.hooks.apply` - :func:`apply_steering_hooks`, :func:`active_steering`;
* :mod:`~hooksteer.hooks.steering` - :func:`steer` and :func:`build_steering_hooks`.
"""

from __future__ import annotations

from hooksteer.hooks.apply import SteeringHandle, active_steering, apply_steering_hooks
from hooksteer.hooks.checks import UnknownHookError, check_hook_name, finite_scalar
from hooksteer.hooks.functions import AddGated, AddPerToken, AddVector, add_gated, add_per_token, add_vector
from hooksteer.hooks.gates import ReluGate
from hooksteer.hooks.steering import build_steering_hooks, steer
from hooksteer.hooks.steering_hook import SteeringHook
from hooksteer.hooks.threads import SteeringThreadError, model_lock
from hooksteer.hooks.tracker import PositionTracker, track_positions
from hooksteer.hooks.types import CoefficientFn, Direction, GateFn, HookFn, PositionName, PositionSpec

__all__ = [
    "AddGated",
    "AddPerToken",
    "AddVector",
    "CoefficientFn",
    "Direction",
    "GateFn",
    "HookFn",
    "PositionName",
    "PositionSpec",
    "PositionTracker",
    "ReluGate",
    "SteeringHandle",
    "SteeringHook",
    "SteeringThreadError",
    "UnknownHookError",
    "active_steering",
    "add_gated",
    "add_per_token",
    "add_vector",
    "apply_steering_hooks",
    "build_steering_hooks",
    "check_hook_name",
    "finite_scalar",
    "model_lock",
    "steer",
    "track_positions",
]
