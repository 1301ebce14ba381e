"""Per-token gates for HyperSteer's vectors: at each site, ``Δ_t = λ(h_t) · z`` with ``λ(h) = ReLU(b + mean(w ⊙ ĥ))``.

A constant vector adds the same ``z`` at every token. A-PSR reads a coefficient from each token's own activation,
so the steering can fade where the answer already carries the concept and grow where it does not. Here the gate
reads the RMS-normalised activation ``ĥ = h / rms(h)`` (one scale at every layer) through the *mean* of ``w ⊙ ĥ``
(``w·ĥ / d_model``: an optimiser step of size lr on every entry of ``w`` moves λ about as far as the same step on
``b``, so one learning rate fits vector, bias and gate), and starts at ``w = 0, b = 1``: a gated form begins exactly
at its constant-vector solution.

``HyperSteerConfig.gate`` chooses who owns ``(w, b)``:

* ``"none"`` — no gate (a constant vector per site);
* ``"shared"`` — one gate per site for every steering prompt (a trained parameter of H or of the vector table);
* ``"concept"`` — a gate per steering prompt (H writes it beside ``z``; an oracle keeps one per concept), as A-PSR.

A gated site's *steering parameters* are one row ``[z | w | b]`` of width ``2·d_model + 1``; :func:`split_params`
takes it apart. :func:`add_site_params` applies a row (constant or gated) to a residual in training;
:func:`site_steering_hooks` gives the same change as TransformerLens hooks for inference and KV-cached generation.

Example:
    >>> import torch
    >>> params = torch.cat([torch.ones(1, 4), torch.zeros(1, 4), torch.ones(1, 1)], dim=-1)  # z=1, w=0, b=1
    >>> resid = torch.zeros(1, 2, 4)
    >>> add_site_params(resid, params, None).tolist()       # the gate is 1 everywhere: a constant vector
    [[[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from hooksteer.hooks import AddGated, PositionSpec, PositionTracker, add_vector, apply_steering_hooks
from hooksteer.hypersteer.config import GATE_MODES

__all__ = ["GATE_MODES", "RowGate", "add_site_params", "gate_values", "initial_gate", "is_gated", "split_params",
           "site_steering_hooks", "scale_vectors", "steer_with", "vectors_of"]

_EPS = 1e-6


def is_gated(params: Tensor, d_model: int) -> bool:
    """Whether ``params`` rows are gated steering parameters (width ``2·d_model + 1``) rather than vectors
    (width ``d_model``); any other width is an error."""
    width = int(params.shape[-1])
    if width == d_model:
        return False
    if width == 2 * d_model + 1:
        return True
    raise ValueError(f"steering parameters of width {width} fit neither a vector (d_model={d_model}) nor a gated "
                     f"vector (2·d_model + 1 = {2 * d_model + 1})")


def split_params(params: Float[Tensor, "... width"], d_model: int
                 ) -> tuple[Float[Tensor, "... d_model"], Float[Tensor, "... gate"] | None]:
    """``[z | w | b]`` → ``(z, [w | b])``; an ungated row → ``(row, None)``.

    Example:
        >>> z, gate = split_params(torch.arange(5.0)[None], 2)
        >>> z.tolist(), gate.tolist()
        ([[0.0, 1.0]], [[2.0, 3.0, 4.0]])
    """
    if not is_gated(params, d_model):
        return params, None
    return params[..., :d_model], params[..., d_model:]


def vectors_of(params: Float[Tensor, "batch ... width"], d_model: int, n_sites: int
               ) -> Float[Tensor, "batch d_model"] | Float[Tensor, "batch n_sites d_model"]:
    """The vectors ``z`` of per-row steering parameters, without their gates: ``(batch, d_model)`` for one site (as an
    ungated one-site module writes), ``(batch, n_sites, d_model)`` for several.

    Example:
        >>> vectors_of(torch.zeros(3, 1, 2 * 4 + 1), 4, 1).shape
        torch.Size([3, 4])
    """
    z = split_params(params, d_model)[0]
    return z[:, 0] if n_sites == 1 and z.ndim == 3 else z


def initial_gate(shape: Sequence[int], d_model: int) -> Float[Tensor, "... gate"]:
    """Gate parameters ``[w | b]`` with ``w = 0`` and ``b = 1`` (λ = 1 everywhere), of shape ``(*shape, d_model+1)``."""
    gate = torch.zeros(*shape, d_model + 1)
    gate[..., -1] = 1.0
    return gate


def gate_values(activation: Float[Tensor, "batch pos d_model"], gate: Float[Tensor, "batch gate"]
                ) -> Float[Tensor, "batch pos"]:
    """``λ_t = ReLU(b + mean(w ⊙ ĥ_t))`` per row, ``ĥ = h / rms(h)``; ``gate`` holds one ``[w | b]`` per row (or one
    row for every row).

    Example:
        >>> h = torch.tensor([[[1.0, 1.0], [1.0, -1.0]]])
        >>> gate_values(h, torch.tensor([[2.0, 0.0, 0.0]])).round(decimals=3).tolist()   # w = (2, 0), b = 0
        [[1.0, 1.0]]
        >>> gate_values(h, torch.tensor([[0.0, 2.0, 0.0]])).round(decimals=3).tolist()   # w = (0, 2): token 2 shut off
        [[1.0, 0.0]]
    """
    gate = gate.to(device=activation.device, dtype=activation.dtype)
    if gate.ndim == 1:
        gate = gate[None]
    d_model = activation.shape[-1]
    if gate.shape[-1] != d_model + 1:
        raise ValueError(f"gate rows have width {gate.shape[-1]}, expected d_model + 1 = {d_model + 1}")
    normed = activation * torch.rsqrt(activation.pow(2).mean(-1, keepdim=True) + _EPS)
    weight, bias = gate[:, :d_model], gate[:, d_model]
    mean = torch.einsum("bpd,bd->bp", normed, weight.expand(activation.shape[0], -1)) / d_model
    return torch.relu(mean + bias.expand(activation.shape[0])[:, None])


def add_site_params(resid: Float[Tensor, "batch pos d_model"], params: Float[Tensor, "batch width"],
                    steered: Bool[Tensor, "batch pos"] | None) -> Float[Tensor, "batch pos d_model"]:
    """``resid`` plus one site's steering: ``z`` (a vector row) or ``λ(h_t)·z`` (a gated row, λ read from ``resid``
    itself), at every position or where ``steered`` is True."""
    z, gate = split_params(params, resid.shape[-1])
    added = z[:, None, :].to(resid.dtype)
    if gate is not None:
        added = added * gate_values(resid, gate)[..., None]
    if steered is not None:
        added = added * steered[:, : resid.shape[1], None].to(device=resid.device, dtype=resid.dtype)
    return resid + added


class RowGate(nn.Module):
    """The gate of each batch row as a callable ``activation (batch, pos, d_model) → (batch, pos)`` for
    :class:`hooksteer.hooks.AddGated` (one ``[w | b]`` per row, e.g. one per steering prompt of a batch)."""

    def __init__(self, gate: Float[Tensor, "batch gate"]) -> None:
        super().__init__()
        self.register_buffer("gate", gate.detach().float().reshape(-1, gate.shape[-1]).clone())

    def forward(self, activation: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos"]:
        if self.gate.shape[0] not in (1, activation.shape[0]):
            raise ValueError(f"{self.gate.shape[0]} gate rows for a batch of {activation.shape[0]}")
        return gate_values(activation, self.gate)


def scale_vectors(params: Float[Tensor, "batch ... width"], scale: Float[Tensor, " batch"], d_model: int
                  ) -> Float[Tensor, "batch ... width"]:
    """``params`` with each row's vectors ``z`` times its ``scale`` and its gates unchanged (a steering factor
    multiplies the vector, not the gate)."""
    z, gate = split_params(params, d_model)
    z = z * scale.to(z.dtype).view(-1, *([1] * (z.ndim - 1)))
    return z if gate is None else torch.cat([z, gate], dim=-1)


def site_steering_hooks(hook_names: Sequence[str], params: Float[Tensor, "batch n_sites width"], d_model: int, *,
                        positions: PositionSpec = "all", tracker: PositionTracker | None = None
                        ) -> list[tuple[str, Any]]:
    """Hooks adding each site's steering, one row per batch row (a single row: the same for every row):
    :func:`~hooksteer.hooks.add_vector` for vectors,
    :class:`~hooksteer.hooks.AddGated` with a :class:`RowGate` for gated rows. Pass one ``tracker`` (and apply the
    hooks with :func:`hooksteer.hooks.apply_steering_hooks`) for KV-cached generation.

    Example:
        >>> hooks = site_steering_hooks(["blocks.1.hook_resid_post"], params, 64, tracker=tracker)   # doctest: +SKIP
        >>> with apply_steering_hooks(model, hooks, tracker):                                      # doctest: +SKIP
        ...     model.generate("Hi", max_new_tokens=8)
    """
    if params.ndim == 2:
        params = params[:, None]
    if params.ndim != 3 or params.shape[1] != len(hook_names):
        raise ValueError(f"steering parameters of shape {tuple(params.shape)} do not fit {len(hook_names)} sites")
    hooks: list[tuple[str, Any]] = []
    for i, name in enumerate(hook_names):
        z, gate = split_params(params[:, i], d_model)
        if z.shape[0] == 1:  # one row steers every row of any batch
            z = z[0]
        if gate is None:
            hooks.append((name, add_vector(z, 1.0, positions=positions, tracker=tracker)))
        else:
            hooks.append((name, AddGated(z, RowGate(gate), 1.0, positions=positions, tracker=tracker)))
    return hooks


@contextmanager
def steer_with(hyper: Any, steering_prompt: str, base_prompt: str | None = None, *, model: Any = None,
               scale: float = 1.0, positions: PositionSpec | None = None) -> Iterator[list[tuple[str, Any]]]:
    """Steer ``model`` (default: ``hyper``'s base model) with what ``hyper`` (a HyperSteer or ConceptVectors) writes
    for ``steering_prompt``: its vectors, times ``scale``, at every site, gated per token when it has gates, at
    ``positions`` (default: where it was trained to act). Hooks are removed on exit, also after an exception.

    Example:
        >>> with steer_with(hyper, "Write about volcanoes."):                      # doctest: +SKIP
        ...     print(generate_texts(model, ["Tell me about your day."], max_new_tokens=30))
    """
    model = hyper.base_model if model is None else model
    params = hyper.steering_params(steering_prompt, base_prompt)
    params = scale_vectors(params, torch.tensor([float(scale)]), int(model.cfg.d_model))
    tracker = PositionTracker()
    hooks = site_steering_hooks(hyper.config.hook_names, params, int(model.cfg.d_model),
                                positions=hyper.config.positions if positions is None else positions, tracker=tracker)
    with apply_steering_hooks(model, hooks, tracker):
        yield hooks
