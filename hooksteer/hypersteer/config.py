"""Settings of a HyperSteer hypernetwork and its training run, saved as JSON beside the weights.

Example:
    >>> cfg = HyperSteerConfig(variant="cross_attention", n_blocks=2, layer=2)
    >>> HyperSteerConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> cfg.hook_name
    'blocks.2.hook_resid_post'
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

VARIANTS: tuple[str, ...] = ("no_context", "in_context", "cross_attention")
ACTIVATION_CACHE_MODES: tuple[str, ...] = ("cpu", "device", "off")
POOLING_MODES: tuple[str, ...] = ("last", "mean")
LOSSES: tuple[str, ...] = ("distill", "ce")
H_LAYOUTS: tuple[str, ...] = ("steering_last", "steering_first")
STEERED_POSITIONS: tuple[str, ...] = ("all", "prompt", "answer")
TOKEN_WEIGHTS: tuple[str, ...] = ("uniform", "teacher_shift")
GATE_MODES: tuple[str, ...] = ("none", "shared", "concept")

Variant = Literal["no_context", "in_context", "cross_attention"]


class HyperSteerConfigError(ValueError):
    """A HyperSteer setting is invalid, or does not fit the base model."""


def default_layer(n_layers: int) -> int:
    """Injection layer used when none is given: about two thirds of the depth (20 of 30 for SmolLM2).

    Example:
        >>> default_layer(30), default_layer(3)
        (20, 2)
    """
    return min(n_layers - 1, max(0, round(2 * n_layers / 3)))


@dataclass
class HyperSteerConfig:
    """Architecture of the hypernetwork H and settings of its training run.

    Architecture:
        variant: ``"no_context"`` H(s), ``"in_context"`` H(s ⊕ x) or ``"cross_attention"`` (H attends to the
            base model's layer-``layer`` residual stream over the base prompt x).
        layer: block whose ``hook_resid_post`` receives Δ (``None``: about 2/3 of the depth, resolved by
            :meth:`resolved`); with ``layers``, the lowest of them.
        layers: several injection sites, one Δ each (``None``: ``layer`` alone). H then writes a
            ``(n_sites, d_model)`` vector per steering prompt, ``Δ_l`` added at ``blocks.{l}.hook_resid_post`` for
            every ``l`` in ``layers`` (strictly increasing), like A-PSR's per-layer vectors; training runs the blocks
            above ``min(layers)`` only. Needs ``prior_gain=None``; ``delta_norm`` fixes each site's norm.
        n_blocks: number of H blocks, copied from the base model's blocks ``0..n_blocks-1``.
        head_init_std: std of the output head's initial weights (bias starts at 0); small, so training
            starts near "no steering". 0 gives an exactly-zero head.
        freeze_embeddings: keep H's copy of the token (and position) embeddings fixed.
        freeze_blocks: keep H's copied blocks *and* embeddings fixed at the base model's weights (a new
            cross-attention sub-layer, the final norm and the head still train). H's features are then the
            base model's own layer-``n_blocks`` reading of the steering prompt; the frozen copies are not
            saved (they are rebuilt from the base model on load).
        pooling: what the head reads: ``"mean"`` (default) — the mean over the steering prompt's tokens
            (after H's blocks; the first token, an attention sink, is left out when there are others), so the
            concept's own words reach the head even when the prompt ends in template tokens ("... about X."),
            or ``"last"`` — H's last real input token (the paper's choice; for a templated steering prompt
            that is the same "." for every concept).
        center: centre the head's input: Δ = b + W·(x − μ), μ a running mean of x over the training
            batches (a buffer saved with the weights). The shared part of every vector then lives in the
            bias b, and W only sees what differs between steering prompts, so one shared direction cannot
            absorb the concept-specific signal.
        center_momentum: weight of each training batch in the running mean μ (the first batch sets μ).
        prior_gain: add a *direction prior* to the head, Δ = b + W·(x − μ) + g·(x − μ)/‖x − μ‖, with g a trained
            scalar starting at ``prior_gain`` (``None``: no prior term; needs ``center``). With ``n_blocks=0`` the
            head reads the mean token embedding of the steering prompt, so a new concept's vector starts along
            its own words' embedding direction — which lines up with the concept-specific part of the distilled
            per-concept vectors (``benchmarks/hypersteer_probe.py``), and needs no training concepts to learn.
        head_weight: train the head's weight W. ``False`` keeps W at zero, so Δ = b + g·(x − μ)/‖x − μ‖: a
            hypernetwork of d_model + 1 parameters (needs ``prior_gain``) that cannot memorise training concepts.
        h_layout: ``in_context`` only: ``"steering_last"`` (default; H reads base prompt ⊕ steering prompt,
            so the steering prompt is what H's last tokens read) or ``"steering_first"`` (format version 1).
        positions: where Δ is added, in training and by default at inference: ``"all"`` (every token, prompt and
            answer), ``"prompt"`` (the base prompt's tokens only; the answer reads the vector through
            attention, as it reads a steering prompt placed in its context) or ``"answer"`` (every position that
            predicts an answer token: the prompt's last token and the answer; the instruction is read unsteered,
            as A-PSR steers the response only).
        delta_norm: fix every Δ's L2 norm to this value (``None``: the norm is learned). H, or an oracle's free
            vector, then only chooses a *direction*, trained at the magnitude it will steer with. A distilled
            vector left free ends short (norm 16–25 at layer 20 of SmolLM2 after the benchmarks' training), far
            below the magnitude that steers best (0.2–0.3 × the residual norm); trained at such a length it fits the
            training prompts better, but measured on this model neither new prompts nor the steering score
            (``benchmarks/oracle_forms.py``, README).
        gate: per-token gates at every site, Δ_t = λ(h_t)·z with λ(h) = ReLU(b + mean(w ⊙ h/rms(h))) read from each token's
            own activation (A-PSR's gate; :mod:`hooksteer.hypersteer.gating`): ``"none"`` (default; a constant
            vector), ``"shared"`` (one trained gate per site for every steering prompt) or ``"concept"`` (a gate
            per steering prompt: H's gate head writes it beside the vector). Gates start at w = 0, b = 1, i.e. at
            constant steering. Needs ``prior_gain=None``.

    Objective:
        loss: ``"distill"`` (default) — KL from the prompt-steered model's next-token distributions to the
            steered student's, on the prompted model's own answer (train on
            :class:`~hooksteer.distill.DistillRecord`); ``"ce"`` — cross-entropy of teacher targets
            (train on :class:`~hooksteer.data.schema.SteeringExample`).
        token_weights: ``loss="distill"`` only: ``"uniform"`` (default) — every answer token counts the same;
            ``"teacher_shift"`` — each token weighs in proportion to how far the steering prompt moved the
            prediction there, KL(teacher ‖ unsteered model) (weights normalised to mean 1 per batch), so the
            tokens where prompting changes the answer drive the vector rather than the generic ones. The
            reported eval KL (:func:`~hooksteer.hypersteer.trainer.mean_loss`) stays unweighted.

    Data:
        chat_template: wrap base prompts in the base model's chat template (when it has one).
        append_eos: end a target with the tokenizer's EOS token when the teacher's own answer ended there
            (``SteeringExample.finished``); targets cut at a token limit never get one.
        max_steering_tokens / max_prompt_tokens / max_target_tokens: truncation limits (steering
            prompts and targets keep their start, base prompts keep their end).

    Optimisation (AdamW on H only, linear warm-up then linear decay to 0):
        lr (H's blocks and embeddings), head_lr (the head's weight; ``None``: ``lr``), head_bias_lr (the head's
        bias, i.e. the part of Δ shared by all steering prompts, which must grow to tens of units of norm;
        ``None``: ``lr``), weight_decay, batch_size (per process), epochs, max_steps (overrides epochs),
        warmup_steps, grad_clip, seed, mixed_precision (Accelerate: ``"no"``, ``"fp16"``, ``"bf16"``).

    Engineering:
        activation_cache: where the frozen layer-``layer`` activations of each example are kept after
            their first use (``"cpu"``, ``"device"`` or ``"off"``).
        start_above_site: run only blocks ``layer+1..`` in training (exactly equal to a full forward
            with the vector hooked in, but skips the frozen lower blocks). ``False`` runs the full
            forward with a steering hook every step (for comparison).
        eval_every / save_every / log_every: in optimizer steps (0 = only at the end).
        keep_checkpoints: how many ``checkpoint-NNNNNN`` folders to keep (0 = all).
    """

    variant: Variant = "cross_attention"
    layer: int | None = None
    layers: list[int] | None = None
    n_blocks: int = 2
    head_init_std: float = 1e-3
    freeze_embeddings: bool = False
    freeze_blocks: bool = False
    pooling: str = "mean"
    center: bool = True
    center_momentum: float = 0.05
    prior_gain: float | None = None
    head_weight: bool = True
    h_layout: str = "steering_last"
    positions: str = "all"
    delta_norm: float | None = None
    gate: str = "none"
    loss: str = "distill"
    token_weights: str = "uniform"

    chat_template: bool = True
    append_eos: bool = True
    max_steering_tokens: int = 64
    max_prompt_tokens: int = 256
    max_target_tokens: int = 128

    lr: float = 8e-5
    head_lr: float | None = None
    head_bias_lr: float | None = 1e-2
    weight_decay: float = 0.0
    batch_size: int = 12
    epochs: int = 3
    max_steps: int | None = None
    warmup_steps: int = 0
    grad_clip: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"

    activation_cache: str = "cpu"
    start_above_site: bool = True
    eval_every: int = 100
    save_every: int = 0
    log_every: int = 10
    keep_checkpoints: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ derived
    @property
    def hook_name(self) -> str:
        """TransformerLens address of the (lowest) injection site."""
        if self.layer is None:
            raise HyperSteerConfigError("layer is not resolved yet; call config.resolved(model) first")
        return f"blocks.{self.layer}.hook_resid_post"

    @property
    def sites(self) -> list[int]:
        """Every layer that receives a Δ, lowest first (``[layer]`` unless ``layers`` is set).

        Example:
            >>> HyperSteerConfig(layers=[3, 5]).sites
            [3, 5]
        """
        if self.layers:
            return [int(layer) for layer in self.layers]
        if self.layer is None:
            raise HyperSteerConfigError("layer is not resolved yet; call config.resolved(model) first")
        return [int(self.layer)]

    @property
    def hook_names(self) -> list[str]:
        """TransformerLens addresses of every injection site (see :attr:`sites`)."""
        return [f"blocks.{layer}.hook_resid_post" for layer in self.sites]

    @property
    def gated(self) -> bool:
        """Whether every site's steering has a per-token gate (``gate`` is not ``"none"``)."""
        return self.gate != "none"

    @property
    def n_sites(self) -> int:
        """How many sites receive a Δ (1 unless ``layers`` names several)."""
        return len(self.layers) if self.layers else 1

    def resolved(self, model: Any) -> HyperSteerConfig:
        """A copy with ``layer`` filled in for ``model``, after checking every setting against it.

        Raises:
            HyperSteerConfigError: unknown variant, layer out of range, ``n_blocks`` > ``n_layers`` ...
        """
        n_layers = int(model.cfg.n_layers)
        layers = self.layers
        if layers is not None:
            self._check_layers()
            layers = [int(layer) for layer in layers]
        if self.layer is not None:
            layer = self.layer
        else:
            layer = layers[0] if layers else default_layer(n_layers)
        resolved = dataclasses.replace(self, layer=layer, layers=layers)
        resolved.validate(n_layers)
        return resolved

    def _check_layers(self) -> None:
        layers = self.layers
        if not isinstance(layers, list | tuple) or not layers or any(
                isinstance(x, bool) or not isinstance(x, int) for x in layers):
            raise HyperSteerConfigError(f"layers must be a non-empty list of layer indices or None, got {layers!r}")
        if any(b <= a for a, b in zip(layers, layers[1:], strict=False)):
            raise HyperSteerConfigError(f"layers must be strictly increasing (each site once), got {list(layers)}")

    def validate(self, n_layers: int | None = None) -> None:
        """Raise :class:`HyperSteerConfigError` for an invalid setting (model-dependent checks need n_layers)."""
        if self.layers is not None:
            self._check_layers()
            if self.layer is not None and self.layer != self.layers[0]:
                raise HyperSteerConfigError(f"layer={self.layer} must be the lowest of layers={list(self.layers)} "
                                            "(the site whose residual training starts from), or None")
            if len(self.layers) > 1 and self.prior_gain is not None:
                raise HyperSteerConfigError("prior_gain works with one site only; with several layers use "
                                            "prior_gain=None")
        if self.variant not in VARIANTS:
            raise HyperSteerConfigError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.gate not in GATE_MODES:
            raise HyperSteerConfigError(f"gate must be one of {GATE_MODES}, got {self.gate!r}")
        if self.gate != "none" and self.prior_gain is not None:
            raise HyperSteerConfigError("gates need prior_gain=None (the direction prior writes an ungated vector)")
        if self.pooling not in POOLING_MODES:
            raise HyperSteerConfigError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.positions not in STEERED_POSITIONS:
            raise HyperSteerConfigError(f"positions must be one of {STEERED_POSITIONS}, got {self.positions!r}")
        if self.loss not in LOSSES:
            raise HyperSteerConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.token_weights not in TOKEN_WEIGHTS:
            raise HyperSteerConfigError(f"token_weights must be one of {TOKEN_WEIGHTS}, got {self.token_weights!r}")
        if self.token_weights != "uniform" and self.loss != "distill":
            raise HyperSteerConfigError(f"token_weights={self.token_weights!r} needs loss='distill' (the weights "
                                        "compare the teacher's distributions with the unsteered model's)")
        if self.delta_norm is not None and (isinstance(self.delta_norm, bool) or not (
                isinstance(self.delta_norm, int | float) and math.isfinite(self.delta_norm) and self.delta_norm > 0)):
            raise HyperSteerConfigError(f"delta_norm must be a positive number or None, got {self.delta_norm!r}")
        if self.delta_norm is not None and self.head_init_std == 0:
            raise HyperSteerConfigError("delta_norm needs head_init_std > 0: an exactly-zero head gives Δ = 0, which "
                                        "has no direction to rescale")
        if self.h_layout not in H_LAYOUTS:
            raise HyperSteerConfigError(f"h_layout must be one of {H_LAYOUTS}, got {self.h_layout!r}")
        if not 0 < self.center_momentum <= 1:
            raise HyperSteerConfigError(f"center_momentum must be in (0, 1], got {self.center_momentum!r}")
        if self.activation_cache not in ACTIVATION_CACHE_MODES:
            raise HyperSteerConfigError(
                f"activation_cache must be one of {ACTIVATION_CACHE_MODES}, got {self.activation_cache!r}"
            )
        minimum_blocks = 1 if self.variant == "cross_attention" else 0
        if not isinstance(self.n_blocks, int) or self.n_blocks < minimum_blocks:
            raise HyperSteerConfigError(
                f"n_blocks must be an integer >= {minimum_blocks} for variant {self.variant!r}, got {self.n_blocks!r}"
            )
        for name in ("batch_size", "max_steering_tokens", "max_prompt_tokens", "max_target_tokens"):
            if int(getattr(self, name)) < 1:
                raise HyperSteerConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("epochs", "warmup_steps", "eval_every", "save_every", "log_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 0:
                raise HyperSteerConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise HyperSteerConfigError(f"max_steps must be >= 1 or None, got {self.max_steps!r}")
        for name in ("lr", "head_lr", "head_bias_lr"):
            value = getattr(self, name)
            if (value is not None or name == "lr") and not (isinstance(value, int | float) and value > 0):
                raise HyperSteerConfigError(f"{name} must be > 0, got {value!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise HyperSteerConfigError(f"grad_clip must be > 0 (or None for no clipping), got {self.grad_clip!r}")
        if self.prior_gain is not None:
            if not (isinstance(self.prior_gain, int | float) and math.isfinite(self.prior_gain)):
                raise HyperSteerConfigError(f"prior_gain must be a finite number or None, got {self.prior_gain!r}")
            if not self.center:
                raise HyperSteerConfigError("prior_gain needs center=True (the prior is the centred feature direction)")
        if not self.head_weight and self.prior_gain is None:
            raise HyperSteerConfigError("head_weight=False needs prior_gain: without W and the prior every steering "
                                        "prompt would get the same vector")
        if self.head_init_std < 0:
            raise HyperSteerConfigError(f"head_init_std must be >= 0, got {self.head_init_std!r}")
        if n_layers is None:
            return
        for layer in [*([self.layer] if self.layer is not None else []), *(self.layers or [])]:
            if not 0 <= layer < n_layers:
                raise HyperSteerConfigError(
                    f"layer {layer} is out of range: the base model has {n_layers} layers (0..{n_layers - 1})"
                )
        if self.n_blocks > n_layers:
            raise HyperSteerConfigError(
                f"n_blocks={self.n_blocks} exceeds the base model's {n_layers} layers: H is a truncated copy "
                "of the base model, so it can have at most n_layers blocks"
            )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, format_version: str | None = None) -> HyperSteerConfig:
        """Build from a dict, rejecting unknown keys with the list of valid ones.

        ``format_version="1"`` (hypernetworks saved before centring existed) fills the fields added since
        with what those hypernetworks did: no centring, steering prompt first, last-token pooling.
        """
        if not isinstance(data, dict):
            raise HyperSteerConfigError(f"a HyperSteer config must be a JSON object, got {type(data).__name__}")
        if format_version == "1":
            data = {"center": False, "h_layout": "steering_first", "pooling": "last", "loss": "ce",
                    "head_bias_lr": None, **data}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HyperSteerConfigError(f"unknown HyperSteerConfig field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the settings as JSON, atomically (:func:`hooksteer.io.atomic_write_json`)."""
        from hooksteer.io import atomic_write_json

        return atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> HyperSteerConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise HyperSteerConfigError(f"cannot read a HyperSteer config from {path}: {error}") from error
        return cls.from_dict(data)
