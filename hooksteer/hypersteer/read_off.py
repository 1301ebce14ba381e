"""A hypernetwork that reads each steering prompt's vectors off the model and learns only how to use them.

``Δ_l(s) = g_l · D_l(s) + b_l``: ``D_l(s)`` is what the steering prompt ``s`` changes in the activations at site
``l`` (:func:`hooksteer.hypersteer.contrast.prompt_difference_vectors`: the mean prompted-minus-unprompted
difference on the prompted model's answers to a few base prompts, net of the sites below); the per-site gain
``g_l`` and the shared per-site bias ``b_l`` are trained on the training concepts, with the same objective,
data and trainer as :class:`~hooksteer.hypersteer.HyperSteer` (:class:`~hooksteer.hypersteer.HyperSteerTrainer`).
Nothing about a concept is memorised: a new steering prompt needs only its ``D`` (one prompted answer per probe
prompt and two passes, :meth:`ReadOffSteer.add_prompts`), so held-out concepts get vectors of their own by
construction. It is the HyperSteer variant that reads the steered model's own activations most directly.

Example:
    >>> hyper = ReadOffSteer.read_off(model, train_records, HyperSteerConfig(layers=list(range(10, 30))))  # doctest: +SKIP
    >>> HyperSteerTrainer(hyper, train_records).train()                                     # gains and biases  # doctest: +SKIP
    >>> hyper.add_prompts(prompt_difference_vectors(model, new_records, hyper.config.sites,       # doctest: +SKIP
    ...                                             positions=hyper.config.positions))
    >>> with hs.steer(model, hyper.vector(new_steering_prompt)):                            # doctest: +SKIP
    ...     ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooksteer.hypersteer.bounds import ConceptVectors
from hooksteer.hypersteer.config import HyperSteerConfig
from hooksteer.hypersteer.contrast import prompt_difference_vectors

__all__ = ["ReadOffSteer"]


class ReadOffSteer(ConceptVectors):
    """``Δ_l(s) = g_l · D_l(s) + b_l`` with ``D`` read off the model (a frozen table, one row per known steering
    prompt) and ``g`` (one gain per site, starts at 1) and ``b`` (one bias vector per site, starts at 0) trained.

    Args:
        model: the frozen base model.
        keys: steering prompts with a row of ``D`` (filled by :meth:`set_vectors` / :meth:`add_prompts`; zero
            until then).
        config: :class:`HyperSteerConfig` (sites ``layer`` / ``layers``, positions, objective and optimisation;
            ungated and of free length).
    """

    def __init__(self, model: Any, keys: Sequence[str], config: HyperSteerConfig | None = None, *,
                 shared: bool = False, init_std: float = 0.0) -> None:
        if shared:
            raise ValueError("a ReadOffSteer reads one D per steering prompt; the floor is ConceptVectors.floor")
        super().__init__(model, keys, config, init_std=init_std)
        if self.config.gated or self.config.delta_norm is not None or self.config.positions == "prompt":
            raise ValueError("a ReadOffSteer scales what it reads off the model's answers: it needs an ungated config "
                             "without delta_norm, steering at positions 'all' or 'answer'")
        self.table.requires_grad_(False)
        reference = self.table
        n_sites, d_model = self.config.n_sites, int(model.cfg.d_model)
        self.site_gain = nn.Parameter(torch.ones(n_sites, device=reference.device, dtype=reference.dtype))
        self.site_bias = nn.Parameter(torch.zeros(n_sites, d_model, device=reference.device, dtype=reference.dtype))

    @classmethod
    def read_off(cls, model: Any, records: Sequence[Any], config: HyperSteerConfig | None = None, *,
                 distill_config: Any = None, progress: bool = False) -> ReadOffSteer:
        """A ReadOffSteer with ``D`` read off for every steering prompt of ``records`` (gain 1, bias 0)."""
        resolved = (config or HyperSteerConfig()).resolved(model)
        vectors = prompt_difference_vectors(model, records, resolved.sites, distill_config=distill_config,
                                            positions=resolved.positions, progress=progress)
        hyper = cls(model, list(vectors), config)
        hyper.set_vectors(vectors)
        return hyper

    @property
    def kind(self) -> str:
        return "read_off"

    def add_prompts(self, vectors: Mapping[str, Tensor]) -> None:
        """Add (or replace) the ``D`` of steering prompts, e.g. new concepts'
        (:func:`~hooksteer.hypersteer.contrast.prompt_difference_vectors` at ``config.sites`` and ``config.positions``);
        gains and biases are kept."""
        new = [key for key in dict.fromkeys(vectors) if key not in self._index]
        if new:
            grown = torch.zeros(len(self.keys) + len(new), *self.table.shape[1:], device=self.table.device,
                                dtype=self.table.dtype)
            grown[: len(self.keys)] = self.table.detach()
            self.table = nn.Parameter(grown, requires_grad=False)
            self.keys = [*self.keys, *new]
            self._index = {key: i for i, key in enumerate(self.keys)}
        known = {key: self.table[self._index[key]].detach() for key in self.keys}
        self.set_vectors({**known, **vectors})

    def indices(self, keys: Sequence[str]) -> Int[Tensor, " batch"]:
        missing = [k for k in keys if k not in self._index]
        if missing:
            raise KeyError(f"no read-off vectors for steering prompt {missing[0]!r}: add them with "
                           "add_prompts(prompt_difference_vectors(model, records, config.sites, "
                           "positions=config.positions))")
        return super().indices(keys)

    def forward(self, rows: Int[Tensor, " batch"]) -> Float[Tensor, "batch d_model"] | Float[Tensor, "batch n_sites d_model"]:
        """``g · D[rows] + b`` per site: ``(batch, d_model)`` for one site, ``(batch, n_sites, d_model)`` for several."""
        read = self.table[rows.to(self.device)]
        if self.config.n_sites == 1:
            return self.site_gain[0] * read + self.site_bias[0]
        return self.site_gain[None, :, None] * read + self.site_bias[None]
