"""Steering through attention: chosen positions also attend to a steering prompt's keys and values.

Prompt steering changes the model in two ways at once: the request is read *after* the steering prompt, and the
answer can *attend* to it. A residual-stream vector can only imitate the second through a fixed direction. This
module isolates the attention route, with no training: the frozen model turns a steering prompt into its own
per-layer keys and values (:func:`steering_prompt_prefix`, the ``x'`` of ``style="prefix"``: the steering prompt
right after the chat template's user header), and :func:`attend_to_prefix` lets the chosen query positions of a
*plain* prompt attend to them as extra keys, in every layer:

* ``"response"`` (default): the last ``template_tokens`` prompt tokens (those that open the assistant turn) and
  every generated token; the request itself is read exactly as without steering;
* ``"generated"``: generated tokens only;
* ``"after_start"``: every token from where the steering prompt stood on, as prompting reads it (the request is
  read after the steering prompt; only the chat header sits nearer the request than when prompted);
* ``"all"``: every token.

Keys sit at the rotary positions they would have in ``x'`` relative to the request, so a query sees them at the
distances prompting shows them. ``factor`` multiplies the attention weight of every prefix key before the
softmax is normalised (``log factor`` added to its logits): ``1`` is the prefix as prompted, ``0`` no steering.

Measured on the embedded model (README, *HyperSteer*): ``"after_start"`` steers like prompting with the same
placement, ``"response"`` names the concept but drops the request more often, and :meth:`PrefixKV.pooled` does not
steer.

It runs on a Hugging Face Llama-style decoder (rotary, ``model.layers[i].self_attn``): a ``TransformerBridge``'s
weight-sharing twin (:func:`hooksteer.fast_generation.hf_twin`) during :func:`generate_with_prefix`.

Example:
    >>> prefix = steering_prompt_prefix(bridge, "Talk about volcanoes.")             # doctest: +SKIP
    >>> generate_with_prefix(bridge, ["How do I bake bread?"], prefix, factor=2.0)   # doctest: +SKIP
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from hooksteer.activations import check_texts, tokenize
from hooksteer.fast_generation import fast_path_hooks, hf_twin, twin_hooks
from hooksteer.generation import (
    _cuda_devices,
    _decode_until_eos,
    _generate_with_hf_loop,
    chat_prompts,
    check_context,
    check_generation_settings,
)
from hooksteer.hooks import model_lock

__all__ = ["POSITIONS", "PrefixKV", "PrefixUse", "attend_on_bridge", "attend_to_prefix", "generate_with_prefix", "prefix_from_tokens",
           "steering_prompt_prefix"]

#: Which query positions attend to the prefix (see the module docstring).
POSITIONS: tuple[str, ...] = ("response", "generated", "after_start", "all")
_IMPLEMENTATION = "hooksteer_prefix"
_ACTIVE = threading.local()


@dataclass(frozen=True)
class PrefixKV:
    """One prefix's keys and values for every layer, rotated for the plain prompt's positions.

    Attributes:
        keys, values: per layer, ``(kv_heads, span, head_dim)``; keys already rotated (rotary) to positions
            ``start - span … start - 1``.
        start: where the prefix stood in the plain prompt (tokens before it, e.g. the chat header, precede it
            in both prompts); ``positions="after_start"`` lets queries from here on attend to it.
        text: what the prefix says (for records).
        weight: each prefix key counts as this many keys in the softmax (``log weight`` added to its logits);
            :meth:`pooled` sets it to the number of keys it pools.
    """

    keys: tuple[Float[Tensor, "kv_heads span head_dim"], ...]
    values: tuple[Float[Tensor, "kv_heads span head_dim"], ...]
    start: int
    text: str = ""
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.keys or len(self.keys) != len(self.values):
            raise ValueError(f"{len(self.keys)} key and {len(self.values)} value tensors: need one of each per layer")
        for key, value in zip(self.keys, self.values, strict=True):
            if key.ndim != 3 or key.shape != value.shape:
                raise ValueError(f"keys and values must be (kv_heads, span, head_dim) alike, got "
                                 f"{tuple(key.shape)} and {tuple(value.shape)}")
        if self.start < 0:
            raise ValueError(f"start must be >= 0, got {self.start}")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"weight must be a finite number > 0, got {self.weight!r}")

    def pooled(self) -> PrefixKV:
        """One key and one value per layer and KV head: the means over the prefix's tokens, weighted as the
        ``span`` keys they stand for. A fixed-size summary (``2 × layers × kv_heads × head_dim`` numbers, whatever
        the prompt's length): with equal attention logits it takes the same share of attention as the whole
        prefix, and adds the mean value.

        Example:
            >>> steering_prompt_prefix(bridge, "Talk about volcanoes.").pooled().span       # doctest: +SKIP
            1
        """
        keys = tuple(k.mean(dim=1, keepdim=True) for k in self.keys)
        values = tuple(v.mean(dim=1, keepdim=True) for v in self.values)
        return PrefixKV(keys, values, self.start, self.text, self.weight * self.span)

    @property
    def span(self) -> int:
        """Number of prefix tokens."""
        return int(self.keys[0].shape[1])


def _decoder(model: nn.Module) -> tuple[nn.ModuleList, nn.Module]:
    inner = getattr(model, "model", None)
    layers, rotary = getattr(inner, "layers", None), getattr(inner, "rotary_emb", None)
    if not isinstance(layers, nn.ModuleList) or rotary is None or not all(
            hasattr(layer, "self_attn") for layer in layers):
        raise TypeError(f"{type(model).__name__} is not a Hugging Face decoder with rotary attention "
                        "(model.layers[i].self_attn and model.rotary_emb); pass a TransformerBridge's hf_twin")
    return layers, rotary


def _rotate(model: nn.Module, keys: Tensor, shift: int) -> Tensor:
    """Keys rotated by ``shift`` more positions (rotary rotations add up: R(p + s) = R(s)·R(p))."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    _, rotary = _decoder(model)
    cos, sin = rotary(keys, torch.tensor([[shift]], device=keys.device))
    rotated, _ = apply_rotary_pos_emb(keys, keys, cos.to(keys.dtype), sin.to(keys.dtype))
    return rotated


@torch.no_grad()
def prefix_from_tokens(model: nn.Module, tokens: Sequence[int] | Tensor, start: int, span: int, *,
                       text: str = "") -> PrefixKV:
    """The keys and values of ``tokens[start : start + span]`` in every layer of the HF decoder ``model``, placed
    for a plain prompt that lacks them (``tokens`` without that span).

    Causal attention makes them independent of what follows the span, so one forward pass serves every prompt.

    Example:
        >>> prefix = prefix_from_tokens(twin, ids, start=4, span=9)                    # doctest: +SKIP
    """
    ids = torch.as_tensor(tokens, dtype=torch.long).reshape(1, -1)
    if start < 0 or span < 1 or start + span > ids.shape[1]:
        raise ValueError(f"span {start}:{start + span} does not fit {ids.shape[1]} tokens")
    layers, _ = _decoder(model)
    device = next(model.parameters()).device
    with _implementation(model, None):
        out = model(input_ids=ids[:, : start + span].to(device), use_cache=True)
    cache = out.past_key_values
    keys, values = [], []
    for index in range(len(layers)):
        layer_keys, layer_values = cache.layers[index].keys, cache.layers[index].values
        part = slice(start, start + span)
        keys.append(_rotate(model, layer_keys[:, :, part], -span)[0].detach())
        values.append(layer_values[0, :, part].detach())
    return PrefixKV(tuple(keys), tuple(values), start, text)


def steering_prompt_prefix(model: Any, steering_prompt: str) -> PrefixKV:
    """The steering prompt as a prefix: its keys and values where prompting puts it in front of the request
    (``style="prefix"``: ``"<steering prompt>\\n\\n<request>"`` in the chat template), for a ``TransformerBridge``.

    Example:
        >>> steering_prompt_prefix(bridge, "Talk about volcanoes.").span               # doctest: +SKIP
        7
    """
    from hooksteer.psr.teacher import plain_chat_prompt, steered_prompt_text

    if not isinstance(steering_prompt, str) or not steering_prompt.strip():
        raise ValueError("steering_prompt must be a non-empty string")
    probe = "Reply with one word."
    steered = tokenize(model, steered_prompt_text(model, steering_prompt, probe, "prefix")).tolist()
    plain = tokenize(model, plain_chat_prompt(model, probe)).tolist()
    start = 0
    while start < min(len(steered), len(plain)) and steered[start] == plain[start]:
        start += 1
    span = len(steered) - len(plain)
    if span < 1 or steered[start + span:] != plain[start:]:
        raise ValueError(f"could not find the steering prompt {steering_prompt!r} as one span in front of the "
                         "request in the chat template")
    with model_lock(model):  # the twin's attention implementation changes for the pass
        return prefix_from_tokens(hf_twin(model), steered, start, span, text=steering_prompt)


@dataclass
class PrefixUse:
    """What an :func:`attend_to_prefix` block did: ``forward_passes`` counts the model's forward passes that ran
    through the prefix attention (0 after the block: nothing inside ran on this model)."""

    forward_passes: int = 0


@dataclass(frozen=True)
class _Active:
    prefix: PrefixKV
    log_factor: float
    positions: str
    template_tokens: int
    use: PrefixUse


@contextmanager
def _implementation(model: nn.Module, active: _Active | None) -> Iterator[None]:
    """Run ``model``'s attention through :func:`_prefix_attention` with ``active`` (``None``: plain eager)."""
    _register()
    config = model.config
    previous_impl, previous_active = config._attn_implementation, getattr(_ACTIVE, "value", None)
    config._attn_implementation = _IMPLEMENTATION
    _ACTIVE.value = active
    try:
        yield
    finally:
        config._attn_implementation = previous_impl
        _ACTIVE.value = previous_active


@contextmanager
def attend_to_prefix(model: nn.Module, prefix: PrefixKV, *, factor: float = 1.0, positions: str = "response",
                     template_tokens: int = 0) -> Iterator[PrefixUse]:
    """Inside the block, the chosen query positions of the HF decoder ``model`` also attend to ``prefix``; yields a
    :class:`PrefixUse` that counts the forward passes that did.

    Args:
        model: a Hugging Face Llama-style causal LM (e.g. ``hf_twin(bridge)``); its attention runs eagerly here.
        prefix: from :func:`steering_prompt_prefix` or :func:`prefix_from_tokens`, same model.
        factor: multiplies each prefix key's attention weight before normalising (``0``: no steering).
        positions: one of :data:`POSITIONS`.
        template_tokens: with ``"response"``, how many trailing prompt tokens open the answer (e.g.
            ``hooksteer.psr.teacher.template_suffix_length(bridge)``).

    A forward pass without a KV cache is a prompt (its last ``template_tokens`` positions are "response"); one
    with a cache is generation (every new token is generated). Not re-entrant across threads: the attention
    implementation is the model config's; hold the model's lock (``generate_with_prefix`` does).

    Example:
        >>> with attend_to_prefix(twin, prefix, factor=2.0, template_tokens=6):        # doctest: +SKIP
        ...     logits = twin(input_ids).logits
    """
    layers, _ = _decoder(model)
    if len(prefix.keys) != len(layers):
        raise ValueError(f"the prefix has {len(prefix.keys)} layers, the model {len(layers)}")
    attention = layers[0].self_attn
    kv_heads = int(model.config.num_key_value_heads)
    head_dim = int(getattr(attention, "head_dim", model.config.hidden_size // model.config.num_attention_heads))
    if tuple(prefix.keys[0].shape[::2]) != (kv_heads, head_dim):
        raise ValueError(f"prefix keys are {tuple(prefix.keys[0].shape)}, the model needs ({kv_heads}, span, "
                         f"{head_dim})")
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor) or factor < 0:
        raise ValueError(f"factor must be a finite number >= 0, got {factor!r}")
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; choose from {list(POSITIONS)}")
    if isinstance(template_tokens, bool) or not isinstance(template_tokens, int) or template_tokens < 0:
        raise ValueError(f"template_tokens must be an integer >= 0, got {template_tokens!r}")
    log_factor = math.log(factor) if factor > 0 else -math.inf
    use = PrefixUse()
    with _implementation(model, _Active(prefix, log_factor, positions, template_tokens, use)):
        yield use


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(_IMPLEMENTATION, _prefix_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(_IMPLEMENTATION, eager_mask)


def _query_rows(active: _Active, mask: Tensor | None, batch: int, q_len: int, kv_len: int,
                device: torch.device) -> Bool[Tensor, "batch q"]:
    """Which query rows attend to the prefix."""
    if q_len < kv_len or active.positions == "all":  # generation with a cache: every new token is generated
        return torch.ones(batch, q_len, dtype=torch.bool, device=device)
    index = torch.arange(q_len, device=device)[None, :].expand(batch, q_len)
    if active.positions == "generated":
        return torch.zeros(batch, q_len, dtype=torch.bool, device=device)
    if active.positions == "response":
        return index >= q_len - active.template_tokens
    # after_start: the unpadded position (left padding = keys the last query may not see) is >= start
    if mask is None:
        return index >= active.prefix.start
    blocked = ~mask[:, 0, -1, :] if mask.dtype == torch.bool else mask[:, 0, -1, :] < 0
    padding = blocked.sum(dim=-1, keepdim=True)
    return index - padding >= active.prefix.start


def _prefix_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                      scaling: float, dropout: float = 0.0, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """Eager attention over the layer's own keys plus, for the chosen query rows, the prefix's keys."""
    from transformers.models.llama.modeling_llama import repeat_kv

    groups = module.num_key_value_groups
    keys, values = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, keys.transpose(2, 3)) * scaling
    batch, _, q_len, kv_len = scores.shape
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # an sdpa-style mask: True = attend
        scores = scores.masked_fill(~attention_mask[..., :kv_len], torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask[..., :kv_len]
    elif q_len > 1:
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=scores.device).tril(kv_len - q_len)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    active: _Active | None = getattr(_ACTIVE, "value", None)
    if active is not None and int(module.layer_idx) == 0:
        active.use.forward_passes += 1
    if active is None or active.log_factor == -math.inf:
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        return torch.matmul(weights, values).transpose(1, 2).contiguous(), weights
    layer = int(module.layer_idx)
    prefix_keys = active.prefix.keys[layer].to(query.device, query.dtype)[None].expand(batch, -1, -1, -1)
    prefix_values = active.prefix.values[layer].to(query.device, query.dtype)[None].expand(batch, -1, -1, -1)
    prefix_keys, prefix_values = repeat_kv(prefix_keys, groups), repeat_kv(prefix_values, groups)
    log_weight = active.log_factor + math.log(active.prefix.weight)
    prefix_scores = torch.matmul(query, prefix_keys.transpose(2, 3)) * scaling + log_weight
    rows = _query_rows(active, attention_mask, batch, q_len, kv_len, scores.device)
    prefix_scores = prefix_scores.masked_fill(~rows[:, None, :, None], -math.inf)
    weights = torch.softmax(torch.cat([scores, prefix_scores], dim=-1), dim=-1, dtype=torch.float32)
    weights = weights.to(query.dtype)
    output = torch.matmul(weights[..., :kv_len], values) + torch.matmul(weights[..., kv_len:], prefix_values)
    return output.transpose(1, 2).contiguous(), weights[..., :kv_len]


@contextmanager
def attend_on_bridge(model: Any, prefix: PrefixKV, *, factor: float = 1.0,
                     positions: str = "response") -> Iterator[tuple[nn.Module, PrefixUse]]:
    """:func:`attend_to_prefix` on a ``TransformerBridge``'s Hugging Face twin, holding the bridge's lock, with
    ``"response"`` counting the chat template's assistant header; yields ``(twin, use)``. Whatever generates on the
    twin inside the block (``generate_texts`` takes the twin whenever only hooksteer steering is installed) attends
    to the prefix; ``use.forward_passes`` says whether anything did.

    Example:
        >>> with attend_on_bridge(bridge, prefix, positions="after_start") as (twin, use):  # doctest: +SKIP
        ...     texts = generate_texts(bridge, ["Tell me a story."])
    """
    from hooksteer.psr.teacher import template_suffix_length

    with model_lock(model):
        twin = hf_twin(model)
        with attend_to_prefix(twin, prefix, factor=factor, positions=positions,
                              template_tokens=template_suffix_length(model)) as use:
            yield twin, use


def generate_with_prefix(model: Any, prompts: Sequence[str], prefix: PrefixKV, *, factor: float = 1.0,
                         positions: str = "response", max_new_tokens: int = 40, chat: bool = True,
                         do_sample: bool = False, temperature: float = 1.0, seed: int | None = None) -> list[str]:
    """:func:`hooksteer.generation.generate_texts` on a ``TransformerBridge`` whose chosen positions also attend to
    ``prefix`` in every layer (see :func:`attend_to_prefix`); residual steering installed with ``hooksteer.steer``
    still applies. Runs on the bridge's weight-sharing Hugging Face twin, holding the model's lock.

    Example:
        >>> generate_with_prefix(bridge, ["How do I bake bread?"], prefix, factor=2.0)  # doctest: +SKIP
    """
    if not isinstance(prefix, PrefixKV):
        raise TypeError(f"prefix must be a PrefixKV (from steering_prompt_prefix), got {type(prefix).__name__}")
    texts = chat_prompts(model, prompts) if chat else check_texts(prompts, "prompts")
    check_generation_settings(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature)
    check_context(model, [int(tokenize(model, text).shape[0]) + prefix.span for text in texts], max_new_tokens)
    with torch.random.fork_rng(devices=_cuda_devices(model), enabled=seed is not None), attend_on_bridge(
            model, prefix, factor=factor, positions=positions) as (twin, _):
        if seed is not None:
            torch.manual_seed(seed)
        plan = fast_path_hooks(model)
        if plan is None:
            raise ValueError("generate_with_prefix runs on the bridge's Hugging Face twin: remove hooks other than "
                             "hooksteer steering at hook_resid_pre / hook_resid_post")
        with twin_hooks(twin, plan):
            rows = _generate_with_hf_loop(model, twin, texts, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                          temperature=temperature, stop_at_eos=True)
    return [_decode_until_eos(model, row) for row in rows]
