"""Bounds for a hypernetwork: free vectors trained with the same objective and data as H.

* **oracle** (:meth:`ConceptVectors.oracle`): one free vector per steering prompt. What H would write if it
  memorised every concept perfectly; the upper bound that H amortises (and, trained on held-out concepts'
  *training* prompts, the best a single vector per concept can do on them).
* **floor** (:meth:`ConceptVectors.floor`): one vector shared by every steering prompt. What a collapsed H
  (one concept-independent direction) learns; H must beat it on held-in concepts to be reading the concept.

Both train with :class:`~hooksteer.hypersteer.HyperSteerTrainer` exactly like H (same loss, batches, steps
and learning-rate schedule) and plug into the evaluation like H
(:class:`~hooksteer.hypersteer.evaluation.HyperSteerMethod`).

Example:
    >>> from hooksteer.hypersteer import HyperSteerConfig, HyperSteerTrainer          # doctest: +SKIP
    >>> oracle = ConceptVectors.oracle(model, [r.steering_prompt for r in records], HyperSteerConfig(lr=1e-2))  # doctest: +SKIP
    >>> HyperSteerTrainer(oracle, records).train()                                     # doctest: +SKIP
    >>> v = oracle.vector("Write about Volcano. Every sentence must be about Volcano.")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from hooksteer.hypersteer.config import HyperSteerConfig
from hooksteer.hypersteer.deltas import site_vectors, with_norm
from hooksteer.hypersteer.gating import initial_gate, vectors_of
from hooksteer.hypersteer.model import HyperSteerFileError, base_signature
from hooksteer.vectors import SteeringSet, SteeringVector

__all__ = ["ConceptVectors"]

FORMAT = "hooksteer.concept_vectors"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ConceptVectors(nn.Module):
    """A table of free steering vectors at ``blocks.{layer}.hook_resid_post``, keyed by steering prompt (one vector
    per site and key when ``config.layers`` names several sites: a ``(keys, n_sites, d_model)`` table). With gates
    (``config.gate``) a ``gate_table`` of ``[w | b]`` per site, per key (``"concept"``) or one for all (``"shared"``).

    Args:
        model: the frozen base model (kept by reference, not as a submodule).
        keys: the steering prompts with a vector of their own (ignored when ``shared``).
        config: the same :class:`HyperSteerConfig` as H (layer, loss and optimisation settings).
        shared: one vector for every steering prompt (the floor), known or not.
        init_std: std of the initial vectors (0: start exactly at "no steering"; with ``config.delta_norm`` a
            vector has a fixed length, so 0 then means a random direction: std 1 before rescaling).
    """

    needs_base_prompt = False

    def __init__(self, model: Any, keys: Sequence[str], config: HyperSteerConfig | None = None, *,
                 shared: bool = False, init_std: float = 0.0) -> None:
        super().__init__()
        self.config = (copy.deepcopy(config) if config is not None else HyperSteerConfig()).resolved(model)
        self._base = [model]
        self.signature = base_signature(model)
        self.shared = bool(shared)
        self.keys = ["*"] if self.shared else list(dict.fromkeys(keys))
        if not self.keys:
            raise ValueError("ConceptVectors needs at least one steering prompt (key)")
        self._index = {key: i for i, key in enumerate(self.keys)}
        generator = torch.Generator().manual_seed(self.config.seed)
        if self.config.delta_norm is not None and init_std == 0:
            init_std = 1.0  # a fixed-length vector needs a direction to start from
        shape = (len(self.keys), *self._row_shape(model))
        init = torch.randn(shape, generator=generator) * float(init_std)
        reference = next(model.parameters())
        self.table = nn.Parameter(init.to(device=reference.device, dtype=reference.dtype))
        if self.config.gated:  # a [w | b] per site: per key ("concept"), or one for every key ("shared")
            rows = 1 if self.config.gate == "shared" else len(self.keys)
            gate = initial_gate((rows, self.config.n_sites), int(model.cfg.d_model))
            self.gate_table = nn.Parameter(gate.to(device=reference.device, dtype=reference.dtype))

    def _row_shape(self, model: Any) -> tuple[int, ...]:
        """Shape of one key's entry: ``(d_model,)``, or ``(n_sites, d_model)`` for several sites."""
        d_model = int(model.cfg.d_model)
        return (d_model,) if self.config.n_sites == 1 else (self.config.n_sites, d_model)

    @classmethod
    def oracle(cls, model: Any, keys: Sequence[str], config: HyperSteerConfig | None = None) -> ConceptVectors:
        """One free vector per steering prompt."""
        return cls(model, keys, config)

    @classmethod
    def floor(cls, model: Any, config: HyperSteerConfig | None = None) -> ConceptVectors:
        """One vector shared by every steering prompt."""
        return cls(model, [], config, shared=True)

    @classmethod
    def from_vectors(cls, model: Any, vectors: Mapping[str, Tensor], config: HyperSteerConfig | None = None
                     ) -> ConceptVectors:
        """A table holding given vectors, keyed by steering prompt: ``(d_model,)`` (or ``(1, d_model)``) each for
        one site, ``(n_sites, d_model)`` for several (e.g. :func:`hooksteer.hypersteer.contrast.prompt_difference_vectors`).

        Example:
            >>> table = ConceptVectors.from_vectors(model, {"Write about X.": torch.ones(576)})   # doctest: +SKIP
        """
        table = cls(model, list(vectors), config)
        table.set_vectors(vectors)
        return table

    def set_vectors(self, vectors: Mapping[str, Tensor]) -> None:
        """Overwrite the table with one given vector (stack) per key, e.g. to start training from them. Ungated
        tables of free length only (a fixed ``delta_norm`` would rescale them).

        Raises:
            ValueError: a gated or fixed-length table, a key missing, a wrong shape or a non-finite value.
        """
        if self.config.gated or self.config.delta_norm is not None:
            raise ValueError("set_vectors keeps the given vectors as they are: it needs an ungated table without "
                             "delta_norm")
        missing = [key for key in self.keys if key not in vectors]
        if missing:
            raise ValueError(f"no vector given for steering prompt {missing[0]!r} ({len(missing)} keys missing)")
        expected = tuple(self.table.shape[1:])
        rows = []
        for key in self.keys:
            value = vectors[key]
            if tuple(value.shape) == (1, *expected):  # one site given as a (1, d_model) stack
                value = value[0]
            if tuple(value.shape) != expected or not bool(torch.isfinite(value).all()):
                raise ValueError(f"vector for {key!r} has shape {tuple(value.shape)}; expected {expected}, finite")
            rows.append(value)
        with torch.no_grad():
            self.table.copy_(torch.stack(rows).to(self.table))

    # ------------------------------------------------------------------ properties
    @property
    def base_model(self) -> Any:
        return self._base[0]

    @property
    def layer(self) -> int:
        return int(self.config.layer)  # type: ignore[arg-type]

    @property
    def hook_name(self) -> str:
        return self.config.hook_name

    @property
    def device(self) -> torch.device:
        return self.table.device

    @property
    def kind(self) -> str:
        return "floor" if self.shared else "oracle"

    # ------------------------------------------------------------------ lookup
    def indices(self, keys: Sequence[str]) -> Int[Tensor, " batch"]:
        """Row of each steering prompt (every prompt maps to row 0 when ``shared``)."""
        if self.shared:
            return torch.zeros(len(keys), dtype=torch.long, device=self.device)
        missing = [k for k in keys if k not in self._index]
        if missing:
            raise KeyError(f"no free vector for steering prompt {missing[0]!r}: the oracle only knows the "
                           f"{len(self.keys)} prompts it was built for")
        return torch.tensor([self._index[k] for k in keys], dtype=torch.long, device=self.device)

    def forward(self, rows: Int[Tensor, " batch"]) -> Float[Tensor, "batch d_model"] | Float[Tensor, "batch n_sites width"]:
        """The vectors of the given table rows (see :meth:`indices`), at ``config.delta_norm`` when it is set (per
        site); with gates ``[z | w | b]`` per site, ``(batch, n_sites, 2·d_model + 1)``."""
        rows = rows.to(self.device)
        delta = with_norm(self.table[rows], self.config.delta_norm)
        if not self.config.gated:
            return delta
        delta = delta.view(delta.shape[0], self.config.n_sites, -1)
        gate = self.gate_table[torch.zeros_like(rows) if self.config.gate == "shared" else rows]
        return torch.cat([delta, gate], dim=-1)

    @torch.no_grad()
    def vectors(self, steering_prompt: str | Sequence[str], base_prompt: str | Sequence[str] | None = None
                ) -> Float[Tensor, "batch d_model"] | Float[Tensor, "batch n_sites d_model"]:
        """Per-row vectors ``(batch, d_model)`` (``(batch, n_sites, d_model)`` for several sites), like
        :meth:`HyperSteer.vectors` (the base prompt is ignored; gated vectors without their gates)."""
        return vectors_of(self.steering_params(steering_prompt, base_prompt), int(self.table.shape[-1]),
                          self.config.n_sites)

    @torch.no_grad()
    def steering_params(self, steering_prompt: str | Sequence[str], base_prompt: str | Sequence[str] | None = None
                        ) -> Float[Tensor, "batch d_model"] | Float[Tensor, "batch n_sites width"]:
        """Per-row vectors, with their gates ``[z | w | b]`` when gated, like :meth:`HyperSteer.steering_params`."""
        steer = [steering_prompt] if isinstance(steering_prompt, str) else list(steering_prompt)
        if base_prompt is not None and not isinstance(base_prompt, str) and len(steer) == 1:
            steer = steer * len(list(base_prompt))
        return self(self.indices(steer)).float()

    def vector(self, steering_prompt: str | Sequence[str], base_prompt: str | Sequence[str] | None = None
               ) -> SteeringVector | SteeringSet | list[SteeringVector] | list[SteeringSet]:
        """Steering vector(s) at :attr:`hook_name`: one for a string, a list for a list of prompts (a
        :class:`~hooksteer.vectors.SteeringSet` of one vector per site when there are several sites)."""
        if self.config.gated:
            raise ValueError(f"these vectors are gated (gate={self.config.gate!r}), which a constant SteeringVector "
                             "cannot hold; steer with hooksteer.hypersteer.steer_with(vectors, steering_prompt) "
                             "instead")
        single = isinstance(steering_prompt, str)
        steer = [steering_prompt] if single else list(steering_prompt)
        deltas = self.vectors(steer).cpu()
        out = [site_vectors(self.config.hook_names, delta, method=f"hypersteer-{self.kind}",
                            source={"steering_prompt": s, "kind": self.kind, "positions": self.config.positions,
                                    "base_model": self.signature["model_name"]})
               for s, delta in zip(steer, deltas, strict=True)]
        return out[0] if single else out

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` (keys, settings, base model) and ``model.safetensors`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (WEIGHTS_FILE + ".tmp")
        try:
            tensors = {name: value.detach().cpu().contiguous() for name, value in self.state_dict().items()}
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
            os.replace(tmp, directory / WEIGHTS_FILE)
        finally:
            tmp.unlink(missing_ok=True)
        meta = {"format": FORMAT, "class": type(self).__name__, "shared": self.shared, "keys": self.keys,
                "base_model": self.signature, "config": self.config.to_dict()}
        tmp = directory / (CONFIG_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(meta, indent=2))
            os.replace(tmp, directory / CONFIG_FILE)
        finally:
            tmp.unlink(missing_ok=True)
        return directory

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Overwrite the table with the one saved in ``directory`` (same keys; used to resume training)."""
        other = type(self).load(directory, self.base_model)
        if other.keys != self.keys:
            raise HyperSteerFileError(f"{directory} holds vectors for other steering prompts than this table")
        self.load_state_dict(other.state_dict())

    @classmethod
    def load(cls, directory: str | os.PathLike, model: Any) -> ConceptVectors:
        """Load what :meth:`save` wrote (safetensors + JSON, no pickle), checking the base model's width."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise HyperSteerFileError(f"cannot read {directory / CONFIG_FILE}: {error}") from error
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("keys"), list):
            raise HyperSteerFileError(f"{directory / CONFIG_FILE} is not a saved ConceptVectors table")
        saved_class = meta.get("class", "ConceptVectors")
        if saved_class != cls.__name__:
            raise HyperSteerFileError(f"{directory} holds a {saved_class}, not a {cls.__name__}: load it with "
                                      f"{saved_class}.load")
        try:
            config = HyperSteerConfig.from_dict(meta["config"])
            with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as handle:
                saved = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
        except (KeyError, TypeError, ValueError, SafetensorError, OSError) as error:
            raise HyperSteerFileError(f"{directory} holds an unreadable ConceptVectors table: {error}") from error
        try:
            vectors = cls(model, meta["keys"], config, shared=bool(meta.get("shared")))
        except ValueError as error:
            raise HyperSteerFileError(f"{directory} holds an invalid ConceptVectors config: {error}") from error
        expected = vectors.state_dict()  # table (keys × sites × d_model), gate_table when gated, subclass parameters
        for name in sorted(set(expected) | set(saved)):
            if name not in saved or name not in expected:
                raise HyperSteerFileError(f"{directory}: tensor {name!r} is {'missing' if name not in saved else 'unexpected'}"
                                          f" for {len(meta['keys'])} keys × {config.n_sites} site(s), gate={config.gate!r}")
            if saved[name].shape != expected[name].shape:
                raise HyperSteerFileError(f"{directory}: {name} of shape {tuple(saved[name].shape)} does not fit "
                                          f"{len(meta['keys'])} keys × {config.n_sites} site(s) × d_model="
                                          f"{model.cfg.d_model} (expected {tuple(expected[name].shape)})")
            if not bool(torch.isfinite(saved[name]).all()):
                raise HyperSteerFileError(f"{directory}: {name} contains NaN or infinity")
        vectors.load_state_dict({name: value.to(expected[name].dtype) for name, value in saved.items()})
        return vectors
