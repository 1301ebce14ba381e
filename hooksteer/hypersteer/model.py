"""The HyperSteer hypernetwork H: steering prompt (+ base prompt) → steering vector Δ.

H is a truncated, trainable copy of the frozen base model B (its own copy of the embeddings and
of blocks ``0..n_blocks-1``), a final norm (copy of B's) and a linear head on the pooled steering-prompt
tokens (their mean by default, or the last token). With ``center=True`` (default) the head reads its input
minus a running mean over training batches, ``Δ = b + W·(x − μ)``, so the part shared by all steering
prompts lives in the bias. The vector is added to B's residual stream at ``blocks.{layer}.hook_resid_post``:
``ŷ = B(x | h_l ← h_l + Δ)``, ``Δ = H(s, x)``.

With ``layers=[l1, l2, …]`` (several sites, like A-PSR's per-layer vectors) the head writes one Δ per site,
``(batch, n_sites, d_model)``, each added at its own ``blocks.{l}.hook_resid_post``; :meth:`HyperSteer.vector` then
returns a :class:`~hooksteer.vectors.SteeringSet` (vectors at different sites act simultaneously).

Variants: ``no_context`` H(s); ``in_context`` H(s ⊕ x); ``cross_attention`` H(s) with every block
also attending to B's layer-``layer`` residual over the base prompt x.

Batched calls: :meth:`HyperSteer.vector` returns one :class:`~hooksteer.vectors.SteeringVector` for a
single steering prompt, and a ``list`` of them for a list (not a ``SteeringSet``, which would *sum*
vectors at one site). :meth:`HyperSteer.vectors` returns the per-row ``(batch, d_model)`` tensor that
:func:`hooksteer.hooks.add_vector` accepts to steer each row of a batch with its own vector.

Example:
    >>> import hooksteer as hs                                              # doctest: +SKIP
    >>> from hooksteer.hypersteer import HyperSteer, HyperSteerConfig  # doctest: +SKIP
    >>> model = hs.load_model()  # doctest: +SKIP
    >>> hyper = HyperSteer(model, HyperSteerConfig(variant="cross_attention", n_blocks=2))  # doctest: +SKIP
    >>> v = hyper.vector("Talk about volcanoes.", "Tell me about your day.")  # doctest: +SKIP
    >>> with hs.steer(model, v * 4.0):  # doctest: +SKIP
    ...     print(model.generate(hs.format_chat(model, "Tell me about your day."), max_new_tokens=30))
    >>> hyper.save("runs/hyper"); again = HyperSteer.load("runs/hyper", model)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from hooksteer.activations import pad_token_id, right_pad
from hooksteer.hypersteer.blocks import HyperBlock, check_block_supported
from hooksteer.hypersteer.config import HyperSteerConfig, HyperSteerConfigError
from hooksteer.hypersteer.data import (
    h_input_ids,
    pool_masks,
    pool_span,
    prompt_ids,
    resid_at_layer,
    steering_ids,
)
from hooksteer.hypersteer.deltas import prior_direction, site_vectors, with_norm
from hooksteer.hypersteer.gating import initial_gate, vectors_of
from hooksteer.vectors import SteeringSet, SteeringVector

FORMAT = "hooksteer.hypersteer"
FORMAT_VERSION = "2"  # 2: centred head (center_mean buffer saved), mean pooling, steering prompt last in-context
# (a config with prior_gain adds the trained scalar ``prior_gain`` to the weights; older files have neither)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class HyperSteerFileError(ValueError):
    """A saved hypernetwork is missing, corrupt, or made for another base model."""


def base_signature(model: Any) -> dict[str, Any]:
    """Dimensions of the base model that a saved H must match."""
    cfg = model.cfg
    return {"model_name": str(getattr(cfg, "model_name", "")), "d_model": int(cfg.d_model),
            "n_layers": int(cfg.n_layers), "d_vocab": int(cfg.d_vocab), "n_heads": int(cfg.n_heads)}


class HyperSteer(nn.Module):
    """Hypernetwork producing steering vectors for a frozen TransformerLens model.

    Args:
        model: the frozen base ``HookedTransformer`` (kept by reference, *not* as a submodule, so
            ``hyper.parameters()`` are H's own parameters only).
        config: architecture settings (``layer=None`` is resolved to ~2/3 of the depth).
        **overrides: shortcuts for config fields, e.g. ``HyperSteer(model, n_blocks=4)``.

    Raises:
        HyperSteerConfigError: invalid variant, layer out of range, ``n_blocks > n_layers`` ...
    """

    def __init__(self, model: Any, config: HyperSteerConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if not hasattr(model, "blocks") or not hasattr(model, "cfg"):
            raise TypeError(f"HyperSteer needs a TransformerLens HookedTransformer, got {type(model).__name__}")
        config = copy.deepcopy(config) if config is not None else HyperSteerConfig()
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise HyperSteerConfigError(f"unknown HyperSteerConfig field {key!r}")
            setattr(config, key, value)
        self.config = config.resolved(model)
        check_block_supported(model.cfg)
        self._base = [model]  # a list hides the base model from nn.Module registration
        self.signature = base_signature(model)
        cfg = model.cfg
        cross = self.config.variant == "cross_attention"
        self.embed = copy.deepcopy(model.embed)
        self.pos_embed = copy.deepcopy(model.pos_embed) if cfg.positional_embedding_type == "standard" else None
        self.blocks = nn.ModuleList(
            HyperBlock(model.blocks[i], cross_attention=cross, d_context=cfg.d_model)
            for i in range(self.config.n_blocks)
        )
        self.ln_final = copy.deepcopy(model.ln_final) if cfg.normalization_type is not None else nn.Identity()
        self.head = nn.Linear(cfg.d_model, cfg.d_model * self.config.n_sites)
        if self.config.gate == "shared":  # one [w | b] per site for every steering prompt
            self.gate_params = nn.Parameter(initial_gate((self.config.n_sites,), cfg.d_model))
        elif self.config.gate == "concept":  # H writes a [w | b] per site for each steering prompt
            self.gate_head = nn.Linear(cfg.d_model, (cfg.d_model + 1) * self.config.n_sites)
        if self.config.prior_gain is not None:
            self.prior_gain = nn.Parameter(torch.tensor(float(self.config.prior_gain)))
        if self.config.center:
            self.register_buffer("center_mean", torch.zeros(cfg.d_model))
            self.register_buffer("center_batches", torch.zeros((), dtype=torch.long))
        reference = next(model.parameters())
        self.to(device=reference.device, dtype=reference.dtype)  # new layers follow the base model's dtype
        self.requires_grad_(True)
        if self.config.freeze_blocks:
            for name, param in self.named_parameters():
                if name in self._frozen_copy_names():
                    param.requires_grad_(False)
        if not self.config.head_weight:
            self.head.weight.requires_grad_(False)  # stays zero: Δ = b + prior
        if self.config.freeze_embeddings:
            self.embed.requires_grad_(False)
            if self.pos_embed is not None:
                self.pos_embed.requires_grad_(False)
        generator = torch.Generator().manual_seed(self.config.seed)
        with torch.no_grad():
            self._init_new_layers(generator)

    def _init_new_layers(self, generator: torch.Generator) -> None:
        """Seeded init of the layers that are not copied (cross-attention, head) for reproducibility."""
        for block in self.blocks:
            if block.cross is None:
                continue
            for linear in (block.cross.W_Q, block.cross.W_K, block.cross.W_V, block.cross.W_O):
                bound = 1.0 / linear.in_features ** 0.5  # PyTorch's default nn.Linear range
                init = torch.empty(linear.weight.shape).uniform_(-bound, bound, generator=generator)
                linear.weight.copy_(init)
                linear.bias.zero_()
        std = self.config.head_init_std if self.config.head_weight else 0.0
        self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=generator) * std)
        self.head.bias.zero_()
        if self.config.gate == "concept":  # starts at λ = 1 for every prompt: constant steering
            self.gate_head.weight.zero_()
            self.gate_head.bias.copy_(initial_gate((self.config.n_sites,), self.gate_head.in_features).reshape(-1))

    # ------------------------------------------------------------------ properties
    @property
    def base_model(self) -> Any:
        """The frozen base model (not a submodule)."""
        return self._base[0]

    @property
    def layer(self) -> int:
        return int(self.config.layer)  # type: ignore[arg-type]

    @property
    def hook_name(self) -> str:
        return self.config.hook_name

    @property
    def needs_base_prompt(self) -> bool:
        return self.config.variant != "no_context"

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        h_ids: Int[Tensor, "batch pos"],
        h_lengths: Int[Tensor, " batch"],
        context: Float[Tensor, "batch ctx d_model"] | None = None,
        context_mask: Bool[Tensor, "batch ctx"] | None = None,
        pool_mask: Bool[Tensor, "batch pos"] | None = None,
    ) -> Float[Tensor, "batch d_model"] | Float[Tensor, "batch n_sites width"]:
        """Δ for each row: H's blocks, pooling (mean over ``pool_mask``, or the last real token), final norm,
        centring (``center=True``; in training mode the running mean is updated first) and head; ``(batch,
        n_sites, d_model)`` when ``config.layers`` names several sites; with gates (``config.gate``) every site's
        row is ``[z | w | b]``, ``(batch, n_sites, 2·d_model + 1)`` (:mod:`~hooksteer.hypersteer.gating`).

        Args:
            h_ids: right-padded input tokens of H (steering prompt; with the base prompt for ``in_context``).
            h_lengths: number of real tokens per row.
            context: base-model residual at layer ``layer`` over the base prompt (``cross_attention``).
            context_mask: True on real context tokens.
            pool_mask: True on the tokens mean pooling reads (default for the variants that read the steering
                prompt alone: :func:`~hooksteer.hypersteer.data.pool_span` of each row; required for
                ``in_context``).
        """
        features = self.pooled_features(h_ids, h_lengths, context, context_mask, pool_mask)
        if self.config.center:
            if self.training:
                self._update_center(features.detach())
            features = features - self.center_mean.to(features.dtype)
        delta = self.head(features)
        if self.config.n_sites > 1 or self.config.gated:
            delta = delta.view(delta.shape[0], self.config.n_sites, -1)
        if self.config.prior_gain is not None:
            delta = delta + self.prior_gain.to(features.dtype) * prior_direction(features)
        delta = with_norm(delta, self.config.delta_norm)
        if self.config.gate == "shared":
            gate = self.gate_params.to(delta.dtype).expand(delta.shape[0], -1, -1)
        elif self.config.gate == "concept":
            gate = self.gate_head(features).view(delta.shape[0], self.config.n_sites, -1)
        else:
            return delta
        return torch.cat([delta, gate], dim=-1)

    def pooled_features(
        self,
        h_ids: Int[Tensor, "batch pos"],
        h_lengths: Int[Tensor, " batch"],
        context: Float[Tensor, "batch ctx d_model"] | None = None,
        context_mask: Bool[Tensor, "batch ctx"] | None = None,
        pool_mask: Bool[Tensor, "batch pos"] | None = None,
    ) -> Float[Tensor, "batch d_model"]:
        """What the head reads, before centring: H's blocks, pooling and final norm (arguments as :meth:`forward`)."""
        if self.config.variant == "cross_attention" and context is None:
            raise ValueError("the cross_attention variant needs the base prompt's activations as context")
        if context is not None and context.shape[-1] != self.signature["d_model"]:
            raise ValueError(f"context has width {context.shape[-1]} but the base model has "
                             f"d_model={self.signature['d_model']}: pass the base model's layer-{self.layer} residual")
        if bool((h_lengths < 1).any()):
            raise ValueError("every row of h_ids needs at least one token")
        x = self.embed(h_ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed(h_ids)
        for block in self.blocks:
            x = block(x, context, context_mask)
        lengths = h_lengths.to(x.device)
        if self.config.pooling == "mean":
            if pool_mask is None:
                pool_mask = self._default_pool_mask(lengths, x.shape[1])
            weights = pool_mask.to(device=x.device, dtype=x.dtype)
            if bool((weights.sum(1) == 0).any()):
                raise ValueError("pool_mask selects no token in some row")
            pooled = (x * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
        else:
            pooled = x[torch.arange(x.shape[0], device=x.device), lengths - 1]
        return self.ln_final(pooled)

    def _default_pool_mask(self, lengths: Tensor, width: int) -> Tensor:
        """Pooled tokens when H reads the steering prompt alone (see :func:`~hooksteer.hypersteer.data.pool_span`)."""
        if self.config.variant == "in_context":
            raise ValueError("in_context mean pooling needs pool_mask (which tokens are the steering prompt's)")
        spans = [pool_span(self.base_model, int(n)) for n in lengths.tolist()]
        return pool_masks(spans, width).to(lengths.device)

    @torch.no_grad()
    def _update_center(self, features: Tensor) -> None:
        """Running mean of the head's input over training batches (the first batch sets it)."""
        batch_mean = features.float().mean(0)
        if int(self.center_batches) == 0:
            self.center_mean.copy_(batch_mean)
        else:
            momentum = self.config.center_momentum
            self.center_mean.mul_(1 - momentum).add_(batch_mean, alpha=momentum)
        self.center_batches += 1

    # ------------------------------------------------------------------ inference
    def _prepare(self, steering_prompt: str | Sequence[str], base_prompt: str | Sequence[str] | None
                 ) -> tuple[list[str], list[str] | None, bool]:
        single = isinstance(steering_prompt, str) and (base_prompt is None or isinstance(base_prompt, str))
        steer = [steering_prompt] if isinstance(steering_prompt, str) else list(steering_prompt)
        if base_prompt is None:
            if self.needs_base_prompt:
                raise ValueError(f"the {self.config.variant} variant needs base_prompt (the prompt being steered)")
            return steer, None, single
        base = [base_prompt] if isinstance(base_prompt, str) else list(base_prompt)
        if len(steer) == 1 and len(base) > 1:
            steer = steer * len(base)
        if len(base) == 1 and len(steer) > 1:
            base = base * len(steer)
        if len(steer) != len(base):
            raise ValueError(f"{len(steer)} steering prompts but {len(base)} base prompts")
        if not steer:
            raise ValueError("no steering prompt given")
        return steer, base, single

    @torch.no_grad()
    def vectors(
        self, steering_prompt: str | Sequence[str], base_prompt: str | Sequence[str] | None = None
    ) -> Float[Tensor, "batch d_model"] | Float[Tensor, "batch n_sites d_model"]:
        """Per-row vectors ``(batch, d_model)`` in one batched pass (a single string broadcasts); ``(batch, n_sites,
        d_model)`` with several sites.

        Example:
            >>> deltas = hyper.vectors("Talk about cats.", ["Hi!", "Describe Paris."])   # doctest: +SKIP
            >>> hook = hs.add_vector(deltas, 4.0)   # each row of a 2-prompt batch gets its own vector  # doctest: +SKIP

        With gates (``config.gate``) these are the gated vectors ``z`` alone; :meth:`steering_params` adds the gates.
        """
        return vectors_of(self.steering_params(steering_prompt, base_prompt), self.signature["d_model"],
                          self.config.n_sites)

    @torch.no_grad()
    def steering_params(
        self, steering_prompt: str | Sequence[str], base_prompt: str | Sequence[str] | None = None
    ) -> Float[Tensor, "batch d_model"] | Float[Tensor, "batch n_sites width"]:
        """Everything H writes per row (:meth:`forward` on the texts): the vectors, and with gates ``[z | w | b]``
        per site (:func:`~hooksteer.hypersteer.gating.site_steering_hooks` turns it into hooks).

        Example:
            >>> params = hyper.steering_params("Talk about cats.")    # doctest: +SKIP
        """
        return self._run_on_texts(steering_prompt, base_prompt, self)

    @torch.no_grad()
    def head_inputs(
        self, steering_prompt: str | Sequence[str], base_prompt: str | Sequence[str] | None = None
    ) -> Float[Tensor, "batch d_model"]:
        """The head's input for each row before centring (:meth:`pooled_features` on the texts), e.g. to fit the
        head in closed form (:func:`hooksteer.hypersteer.ridge.fit_head_ridge`).

        Example:
            >>> hyper.head_inputs(["Talk about cats.", "Talk about dogs."]).shape   # doctest: +SKIP
            torch.Size([2, 576])
        """
        return self._run_on_texts(steering_prompt, base_prompt, self.pooled_features)

    def _run_on_texts(self, steering_prompt: str | Sequence[str], base_prompt: str | Sequence[str] | None,
                      function: Any) -> Tensor:
        """Encode the texts as :meth:`forward` expects and apply ``function`` (forward or pooled_features) in
        eval mode."""
        steer, base, _ = self._prepare(steering_prompt, base_prompt)
        model, cfg = self.base_model, self.config
        pad = pad_token_id(model)
        steer_ids = [steering_ids(model, text, cfg) for text in steer]
        base_ids = [prompt_ids(model, text, cfg) for text in base] if base is not None else None
        encoded = [h_input_ids(s, base_ids[i] if base_ids else None, cfg, model) for i, s in enumerate(steer_ids)]
        rows = [ids for ids, _ in encoded]
        h_ids = right_pad(rows, pad).to(self.device)
        h_lengths = torch.tensor([len(r) for r in rows], device=self.device)
        pool_mask = pool_masks([span for _, span in encoded], h_ids.shape[1]).to(self.device)
        context = context_mask = None
        if cfg.variant == "cross_attention":
            assert base_ids is not None
            context = resid_at_layer(model, right_pad(base_ids, pad), self.layer).to(self.device)
            lengths = torch.tensor([len(b) for b in base_ids], device=self.device)
            context_mask = torch.arange(context.shape[1], device=self.device)[None] < lengths[:, None]
        was_training = self.training
        self.eval()
        try:
            return function(h_ids, h_lengths, context, context_mask, pool_mask).float()
        finally:
            self.train(was_training)

    def vector(
        self, steering_prompt: str | Sequence[str], base_prompt: str | Sequence[str] | None = None
    ) -> SteeringVector | SteeringSet | list[SteeringVector] | list[SteeringSet]:
        """Steering vector(s) at :attr:`hook_name`: one for a string, a list for a list of prompts (with several
        sites, a :class:`~hooksteer.vectors.SteeringSet` holding one vector per site instead of each vector).

        ``base_prompt`` is required for ``in_context`` and ``cross_attention`` (ignored by
        ``no_context``); the vector is computed once and held constant while generating.

        Example:
            >>> v = hyper.vector("Mention volcanoes.", "Tell me about your day.")   # doctest: +SKIP
        """
        if self.config.gated:
            raise ValueError(f"this HyperSteer writes gated vectors (gate={self.config.gate!r}), which a constant "
                             "SteeringVector cannot hold; steer with hooksteer.hypersteer.steer_with(hyper, "
                             "steering_prompt) instead")
        steer, base, single = self._prepare(steering_prompt, base_prompt)
        deltas = self.vectors(steer, base).cpu()
        out = []
        for i, delta in enumerate(deltas):
            source = {"steering_prompt": steer[i], "variant": self.config.variant, "positions": self.config.positions,
                      "n_blocks": self.config.n_blocks, "base_model": self.signature["model_name"]}
            if base is not None and self.needs_base_prompt:
                source["base_prompt"] = base[i]
            out.append(site_vectors(self.config.hook_names, delta, method="hypersteer", source=source))
        return out[0] if single else out

    # ------------------------------------------------------------------ persistence
    def _saved_buffers(self) -> dict[str, Tensor]:
        """Buffers that are learned state (the centring mean), unlike causal masks and rotary tables."""
        return {name: b for name, b in self.named_buffers() if name in ("center_mean", "center_batches")}

    def _frozen_copy_names(self) -> set[str]:
        """Parameters that stay equal to the base model's (``freeze_blocks``): copied blocks and embeddings,
        not the new cross-attention sub-layers."""
        if not self.config.freeze_blocks:
            return set()
        return {name for name, _ in self.named_parameters()
                if name.startswith(("embed.", "pos_embed.")) or (name.startswith("blocks.") and ".cross." not in name)}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """H's parameters and its centring statistics (other buffers, e.g. rotary tables, are rebuilt; frozen
        copies of the base model's weights are rebuilt from it on load)."""
        frozen = self._frozen_copy_names()
        state = {name: p.detach().cpu().contiguous() for name, p in self.named_parameters() if name not in frozen}
        state.update({name: b.detach().cpu().contiguous() for name, b in self._saved_buffers().items()})
        return state

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created). Returns it."""
        from hooksteer.io import atomic_write_files

        directory = Path(directory)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "base_model": self.signature,
                "config": self.config.to_dict()}
        state, weights_meta = self.trainable_state_dict(), {"format": FORMAT, "d_model": str(self.signature["d_model"])}
        atomic_write_files({  # both staged on disk before either is renamed: never new weights with an old config
            directory / WEIGHTS_FILE: lambda tmp: save_file(state, str(tmp), metadata=weights_meta),
            directory / CONFIG_FILE: json.dumps(meta, indent=2).encode(),
        })
        return directory

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Overwrite H's parameters with those saved in ``directory/model.safetensors`` (same architecture)."""
        weights_path = Path(directory) / WEIGHTS_FILE
        if not weights_path.is_file():
            raise HyperSteerFileError(f"no HyperSteer {WEIGHTS_FILE} in {directory}")
        try:
            with safe_open(str(weights_path), framework="pt") as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise HyperSteerFileError(f"{weights_path} is not a valid safetensors file (corrupt or truncated?): "
                                      f"{error}") from error
        frozen = self._frozen_copy_names()
        expected = {**{n: p for n, p in self.named_parameters() if n not in frozen}, **self._saved_buffers()}
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise HyperSteerFileError(f"{weights_path} does not match this HyperSteer architecture: "
                                      f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, param in expected.items():
                tensor = tensors[name]
                if tensor.shape != param.shape:
                    raise HyperSteerFileError(f"{weights_path}: {name} has shape {tuple(tensor.shape)}, "
                                              f"expected {tuple(param.shape)} (made for another model?)")
                if not bool(torch.isfinite(tensor.float()).all()):
                    raise HyperSteerFileError(f"{weights_path}: {name} contains NaN or infinity")
                param.copy_(tensor.to(param.dtype))

    @classmethod
    def load(cls, directory: str | os.PathLike, model: Any) -> HyperSteer:
        """Load a hypernetwork saved with :meth:`save` for the base ``model`` (safetensors only, no pickle).

        Raises:
            HyperSteerFileError: missing/corrupt files, or a file made for a model with another
                ``d_model`` / ``n_layers`` / vocabulary.
        """
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise HyperSteerFileError(f"no HyperSteer {path.name} in {directory}")
        try:
            meta = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise HyperSteerFileError(f"{config_path} is not valid JSON (corrupt?): {error}") from error
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise HyperSteerFileError(f"{config_path} is not a HyperSteer config (format {FORMAT!r} expected)")
        version = str(meta.get("format_version", ""))
        if version not in ("1", FORMAT_VERSION):
            raise HyperSteerFileError(f"{config_path} has format version {version!r}; this hooksteer reads "
                                      f"versions '1' and {FORMAT_VERSION!r}")
        saved, current = meta.get("base_model", {}), base_signature(model)
        if not isinstance(saved, dict) or not isinstance(meta.get("config"), dict):
            raise HyperSteerFileError(f"{config_path}: 'base_model' and 'config' must be JSON objects, got "
                                      f"{type(saved).__name__} and {type(meta.get('config')).__name__}")
        for key in ("d_model", "n_layers", "d_vocab"):
            if saved.get(key) != current[key]:
                raise HyperSteerFileError(
                    f"{directory} was trained for a base model with {key}={saved.get(key)}, but this model has "
                    f"{key}={current[key]}: it was made for another model"
                )
        try:
            config = HyperSteerConfig.from_dict(meta["config"], format_version=version)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise HyperSteerFileError(f"{config_path} has an invalid config: {error}") from error
        try:
            hyper = cls(model, config)
        except (TypeError, ValueError) as error:  # HyperSteerConfigError included
            raise HyperSteerFileError(f"{config_path} has an invalid config: {error}") from error
        hyper.load_weights(directory)
        return hyper
