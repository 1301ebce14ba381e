"""PSR models: per-token steering ``h_t ← h_t + α · λ(h_t) · z`` with ``λ(h) = ReLU(w·h + b)``.

* **S-PSR** (``variant="single"``): one (w, b, z) at ``blocks.{layer}.hook_resid_post``; trained to fit
  the *cumulative* teacher change Δ_layer there.
* **A-PSR** (``variant="adaptive"``): one (w, b, z) per layer in ``layers``, all active together. With
  the MSE loss every layer's steered activation (which already carries the PSRs below it, propagated
  through the frozen blocks) is matched to the prompted activation, so each layer's term fits the
  **layer-local** change: the part of Δ_l that the steered layers below do not already produce.

λ is read from each token's **own** (unsteered-at-this-site) activation through a :class:`PSRHook` (an
:class:`hooksteer.hooks.AddGated` with a :class:`hooksteer.hooks.ReluGate`), so during KV-cached
``generate`` every new token gets its coefficient from its own activation when it is produced.

Where the PSR acts (``PSRConfig.positions``), per row of a left-padded batch:

* ``"response"`` (default): the last ``template_tokens`` prompt tokens (the chat-template tokens that open
  the assistant turn, the same in ``x`` and ``x'``) and every generated token. The last prompt token
  predicts the first answer token, so that token is steered too.
* ``"generated"``: generated tokens only (the first answer token is *not* steered).
* ``"after_sink"``: every position from ``sink_tokens`` on (the whole prompt except the attention sink).
* ``"all"``, or explicit absolute positions.

Files: ``save(dir)`` writes ``psr_config.json`` + ``psr.safetensors``; ``PSR.load(dir)`` checks them.

Example:
    >>> psr = PSR(PSRConfig(layers=[2], d_model=32))                                  # doctest: +SKIP
    >>> with psr.steer(model, alpha=2.0):                                             # doctest: +SKIP
    ...     model.generate("Hello", max_new_tokens=10)
    >>> psr.save("runs/psr"); psr2 = PSR.load("runs/psr")                            # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooksteer.hooks import (
    PositionSpec,
    PositionTracker,
    ReluGate,
    apply_steering_hooks,
    check_hook_name,
    finite_scalar,
)
from hooksteer.psr.hooks import INFERENCE_MODES, PSRHook, RowScaledGate, steer_mask
from hooksteer.psr.teacher import hook_name
from hooksteer.vectors import check_finite

__all__ = ["PSRConfig", "PSR", "PSRFileError", "PSRHook", "RowScaledGate", "CONFIG_FILE", "WEIGHTS_FILE", "steer_mask"]

CONFIG_FILE = "psr_config.json"
WEIGHTS_FILE = "psr.safetensors"
Variant = Literal["single", "adaptive"]
LossName = Literal["mse", "likelihood", "distill"]
LOSSES: tuple[str, ...] = ("mse", "likelihood", "distill")
INITS: tuple[str, ...] = ("fit", "mean_delta", "random")
POSITION_MODES: tuple[str, ...] = INFERENCE_MODES  # the named modes; "generated+K[:M]" is for inference only


class PSRFileError(ValueError):
    """A PSR folder that is missing, corrupt or made for another model."""


@dataclass
class PSRConfig:
    """Architecture and training settings of one PSR (saved as JSON beside the weights).

    Args:
        layers: block indices steered at ``hook_resid_post`` (S-PSR: exactly one; A-PSR: any set, e.g. all).
        d_model: residual width of the base model.
        variant: ``"single"`` (S-PSR) or ``"adaptive"`` (A-PSR).
        loss: ``"mse"`` (activation matching), ``"likelihood"`` (−log p(y'|x)) or ``"distill"`` (KL to the
            prompted model's next-token distributions, top-k cached; pairs from
            :func:`hooksteer.psr.teacher.pairs_from_distill`).
        init: ``"fit"`` (default): layer by layer in one steered pass, each layer's (w, b, z) is fitted to
            its *local* residual A_l(x'y') − A_l(xy' steered by the PSR layers below): rank-1 direction,
            ridge least-squares gate, then ``local_steps`` Adam steps on that local MSE. ``"mean_delta"``:
            constant steering (w = 0, b = 1, z_l = mean local residual) — the constant-vector floor.
            ``"random"``: small random w, z = mean local residual.
        local_steps: Adam steps per layer on the local MSE during ``init="fit"`` (cheap: cached activations).
        fit_ridge: ridge of the gate's least-squares fit, relative to the mean eigenvalue of HᵀH.
        steps / lr / batch_size / weight_decay / seed: the end-to-end AdamW loop on ``loss`` after the init.
        train_from_layer: end-to-end training updates only the PSR layers ≥ this (``None``: all); the lower
            layers keep their initialisation and their steered activations are cached once (cost control).
        held_out_fraction: share of the base prompts whose responses are held out for early stopping and
            the generalisation numbers (0 = none).
        eval_every / patience: held-out evaluation interval (steps) and how many evaluations without
            improvement stop training; the best held-out state is kept.
        regulariser: weight of max(0, 1 − Σ_t λ_t) per example and layer (0 = off; the paper drops it for
            AxBench). ``auto_regulariser``: weight switched on when a layer's gate is dead on some training
            example (Σ_t λ_t = 0) while ``regulariser`` is 0 (0 = never).
        train_alpha: α used while training (1.0).
        positions: where λ·z is added (see the module docstring): ``"response"`` (default),
            ``"generated"``, ``"after_sink"``, ``"all"``. Training steers the same positions.
        template_tokens: prompt tokens steered by ``"response"`` (``None``: set from the teacher records,
            :func:`hooksteer.psr.teacher.template_suffix_length`).
        sink_tokens: leading attention-sink tokens left alone by ``"after_sink"``.
        concept_id / steering_prompt / model_name: provenance, not used by the maths.
    """

    layers: list[int]
    d_model: int
    variant: Variant = "single"
    loss: LossName = "mse"
    steps: int = 100
    lr: float = 1e-2
    batch_size: int = 8
    weight_decay: float = 0.0
    regulariser: float = 0.0
    auto_regulariser: float = 1.0
    train_alpha: float = 1.0
    seed: int = 0
    positions: str = "response"
    template_tokens: int | None = None
    sink_tokens: int = 1
    init: str = "fit"
    local_steps: int = 150
    fit_ridge: float = 1e-2
    train_from_layer: int | None = None
    held_out_fraction: float = 0.0
    eval_every: int = 10
    patience: int = 3
    concept_id: str = ""
    steering_prompt: str = ""
    model_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = sorted({int(layer) for layer in self.layers})
        if not self.layers or self.layers[0] < 0:
            raise ValueError(f"layers must be non-empty and >= 0, got {self.layers}")
        if self.variant not in ("single", "adaptive"):
            raise ValueError(f"variant must be 'single' (S-PSR) or 'adaptive' (A-PSR), got {self.variant!r}")
        if self.variant == "single" and len(self.layers) != 1:
            raise ValueError(f"S-PSR steers exactly one layer, got layers={self.layers}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if isinstance(self.positions, str) and self.positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES} or explicit indices, got {self.positions!r}")
        if self.d_model < 1 or self.steps < 0 or self.batch_size < 1 or self.local_steps < 0:
            raise ValueError("d_model and batch_size must be >= 1, steps and local_steps >= 0")
        if self.template_tokens is not None and self.template_tokens < 0 or self.sink_tokens < 0:
            raise ValueError("template_tokens and sink_tokens must be >= 0")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must be in [0, 1), got {self.held_out_fraction}")
        if self.eval_every < 1 or self.patience < 1:
            raise ValueError("eval_every and patience must be >= 1")
        for name in ("lr", "weight_decay", "regulariser", "auto_regulariser", "train_alpha", "fit_ridge"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"{name} must be finite")

    @property
    def short_name(self) -> str:
        """``s-psr-mse``, ``a-psr-likelihood``, ..."""
        return f"{'s' if self.variant == 'single' else 'a'}-psr-{self.loss}"

    @property
    def trained_layers(self) -> list[int]:
        """The layers end-to-end training updates (``train_from_layer`` and above)."""
        low = self.layers[0] if self.train_from_layer is None else int(self.train_from_layer)
        return [layer for layer in self.layers if layer >= low]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PSRConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class PSR(nn.Module):
    """A trained (or initialised) PSR: one :class:`ReluGate` and one direction ``z`` per steered layer.

    Example:
        >>> cfg = PSRConfig(layers=[1], d_model=4)
        >>> psr = PSR(cfg)
        >>> psr.set_layer(1, weight=torch.zeros(4), bias=1.0, z=torch.ones(4))
        >>> psr.gate_values(1, torch.randn(1, 3, 4)).tolist()
        [[1.0, 1.0, 1.0]]
    """

    def __init__(self, config: PSRConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.gates = nn.ModuleDict({str(layer): ReluGate(torch.zeros(d), bias=1.0) for layer in config.layers})
        self.z = nn.ParameterDict({str(layer): nn.Parameter(torch.zeros(d)) for layer in config.layers})

    # ------------------------------------------------------------------ parameters
    @property
    def layers(self) -> list[int]:
        return list(self.config.layers)

    @property
    def hook_names(self) -> list[str]:
        return [hook_name(layer) for layer in self.layers]

    def gate(self, layer: int) -> ReluGate:
        return self.gates[str(int(layer))]  # type: ignore[return-value]

    def direction(self, layer: int) -> nn.Parameter:
        return self.z[str(int(layer))]

    @torch.no_grad()
    def set_layer(self, layer: int, *, weight: Tensor | None = None, bias: float | Tensor | None = None,
                  z: Tensor | None = None) -> None:
        """Overwrite (w, b, z) of one layer (shapes checked)."""
        if str(int(layer)) not in self.gates:
            raise KeyError(f"this PSR steers layers {self.layers}, not {layer}")
        gate = self.gate(layer)
        for name, value, target in (("weight", weight, gate.weight), ("z", z, self.direction(layer))):
            if value is None:
                continue
            value = torch.as_tensor(value, dtype=torch.float32)
            if value.shape != target.shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
            check_finite(value, name)
            target.copy_(value)
        if bias is not None:
            gate.bias.copy_(torch.as_tensor(bias, dtype=torch.float32).reshape(()))

    def gate_values(self, layer: int, activation: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos"]:
        """λ_t = ReLU(w·h_t + b) for every token (≥ 0)."""
        return self.gate(layer)(activation)

    def added(self, layer: int, activation: Float[Tensor, "batch pos d_model"], alpha: float = 1.0
              ) -> Float[Tensor, "batch pos d_model"]:
        """What the PSR adds at ``layer``: α·λ(h_t)·z."""
        return alpha * self.gate_values(layer, activation)[..., None] * self.direction(layer).to(activation.dtype)

    # ------------------------------------------------------------------ hooks
    def hooks(self, alpha: float | Tensor = 1.0, *, positions: PositionSpec | None = None,
              tracker: Any = None, record: bool = False) -> list[tuple[str, PSRHook]]:
        """``(hook_name, hook)`` pairs: one :class:`PSRHook` per layer, sharing ``tracker``.

        ``alpha`` is a number, or a ``(batch,)`` tensor giving each row its own α (factor sweeps).
        ``positions`` overrides ``config.positions``; ``record`` makes the hooks keep added-norm statistics.
        """
        positions = positions if positions is not None else self.config.positions
        if tracker is None:
            raise ValueError("PSR hooks need a PositionTracker (use PSR.steer, which makes one)")
        out = []
        for layer in self.layers:
            if isinstance(alpha, Tensor) and alpha.ndim > 0:
                gate: Any = RowScaledGate(self.gate(layer), alpha)
                coefficient = 1.0
            else:
                gate, coefficient = self.gate(layer), float(alpha)
            out.append((hook_name(layer), PSRHook(self.direction(layer), gate, coefficient, mode=positions,
                                                  template_tokens=self.config.template_tokens or 0,
                                                  sink_tokens=self.config.sink_tokens, tracker=tracker,
                                                  record=record)))
        return out

    @contextmanager
    def steer(self, model: nn.Module, alpha: float | Tensor = 1.0, *, positions: PositionSpec | None = None,
              record: bool = False) -> Iterator[list[tuple[str, PSRHook]]]:
        """Install the PSR on ``model`` while the block runs (KV-cache safe; hooks removed on exit).

        Installed through :func:`hooksteer.hooks.apply_steering_hooks`, so ``generate_texts`` on a
        TransformerBridge keeps its fast path while a PSR steers.

        Yields the installed hooks; ``hook.last_gate`` holds the λ (times α when α is per row) of the
        latest forward pass, and with ``record=True`` ``hook.stats()`` the added-norm sums.
        """
        if not isinstance(alpha, Tensor) or alpha.ndim == 0:
            finite_scalar(alpha, "PSR alpha")  # a per-row alpha tensor is checked by RowScaledGate
        self.check_model(model)
        tracker = PositionTracker()
        fwd_hooks = self.hooks(alpha, positions=positions, tracker=tracker, record=record)
        with apply_steering_hooks(model, fwd_hooks, tracker):
            yield fwd_hooks

    def check_model(self, model: nn.Module) -> None:
        d_model = int(model.cfg.d_model)
        if d_model != self.config.d_model:
            raise ValueError(f"this PSR was made for d_model={self.config.d_model}, the model has {d_model}")
        for name in self.hook_names:
            check_hook_name(model, name)

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> Path:
        """Write ``psr_config.json`` and ``psr.safetensors`` into ``directory``."""
        from safetensors.torch import save

        from hooksteer.io import atomic_write_files

        out = Path(directory)
        tensors = {f"{kind}.{layer}": tensor.detach().float().cpu().contiguous()
                   for layer in self.layers
                   for kind, tensor in (("w", self.gate(layer).weight), ("b", self.gate(layer).bias.reshape(1)),
                                        ("z", self.direction(layer)))}
        config = json.dumps(self.config.to_dict(), indent=2).encode()  # both files staged, then renamed
        atomic_write_files({out / WEIGHTS_FILE: save(tensors, metadata={"format": "hooksteer-psr-1"}),
                            out / CONFIG_FILE: config})
        return out

    @classmethod
    def load(cls, directory: str | Path, model: nn.Module | None = None) -> PSR:
        """Reload a saved PSR; with ``model`` also check that it fits (width, hook names).

        Raises:
            PSRFileError: missing/corrupt files, missing or mis-shaped tensors, non-finite values.
        """
        folder = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise PSRFileError(f"{folder} has no {name}: not a saved PSR")
        config = _read_config(folder / CONFIG_FILE)
        if model is not None and int(model.cfg.d_model) != config.d_model:
            raise PSRFileError(f"{folder}: this PSR was made for d_model={config.d_model}, the model has "
                               f"{int(model.cfg.d_model)}")
        tensors = _read_weights(folder / WEIGHTS_FILE, config)  # shapes checked in the header before reading
        psr = cls(config)
        for layer in config.layers:
            try:
                w, b, z = (tensors[f"{kind}.{layer}"] for kind in ("w", "b", "z"))
            except KeyError as error:
                raise PSRFileError(f"{folder / WEIGHTS_FILE} lacks tensor {error.args[0]}") from None
            try:
                psr.set_layer(layer, weight=w, bias=b.reshape(()), z=z)
            except ValueError as error:
                raise PSRFileError(f"{folder / WEIGHTS_FILE}: layer {layer}: {error}") from error
        if model is not None:
            try:
                psr.check_model(model)
            except (ValueError, KeyError) as error:
                raise PSRFileError(f"{folder}: {error}") from error
        return psr

    def extra_repr(self) -> str:
        return f"{self.config.short_name}, layers={self.layers}, d_model={self.config.d_model}"


def _read_config(path: Path) -> PSRConfig:
    """The saved config, every field checked (``d_model`` too, before anything is allocated for it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PSRFileError(f"{path} is not a valid PSR config: {error}") from error
    if not isinstance(data, dict):
        raise PSRFileError(f"{path} is not a valid PSR config: expected a JSON object, got {type(data).__name__}")
    d_model = data.get("d_model")
    if isinstance(d_model, bool) or not isinstance(d_model, int) or not 1 <= d_model <= 2**20:
        raise PSRFileError(f"{path}: d_model must be an integer in 1..{2**20}, got {d_model!r}")
    layers = data.get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise PSRFileError(f"{path}: layers must be a list of integers, got {layers!r}")
    try:
        return PSRConfig.from_dict(data)
    except (TypeError, ValueError, AttributeError) as error:
        raise PSRFileError(f"{path} is not a valid PSR config: {error}") from error


def _read_weights(path: Path, config: PSRConfig) -> dict[str, Tensor]:
    """The weights of every layer of ``config``, after checking names, shapes and finiteness."""
    from safetensors import SafetensorError, safe_open

    expected = {f"{kind}.{layer}": [1] if kind == "b" else [config.d_model]
                for layer in config.layers for kind in ("w", "b", "z")}
    try:
        with safe_open(str(path), framework="pt") as handle:
            present = set(handle.keys())
            for key, shape in expected.items():
                if key not in present:
                    raise PSRFileError(f"{path} lacks tensor {key!r}")
                found = list(handle.get_slice(key).get_shape())
                if found != shape:
                    raise PSRFileError(f"{path}: {key} has shape {found}, expected {shape} (d_model={config.d_model})")
            tensors = {key: handle.get_tensor(key) for key in expected}
    except (SafetensorError, OSError, ValueError) as error:
        if isinstance(error, PSRFileError):
            raise
        raise PSRFileError(f"{path} is corrupt or truncated: {error}") from error
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise PSRFileError(f"{path}: {key} must be floating-point, got {tensor.dtype}")
        try:
            check_finite(tensor, key)
        except ValueError as error:
            raise PSRFileError(f"{path}: {error}") from error
    return tensors


def mean_delta_init(psr: PSR, deltas: dict[int, Sequence[Tensor]]) -> None:
    """Constant steering by the teacher's mean change (w = 0, b = 1, z = mean Δ), from the *unsteered* deltas.

    S-PSR: z = mean over response tokens of Δ_layer. A-PSR: z_l = mean of Δ_l − Δ_{l_prev}: an approximation
    that counts each block's response to the z below twice; :func:`hooksteer.psr.trainer.train_psr`
    initialises A-PSR layer by layer from one steered pass instead (``init="mean_delta"`` there).
    """
    previous: int | None = None
    for layer in psr.layers:
        current = torch.cat([d.float() for d in deltas[layer]]).mean(dim=0)
        if psr.config.variant == "adaptive" and previous is not None:
            z = current - torch.cat([d.float() for d in deltas[previous]]).mean(dim=0)
        else:
            z = current
        psr.set_layer(layer, weight=torch.zeros(psr.config.d_model), bias=1.0, z=z)
        previous = layer
