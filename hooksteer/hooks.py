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
"""

from __future__ import annotations

import difflib
import math
import operator
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from hooksteer.vectors import SteeringSet, SteeringVector, as_vector_list, check_finite

PositionName = Literal["all", "prompt", "generated"]
PositionSpec = Union[PositionName, Sequence[int], Int[Tensor, " n"]]
Direction = Union[SteeringVector, Float[Tensor, " d_model"], Float[Tensor, "batch d_model"]]
CoefficientFn = Callable[[Int[Tensor, "batch pos"]], Tensor]
GateFn = Callable[[Float[Tensor, "batch pos d_model"]], Float[Tensor, "batch pos"]]
HookFn = Callable[[Tensor, Any], Tensor]

_NAMED_POSITIONS = ("all", "prompt", "generated")
# Hook points whose activation has no (batch, pos, ...) token axis: (batch, head, query_pos, key_pos).
_NO_TOKEN_AXIS = ("hook_pattern", "hook_attn_scores")


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


# ============================================================================ positions
class PositionTracker:
    """Tracks the absolute position of every token in the forward pass under way.

    It registers a forward pre-hook on the model's first block, where both model classes reveal
    where the current tokens sit in their sequences:

    - ``HookedTransformer`` passes the attention mask over cached + current tokens (absolute
      position = number of real tokens before it, so left padding is skipped) and the KV-cache entry;
    - ``TransformerBridge`` / Hugging Face modules pass ``position_ids`` (already per row, padding-aware).

    Positions are per row: ``positions()`` has shape ``(batch, pos)``; left-padding tokens get -1.
    The tracker also remembers each row's *prompt length*: the number of real tokens in the first
    forward pass of a new sequence. A later pass with an empty cache whose input extends the
    previous input (uncached ``generate``) continues the same sequence; any other pass starts anew.

    Example:
        >>> with track_positions(model) as tracker:        # doctest: +SKIP
        ...     model("Hello world")
        ...     tracker.prompt_lengths
    """

    def __init__(self) -> None:
        self.absolute: Int[Tensor, "batch pos"] | None = None
        self.prompt_lengths: Int[Tensor, " batch"] | None = None
        self._last_input: Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._owner: int | None = None

    # -- attaching
    def attach(self, model: nn.Module) -> PositionTracker:
        """Start tracking ``model``'s forward passes. Returns ``self``."""
        if self._handle is not None:
            raise RuntimeError("this PositionTracker is already attached to a model")
        first_block = _first_block(model)
        self._handle = first_block.register_forward_pre_hook(self._on_first_block, with_kwargs=True)
        self._owner = threading.get_ident()
        return self

    def detach(self) -> None:
        """Stop tracking (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
            self._owner = None

    @property
    def attached(self) -> bool:
        return self._handle is not None

    # -- the pre-hook
    def _on_first_block(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        _check_thread(self._owner, "a PositionTracker on this model")
        hidden = args[0] if args else next(
            (kwargs[k] for k in ("resid_pre", "hidden_states", "x") if k in kwargs), None
        )
        if not isinstance(hidden, Tensor) or hidden.ndim != 3:
            return
        past = _past_length(kwargs)
        absolute = _absolute_positions(kwargs, past, batch=int(hidden.shape[0]), length=int(hidden.shape[1]),
                                       device=hidden.device)
        if past > 0 or _continues_from_position_ids(kwargs, absolute):
            if self.prompt_lengths is None or self.prompt_lengths.shape[0] != absolute.shape[0]:
                self.prompt_lengths = absolute.clamp(min=0).min(dim=-1).values
            self._last_input = None
        else:
            if not self._extends_last_input(hidden):
                self.prompt_lengths = absolute.max(dim=-1).values + 1
            self._last_input = hidden.detach().clone()
        self.absolute = absolute

    def _extends_last_input(self, hidden: Tensor) -> bool:
        last = self._last_input
        if last is None or self.prompt_lengths is None:
            return False
        if hidden.shape[0] != last.shape[0] or hidden.shape[1] <= last.shape[1]:
            return False
        return torch.equal(hidden[:, : last.shape[1]], last)

    # -- what hooks ask
    @property
    def prompt_length(self) -> int | None:
        """Prompt length of the current sequence when all rows agree (``None`` before any pass)."""
        if self.prompt_lengths is None:
            return None
        return int(self.prompt_lengths.max())

    def positions(self, n_positions: int, device: torch.device | str | None = None) -> Int[Tensor, "batch pos"]:
        """Absolute positions of the tokens in the current forward pass, shape ``(batch, n_positions)``."""
        if self.absolute is None:
            raise RuntimeError(
                "PositionTracker has seen no forward pass: attach it with "
                "`hooksteer.hooks.track_positions(model)` before running the model"
            )
        if n_positions != self.absolute.shape[1]:
            raise RuntimeError(
                f"activation has {n_positions} positions but the forward pass has {self.absolute.shape[1]}; "
                "position-dependent steering only supports hook points with a token dimension"
            )
        return self.absolute.to(device) if device is not None else self.absolute


def _absolute_positions(kwargs: dict, past: int, *, batch: int, length: int,
                        device: torch.device) -> Int[Tensor, "batch pos"]:
    """Per-row absolute positions of the current tokens (-1 for left padding where it is known)."""
    mask = kwargs.get("attention_mask")
    if isinstance(mask, Tensor) and mask.ndim == 2 and mask.shape[1] == past + length:
        real = mask.to(device=device, dtype=torch.long)
        counted = real.cumsum(dim=-1) - 1
        return torch.where(real.bool(), counted, torch.full_like(counted, -1))[:, -length:].expand(batch, -1)
    position_ids = kwargs.get("position_ids")
    if isinstance(position_ids, Tensor) and position_ids.shape[-1] == length:
        return position_ids.to(device=device, dtype=torch.long).reshape(-1, length).expand(batch, -1)
    return torch.arange(past, past + length, device=device).expand(batch, -1)


def _continues_from_position_ids(kwargs: dict, absolute: Int[Tensor, "batch pos"]) -> bool:
    """With Hugging Face ``position_ids``, a new sequence has position 0 in every row; a cached
    continuation has none. (A ``TransformerBridge`` passes a cache that reports length 0, so the
    cache cannot tell.)"""
    if not isinstance(kwargs.get("position_ids"), Tensor):
        return False
    return not bool((absolute == 0).any(dim=-1).all())


def _first_block(model: nn.Module) -> nn.Module:
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise TypeError(
            f"{type(model).__name__} has no `blocks`; hooksteer steers TransformerLens "
            "HookedTransformer and TransformerBridge models"
        )
    return blocks[0]


def _past_length(kwargs: dict) -> int:
    entry = kwargs.get("past_kv_cache_entry")
    if entry is not None:
        return int(entry.past_keys.shape[1])
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, Tensor) and cache_position.numel() > 0:
        return int(cache_position.reshape(-1)[0])
    cache = kwargs.get("past_key_values", kwargs.get("past_key_value", kwargs.get("cache")))
    if cache is not None and hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return 0


@contextmanager
def track_positions(model: nn.Module) -> Iterator[PositionTracker]:
    """Attach a :class:`PositionTracker` to ``model`` for the duration of the block.

    Example:
        >>> with track_positions(model) as tracker:        # doctest: +SKIP
        ...     hook = add_per_token(v, coefficients, tracker=tracker)
    """
    tracker = PositionTracker().attach(model)
    try:
        yield tracker
    finally:
        tracker.detach()


def _validate_positions(positions: PositionSpec) -> PositionSpec:
    if isinstance(positions, str):
        if positions not in _NAMED_POSITIONS:
            raise ValueError(f"positions must be one of {_NAMED_POSITIONS} or a list of indices, got {positions!r}")
        return positions
    if isinstance(positions, slice):
        raise TypeError("positions must be 'all', 'prompt', 'generated' or explicit indices, not a slice")
    indices = _integer_indices(positions)
    if indices.numel() == 0:
        raise ValueError("positions is an empty list: nothing would be steered")
    if (indices < 0).any():
        raise ValueError(
            "positions are absolute token indices and must be >= 0 (negative indices would move "
            "while generating); use 'generated' or explicit indices"
        )
    return indices


def _integer_indices(positions: Any) -> Int[Tensor, " n"]:
    """A flat LongTensor of token indices; floats, bools and nested lists are refused, not rounded or flattened."""
    if isinstance(positions, Tensor):
        if positions.dtype == torch.bool or positions.is_floating_point() or positions.is_complex():
            raise TypeError(f"positions must be integer token indices, got a {positions.dtype} tensor")
        if positions.ndim > 1:
            raise ValueError(f"positions must be a flat list of token indices, got shape {tuple(positions.shape)}")
        return positions.detach().to("cpu", torch.long).reshape(-1)
    if isinstance(positions, int) and not isinstance(positions, bool):
        positions = [positions]
    try:
        items = list(positions)
    except TypeError:
        raise TypeError(
            f"positions must be 'all', 'prompt', 'generated' or a list of integer token indices, "
            f"got {type(positions).__name__}"
        ) from None
    values = []
    for item in items:
        if isinstance(item, (list, tuple, Tensor)) and not (isinstance(item, Tensor) and item.ndim == 0):
            raise ValueError(f"positions must be a flat list of token indices, got a nested entry {item!r}")
        is_bool = isinstance(item, bool) or (isinstance(item, Tensor) and item.dtype == torch.bool)
        try:
            values.append(operator.index(item) if not is_bool else None)
        except TypeError:
            values.append(None)
        if values[-1] is None:
            raise TypeError(f"positions must be integer token indices, got {item!r}")
    return torch.tensor(values, dtype=torch.long)


def _position_mask(
    positions: PositionSpec, absolute: Int[Tensor, "batch pos"], tracker: PositionTracker | None
) -> Bool[Tensor, "batch pos"] | None:
    """Which of the current positions are steered; ``None`` means all of them."""
    if isinstance(positions, str):
        if positions == "all":
            return None
        assert tracker is not None and tracker.prompt_lengths is not None
        prompt_lengths = tracker.prompt_lengths.to(absolute.device)[:, None]
        if positions == "prompt":
            return (absolute >= 0) & (absolute < prompt_lengths)
        return absolute >= prompt_lengths
    return torch.isin(absolute, positions.to(absolute.device))


# ============================================================================ hook objects
def _direction_tensor(direction: Direction) -> Tensor:
    tensor = direction.vector if isinstance(direction, SteeringVector) else direction
    if not isinstance(tensor, Tensor):
        raise TypeError(f"direction must be a SteeringVector or a tensor, got {type(tensor).__name__}")
    if tensor.ndim not in (1, 2) or not tensor.is_floating_point():
        raise ValueError(
            f"direction must be a float tensor of shape (d_model,) or (batch, d_model), got "
            f"{tuple(tensor.shape)} {tensor.dtype}"
        )
    check_finite(tensor, "steering direction")
    return tensor


def finite_scalar(value: Any, what: str) -> float:
    """``float(value)``, refusing NaN and infinities (which would corrupt every steered activation)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {number}")
    return number


def _no_token_axis(hook_name: str) -> bool:
    return hook_name.rsplit(".", 1)[-1] in _NO_TOKEN_AXIS


def _no_token_axis_message(name: str, shape: tuple[int, ...] | None = None) -> str:
    what = f"has shape {shape}" if shape is not None else "has shape (batch, head, query_pos, key_pos)"
    if shape is not None and _no_token_axis(name):
        what += " = (batch, head, query_pos, key_pos)"
    return (
        f"{name} {what}: it has no single token axis (query_pos, key_pos), so positions, per-token "
        "coefficients and gates are not defined there; steer it with positions='all' and a constant "
        "coefficient, or steer a (batch, pos, ...) site such as attn.hook_z or hook_resid_post"
    )


def _trailing_ones(tensor: Tensor, ndim: int) -> Tensor:
    """``tensor`` with singleton axes appended up to ``ndim`` axes (to broadcast over heads / features)."""
    return tensor.reshape(*tensor.shape, *([1] * (ndim - tensor.ndim)))


class SteeringHook:
    """Base of the hook objects: ``hook(activation, hook) -> activation + c_t · v``.

    Subclasses define :meth:`coefficients`, the per-token coefficient for the current pass.

    The token axis is axis 1 of every activation with one: ``(batch, pos, d)`` residual / MLP sites and
    ``(batch, pos, head, d_head)`` attention sites (``hook_q/k/v/z``), where ``v`` is added to every head.
    Position-dependent steering (``positions``, per-token coefficients, gates) at a site without a
    token axis (``hook_pattern`` / ``hook_attn_scores``, ``(batch, head, query_pos, key_pos)``) raises
    ``ValueError``; it is never applied to the wrong axis.
    """

    def __init__(self, direction: Direction, *, positions: PositionSpec = "all",
                 tracker: PositionTracker | None = None) -> None:
        self.direction = _direction_tensor(direction)
        self.positions = _validate_positions(positions)
        self.tracker = tracker
        self._reached: Tensor | None = None  # which explicit positions some forward pass has reached
        if self.needs_tracker and tracker is None:
            raise ValueError(
                f"{type(self).__name__} with positions={positions!r} needs a PositionTracker, because "
                "KV-cached generate feeds one token per forward pass; create one with "
                "`hooksteer.hooks.track_positions(model)` (or use `hooksteer.steer`, which does it for you)"
            )

    @property
    def needs_tracker(self) -> bool:
        return not (isinstance(self.positions, str) and self.positions == "all")

    @property
    def per_token(self) -> bool:
        """Whether the added amount differs between tokens (so the site needs a token axis)."""
        return self.needs_tracker

    def coefficients(self, activation: Tensor, absolute: Tensor | None) -> Tensor | float:
        raise NotImplementedError

    def __call__(self, activation: Float[Tensor, "batch pos d_model"], hook: Any = None) -> Tensor:
        name = getattr(hook, "name", None) or "this hook point"
        direction = self.direction.to(device=activation.device, dtype=activation.dtype)
        if activation.shape[-1] != direction.shape[-1]:
            raise ValueError(
                f"steering vector has width {direction.shape[-1]} but {name} has width {activation.shape[-1]}"
            )
        if direction.ndim == 2:
            if direction.shape[0] != activation.shape[0]:
                raise ValueError(
                    f"per-row directions have batch {direction.shape[0]} but the activation has batch "
                    f"{activation.shape[0]}"
                )
            direction = direction.reshape(direction.shape[0], *([1] * (activation.ndim - 2)), direction.shape[1])
        if not self.per_token:
            return activation + self.coefficients(activation, None) * direction
        absolute = self._absolute_positions(activation, name)
        coefficient = self.coefficients(activation, absolute)
        if isinstance(coefficient, Tensor):
            coefficient = _trailing_ones(coefficient.to(activation.dtype), activation.ndim)
        steered = activation + coefficient * direction
        mask = _position_mask(self.positions, absolute, self.tracker) if absolute is not None else None
        if mask is None:
            return steered
        return torch.where(_trailing_ones(mask, activation.ndim), steered, activation)

    def _absolute_positions(self, activation: Tensor, name: str) -> Tensor | None:
        if _no_token_axis(name) or activation.ndim < 3:
            raise ValueError(_no_token_axis_message(name, tuple(activation.shape)))
        if not self.needs_tracker:
            return None
        assert self.tracker is not None  # checked in __init__
        known = self.tracker.absolute
        if known is not None and tuple(activation.shape[:2]) != tuple(known.shape):
            raise ValueError(
                f"{name} has shape {tuple(activation.shape)} but the tokens of this forward pass are "
                f"(batch, pos) = {tuple(known.shape)}: its axis 1 is not the token axis, so positions / "
                "per-token coefficients cannot be honoured there; steer it with positions='all'"
            )
        absolute = self.tracker.positions(activation.shape[1], activation.device)
        if isinstance(self.positions, Tensor):
            reached = torch.isin(self.positions.to(absolute.device), absolute)
            self._reached = reached if self._reached is None else self._reached | reached
        return absolute

    def unreached_positions(self) -> list[int]:
        """Explicit positions no forward pass has reached so far (empty before the first pass)."""
        if not isinstance(self.positions, Tensor) or self._reached is None:
            return []
        return self.positions[~self._reached.cpu()].tolist()


class AddVector(SteeringHook):
    """Add ``coefficient · v`` at the chosen positions (see :func:`add_vector`)."""

    def __init__(self, direction: Direction, coefficient: float = 1.0, *, positions: PositionSpec = "all",
                 tracker: PositionTracker | None = None) -> None:
        super().__init__(direction, positions=positions, tracker=tracker)
        self.coefficient = finite_scalar(coefficient, "coefficient")

    def coefficients(self, activation: Tensor, absolute: Tensor | None) -> float:
        return self.coefficient


class AddPerToken(SteeringHook):
    """Add ``c_t · v`` where ``c_t`` depends on the absolute position ``t`` (see :func:`add_per_token`)."""

    def __init__(self, direction: Direction, coefficients: Tensor | CoefficientFn, *,
                 tracker: PositionTracker, positions: PositionSpec = "all",
                 fill_value: float | None = None) -> None:
        super().__init__(direction, positions=positions, tracker=tracker)
        if tracker is None:
            raise ValueError("add_per_token needs a PositionTracker (see hooksteer.hooks.track_positions)")
        if isinstance(coefficients, Tensor):
            if coefficients.ndim not in (1, 2) or coefficients.shape[-1] == 0:
                raise ValueError(
                    f"coefficients must have shape (n_positions,) or (batch, n_positions), got {tuple(coefficients.shape)}"
                )
            check_finite(coefficients, "per-token coefficients")
        elif not callable(coefficients):
            raise TypeError("coefficients must be a tensor indexed by absolute position or a callable of positions")
        self.coefficient_source = coefficients
        self.fill_value = fill_value

    @property
    def needs_tracker(self) -> bool:
        return True

    def coefficients(self, activation: Tensor, absolute: Tensor | None) -> Tensor:
        assert absolute is not None
        source = self.coefficient_source
        if callable(source) and not isinstance(source, Tensor):
            values = torch.as_tensor(source(absolute), device=activation.device)
            check_finite(values, "per-token coefficients returned by the callable")
            try:
                return torch.broadcast_to(values, absolute.shape)
            except RuntimeError:
                raise ValueError(
                    f"coefficient function returned shape {tuple(values.shape)} for positions of shape "
                    f"{tuple(absolute.shape)} (batch, pos)"
                ) from None
        n_known = source.shape[-1]
        real = absolute >= 0
        inside = absolute < n_known
        if not bool((inside | ~real).all()) and self.fill_value is None:
            raise IndexError(
                f"per-token coefficients cover absolute positions 0..{n_known - 1} but position "
                f"{int(absolute.max())} was reached; pass fill_value=0.0 to steer no further, or more coefficients"
            )
        source = source.to(activation.device)
        index = absolute.clamp(min=0, max=n_known - 1)
        if source.ndim == 2:
            if source.shape[0] != absolute.shape[0]:
                raise ValueError(
                    f"per-row coefficients have batch {source.shape[0]} but the activation has batch {absolute.shape[0]}"
                )
            gathered = source.gather(1, index)
        else:
            gathered = source[index]
        fill = torch.tensor(self.fill_value if self.fill_value is not None else 0.0, device=activation.device)
        gathered = torch.where(inside, gathered, fill.to(gathered.dtype))
        return torch.where(real, gathered, torch.zeros_like(gathered))


class AddGated(SteeringHook):
    """Add ``coefficient · g(h_t) · v`` with a gate read from the activation (see :func:`add_gated`)."""

    def __init__(self, direction: Direction, gate: GateFn, coefficient: float = 1.0, *,
                 positions: PositionSpec = "all", tracker: PositionTracker | None = None) -> None:
        super().__init__(direction, positions=positions, tracker=tracker)
        if not callable(gate):
            raise TypeError("gate must be callable: activation (batch, pos, d_model) -> (batch, pos)")
        self.gate = gate
        self.coefficient = finite_scalar(coefficient, "coefficient")
        self.last_gate: Tensor | None = None

    @property
    def per_token(self) -> bool:
        return True

    def coefficients(self, activation: Tensor, absolute: Tensor | None) -> Tensor:
        values = self.gate(activation)
        if values.shape != activation.shape[:-1]:
            raise ValueError(
                f"gate returned shape {tuple(values.shape)}, expected {tuple(activation.shape[:-1])}"
            )
        check_finite(values, "gate values")
        self.last_gate = values.detach()
        return self.coefficient * values


class ReluGate(nn.Module):
    """PSR-style per-token coefficient ``λ(h) = ReLU(w · h + b)``.

    Example:
        >>> import torch
        >>> gate = ReluGate(torch.tensor([1.0, 0.0]), bias=-0.5)
        >>> gate(torch.tensor([[[2.0, 9.0], [0.1, 9.0]]])).tolist()
        [[1.5, 0.0]]
    """

    def __init__(self, weight: Float[Tensor, " d_model"], bias: float | Tensor = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(weight, dtype=torch.float32).clone())
        self.bias = nn.Parameter(torch.as_tensor(bias, dtype=torch.float32).reshape(()).clone())

    def forward(self, activation: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos"]:
        weight = self.weight.to(activation.dtype)
        return torch.relu(activation @ weight + self.bias.to(activation.dtype))


def add_vector(direction: Direction, coefficient: float = 1.0, *, positions: PositionSpec = "all",
               tracker: PositionTracker | None = None) -> AddVector:
    """Hook that adds ``coefficient · v`` at ``positions`` (absolute indices, 'prompt', 'generated', 'all').

    Example:
        >>> with model.hooks(fwd_hooks=[("blocks.2.hook_resid_post", add_vector(v, 4.0))]):  # doctest: +SKIP
        ...     logits = model("Hello")
    """
    return AddVector(direction, coefficient, positions=positions, tracker=tracker)


def add_per_token(direction: Direction, coefficients: Tensor | CoefficientFn, *, tracker: PositionTracker,
                  positions: PositionSpec = "all", fill_value: float | None = None) -> AddPerToken:
    """Hook that adds ``c_t · v`` with ``c_t = coefficients[t]`` (or ``coefficients(t)``) at absolute position t.

    ``coefficients`` is a tensor of shape ``(n,)`` / ``(batch, n)`` indexed by absolute position, or a
    callable mapping a LongTensor of absolute positions, shape ``(batch, pos)``, to coefficients of the
    same (or a broadcastable) shape. Positions past ``n`` raise unless ``fill_value`` is given.
    Left-padding tokens (position -1) always get coefficient 0 from a tensor.

    Example:
        >>> with track_positions(model) as tracker:                                 # doctest: +SKIP
        ...     hook = add_per_token(v, torch.linspace(0, 1, 20), tracker=tracker)
    """
    return AddPerToken(direction, coefficients, tracker=tracker, positions=positions, fill_value=fill_value)


def add_gated(direction: Direction, gate: GateFn, coefficient: float = 1.0, *,
              positions: PositionSpec = "all", tracker: PositionTracker | None = None) -> AddGated:
    """Hook that adds ``coefficient · gate(h)_t · v``: a coefficient read from each token's own activation.

    Example:
        >>> hook = add_gated(v, ReluGate(w, bias=0.1), coefficient=2.0)             # doctest: +SKIP
    """
    return AddGated(direction, gate, coefficient, positions=positions, tracker=tracker)


# ============================================================================ steer()
class UnknownHookError(KeyError):
    """A hook name the model does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def check_hook_name(model: nn.Module, hook_name: str) -> None:
    """Raise :class:`UnknownHookError` listing close valid names if ``hook_name`` is not a hook point."""
    valid = list(model.hook_dict.keys())
    if hook_name in model.hook_dict:
        return
    close = difflib.get_close_matches(hook_name, valid, n=5, cutoff=0.6)
    n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
    hint = (f" Residual sites are blocks.{{0..{n_layers - 1}}}.hook_resid_{{pre,mid,post}}."
            if n_layers else "")
    suggestion = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownHookError(f"unknown hook name {hook_name!r}.{suggestion}{hint}")


def _check_vector_fits(model: nn.Module, vector: SteeringVector) -> None:
    check_hook_name(model, vector.hook_name)
    d_model = int(model.cfg.d_model)
    if ".hook_resid_" in vector.hook_name and vector.d_model != d_model:
        raise ValueError(
            f"vector for {vector.hook_name!r} has width {vector.d_model} but the model has d_model={d_model}: "
            "it was made for another model"
        )


@dataclass
class SteeringHandle:
    """What :func:`steer` yields: the installed hooks and the position tracker."""

    tracker: PositionTracker
    fwd_hooks: list[tuple[str, SteeringHook]] = field(default_factory=list)

    @property
    def hook_names(self) -> list[str]:
        return [name for name, _ in self.fwd_hooks]


def build_steering_hooks(
    model: nn.Module, vectors: Sequence[SteeringVector | SteeringSet], *, tracker: PositionTracker,
    coefficient: float = 1.0, positions: PositionSpec = "all", per_token: Tensor | CoefficientFn | None = None,
    gate: GateFn | None = None, fill_value: float | None = None,
) -> list[tuple[str, SteeringHook]]:
    """One hook per hook point: vectors sharing a site are summed ("combined"), sites act together."""
    flat = as_vector_list(vectors)
    if not flat:
        raise ValueError("steer() needs at least one SteeringVector or SteeringSet")
    coefficient = finite_scalar(coefficient, "coefficient")
    if per_token is not None and gate is not None:
        raise ValueError("pass either per_token or gate, not both")
    for vector in flat:
        _check_vector_fits(model, vector)
    hooks: list[tuple[str, SteeringHook]] = []
    for hook_name, summed in SteeringSet(flat).by_hook().items():
        if per_token is not None:
            per_site_coefficients = coefficient * per_token if isinstance(per_token, Tensor) else (
                lambda absolute, fn=per_token: coefficient * torch.as_tensor(fn(absolute)))
            hook: SteeringHook = AddPerToken(summed, per_site_coefficients, tracker=tracker, positions=positions,
                                             fill_value=fill_value)
        elif gate is not None:
            hook = AddGated(summed, gate, coefficient, positions=positions, tracker=tracker)
        else:
            hook = AddVector(summed, coefficient, positions=positions, tracker=tracker)
        hooks.append((hook_name, hook))
    return hooks


@contextmanager
def steer(
    model: nn.Module, *vectors: SteeringVector | SteeringSet, coefficient: float = 1.0,
    positions: PositionSpec = "all", per_token: Tensor | CoefficientFn | None = None,
    gate: GateFn | None = None, fill_value: float | None = None,
) -> Iterator[SteeringHandle]:
    """Steer ``model`` with one or more vectors while the ``with`` block runs.

    Vectors at the same hook point are summed ("combined"); vectors at different hook points
    act together ("simultaneous"). Hooks are removed on exit, also when the block raises.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        *vectors: :class:`SteeringVector` / :class:`SteeringSet` objects (scale them to set strength).
        coefficient: extra scalar applied to every vector.
        positions: ``"all"``, ``"prompt"``, ``"generated"`` or explicit absolute token indices.
        per_token: coefficients by absolute position (tensor or callable), multiplied by ``coefficient``.
        gate: callable reading each token's activation and returning its coefficient (e.g. :class:`ReluGate`).
        fill_value: coefficient for positions past the end of a ``per_token`` tensor (default: raise).

    Example:
        >>> with steer(model, love * 4.0, positions="generated"):          # doctest: +SKIP
        ...     print(model.generate("Tell me about your day.", max_new_tokens=40))
    """
    tracker = PositionTracker()
    fwd_hooks = build_steering_hooks(model, vectors, tracker=tracker, coefficient=coefficient,
                                     positions=positions, per_token=per_token, gate=gate, fill_value=fill_value)
    with apply_steering_hooks(model, fwd_hooks, tracker) as handle:
        yield handle


# Steering installed through apply_steering_hooks, per model: lets hooksteer.generation replay the same
# hook objects on a faster module that shares the model's weights (see hooksteer.fast_generation).
_ACTIVE_STEERING: weakref.WeakKeyDictionary[nn.Module, list[SteeringHandle]] = weakref.WeakKeyDictionary()
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
    ``model.hooks()`` block never removes them. The block holds :func:`model_lock` (see the module
    docstring for the thread rule).

    Example:
        >>> tracker = PositionTracker()                                    # doctest: +SKIP
        >>> hooks = [("blocks.6.hook_resid_post", add_vector(v, 4.0, positions="generated", tracker=tracker))]
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


class _ThreadGuard:
    """Wraps a steering hook so that it runs only in the thread that installed it (see the module docstring)."""

    def __init__(self, hook: HookFn) -> None:
        self.hook = hook
        self.owner = threading.get_ident()

    def __call__(self, activation: Tensor, hook: Any = None) -> Any:
        _check_thread(self.owner, f"steering at {getattr(hook, 'name', None) or 'a hook point'}")
        return self.hook(activation, hook)

    def __repr__(self) -> str:
        return f"hooksteer({self.hook!r})"


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
