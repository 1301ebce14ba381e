"""Fast steered generation for a ``TransformerBridge``: the same hooks, replayed on a plain HF module.

A ``TransformerBridge`` wraps every Hugging Face submodule in TransformerLens hook points. That keeps
TransformerLens hook names and ``hooks()`` working, but each of the ~40 hook points per layer costs a
Python call at every generated token. For the residual-stream sites that steering uses, a Hugging
Face decoder layer already exposes the same tensors:

====================================  ==================================================
TransformerLens hook name             on the Hugging Face decoder layer ``l``
====================================  ==================================================
``blocks.{l}.hook_resid_pre``         input of ``model.layers[l]`` (forward pre-hook)
``blocks.{l}.hook_resid_post``        output of ``model.layers[l]`` (forward hook)
====================================  ==================================================

:func:`hf_twin` builds, once per bridge, a plain Hugging Face model whose parameters *are* the
bridge's parameters (no copy). :func:`fast_path_hooks` says whether everything hooked on the bridge
right now is hooksteer steering at those sites; if so, :mod:`hooksteer.generation` installs the very
same hook objects (and their :class:`~hooksteer.hooks.PositionTracker`) on the twin as plain torch
hooks and runs Hugging Face ``generate`` there. Anything else hooked on the bridge (your own
TransformerLens hooks, other sites) makes generation take the bridge path, which is slower but
runs every hook. Both paths give the same tokens (tested).

Example:
    >>> bridge = hs.load_bridge()                                           # doctest: +SKIP
    >>> with hs.steer(bridge, vec * 4.0, positions="generated"):           # doctest: +SKIP
    ...     generate_texts(bridge, ["Tell me a story."])   # runs on hf_twin(bridge), hooks included
"""

from __future__ import annotations

import copy
import re
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hooksteer.hooks import HookFn, PositionTracker, active_steering

_SITE = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_TWINS: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()
_WRAPPER = "._original_component"


@dataclass(frozen=True)
class TwinHook:
    """One steering hook to replay on the twin: ``site`` is ``"pre"`` or ``"post"`` of decoder layer ``layer``."""

    hook_name: str
    layer: int
    site: str
    hook: HookFn
    tracker: PositionTracker


def _hook_points(model: nn.Module) -> list[Any]:
    unique: dict[int, Any] = {}
    for point in getattr(model, "hook_dict", {}).values():
        unique.setdefault(id(point), point)
    return list(unique.values())


def installed_hook_count(model: nn.Module) -> int:
    """Number of forward hooks on the model's TransformerLens hook points (aliases counted once)."""
    return sum(len(getattr(point, "fwd_hooks", [])) for point in _hook_points(model))


def fast_path_hooks(model: nn.Module) -> list[TwinHook] | None:
    """The hooks to replay on the twin, or ``None`` when generation must run through the bridge.

    ``None`` when: ``model`` is not a bridge over a Hugging Face model with ``model.layers``; some hook on
    it was not installed by hooksteer steering (it might read or change anything); or a steering site is
    not a ``hook_resid_pre`` / ``hook_resid_post``. An empty list means: unsteered, use the twin plainly.
    """
    if _decoder_layers(getattr(model, "original_model", None)) is None:
        return None
    handles = active_steering(model)
    if installed_hook_count(model) != sum(len(h.fwd_hooks) for h in handles):
        return None
    plan: list[TwinHook] = []
    for handle in handles:
        for hook_name, hook in handle.fwd_hooks:
            match = _SITE.match(hook_name)
            if match is None:
                return None
            plan.append(TwinHook(hook_name, int(match.group(1)), match.group(2), hook, handle.tracker))
    return plan


def _decoder_layers(module: nn.Module | None) -> nn.ModuleList | None:
    inner = getattr(module, "model", None)
    layers = getattr(inner, "layers", None)
    return layers if isinstance(layers, nn.ModuleList) and len(layers) > 0 else None


def _set_tensor(root: nn.Module, dotted: str, value: Tensor) -> None:
    path, _, leaf = dotted.rpartition(".")
    owner = root.get_submodule(path) if path else root
    if leaf in owner._parameters:
        owner._parameters[leaf] = value  # type: ignore[assignment]
    elif leaf in owner._buffers:
        owner._buffers[leaf] = value
    else:
        raise KeyError(dotted)


def hf_twin(bridge: nn.Module, *, attn_implementation: str = "sdpa") -> nn.Module:
    """A plain Hugging Face model sharing every parameter and buffer with ``bridge.original_model``.

    Built once per bridge (cached); costs no weight memory. Changing the bridge's weights in place
    changes the twin's too. The bridge runs eager attention (it exposes attention patterns); the twin
    uses ``attn_implementation`` (Hugging Face's default, ``"sdpa"``), as a plain HF model would.

    Example:
        >>> twin = hf_twin(bridge)                                                   # doctest: +SKIP
        >>> twin.model.embed_tokens.weight is bridge.original_model.model.embed_tokens._original_component.weight
        True
    """
    cached = _TWINS.get(bridge)
    if cached is not None:
        return cached
    from transformers import AutoModelForCausalLM

    wrapped = getattr(bridge, "original_model", None)
    if _decoder_layers(wrapped) is None:
        raise TypeError(f"{type(bridge).__name__} does not wrap a Hugging Face decoder with `model.layers`")
    shared = {name.replace(_WRAPPER, ""): tensor for name, tensor in
              [*wrapped.named_parameters(remove_duplicate=False), *wrapped.named_buffers(remove_duplicate=False)]}
    config = copy.deepcopy(wrapped.config)
    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    missing = []
    for name, _ in [*twin.named_parameters(remove_duplicate=False), *twin.named_buffers(remove_duplicate=False)]:
        if name in shared:
            _set_tensor(twin, name, shared[name])
        else:
            missing.append(name)
    if missing:
        raise RuntimeError(f"could not share these tensors between the bridge and its HF twin: {missing[:5]}")
    twin.eval()
    twin.generation_config = wrapped.generation_config
    _TWINS[bridge] = twin
    return twin


@contextmanager
def twin_hooks(twin: nn.Module, plan: list[TwinHook]) -> Iterator[None]:
    """Install ``plan`` on the twin's decoder layers (and each tracker on layer 0) for the ``with`` block."""
    layers = _decoder_layers(twin)
    assert layers is not None
    with ExitStack() as stack:
        for tracker in {id(item.tracker): item.tracker for item in plan}.values():
            handle = layers[0].register_forward_pre_hook(tracker._on_first_block, with_kwargs=True)
            stack.callback(handle.remove)
        for item in plan:
            if item.layer >= len(layers):
                raise ValueError(f"{item.hook_name}: the model has {len(layers)} layers")
            handle = (layers[item.layer].register_forward_pre_hook(_pre_hook(item), with_kwargs=True)
                      if item.site == "pre" else layers[item.layer].register_forward_hook(_post_hook(item)))
            stack.callback(handle.remove)
        yield


class _HookName:
    """Stands in for the TransformerLens ``HookPoint`` argument (hooks may read ``hook.name``)."""

    def __init__(self, name: str) -> None:
        self.name = name


def _pre_hook(item: TwinHook):
    point = _HookName(item.hook_name)

    def hook(module: nn.Module, args: tuple, kwargs: dict):
        if args:
            return (item.hook(args[0], point), *args[1:]), kwargs
        kwargs = dict(kwargs, hidden_states=item.hook(kwargs["hidden_states"], point))
        return args, kwargs

    return hook


def _post_hook(item: TwinHook):
    point = _HookName(item.hook_name)

    def hook(module: nn.Module, args: tuple, output: Any):
        if isinstance(output, tuple):
            return (item.hook(output[0], point), *output[1:])
        return item.hook(output, point)

    return hook
