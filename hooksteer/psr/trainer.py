"""Training a PSR on teacher records: plain AdamW, frozen base model, cached frozen activations.

What each (variant, loss) runs per step (all on right-padded ``xy'`` batches; steering is applied only
to the response tokens, where the teacher signal lives):

* S-PSR + MSE: no forward pass at all. The gate at layer l reads A_l(xy'), which steering at layer l
  cannot change, so ``steered − prompted = α·λ(h_t)·z − Δ_t`` on the cached activations.
* S-PSR + likelihood: the cached A_l(xy') of the whole sequence gets α·λ·z on the response tokens, then
  only blocks l+1.. run; −log p(y'|x) on the response tokens.
* A-PSR: the cached residual entering the first steered block is run through blocks
  ``layers[0] .. layers[-1]`` (MSE: every steered layer's activation matched to A_l(x'y')) or to the end
  (likelihood), each steered layer adding its own α·λ_l·z_l.

Learning rates are scaled per parameter to the data (Adam steps are ~lr per coordinate): ``z`` by the
RMS of Δ, ``w`` by 1/(√d · RMS of h), ``b`` by 1.

Example:
    >>> records = compute_teacher(model, pairs, layers=[20])                               # doctest: +SKIP
    >>> psr, result = train_psr(model, records, PSRConfig(layers=[20], d_model=576))        # doctest: +SKIP
    >>> result.history[0]["loss"], result.history[-1]["loss"]                                # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from hooksteer.activations import model_device, pad_token_id, right_pad
from hooksteer.psr.loss import activation_mse, dead_gate_penalty, response_nll
from hooksteer.psr.model import PSR, PSRConfig, mean_delta_init
from hooksteer.psr.teacher import TeacherRecord, hook_name

__all__ = ["TrainResult", "PSRBatch", "make_batch", "batch_loss", "fit_metrics", "response_gates", "train_psr"]


@dataclass
class TrainResult:
    """Loss history and summary of one training run."""

    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    initial: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"history": self.history, "seconds": self.seconds, "initial": self.initial, "final": self.final}


@dataclass
class PSRBatch:
    """Right-padded ``xy'`` tokens with the response span of every row."""

    records: list[TeacherRecord]
    tokens: Int[Tensor, "batch pos"]
    prompt_lengths: Int[Tensor, " batch"]
    response_lengths: Int[Tensor, " batch"]

    def response_mask(self) -> Bool[Tensor, "batch pos"]:
        t = torch.arange(self.tokens.shape[1])[None]
        p, n = self.prompt_lengths[:, None], self.response_lengths[:, None]
        return (t >= p) & (t < p + n)

    def stacked(self, kind: str, layer: int) -> Float[Tensor, "batch pos d_model"]:
        """``plain`` or ``delta`` activations of ``layer`` placed at the response positions (zeros elsewhere)."""
        first = getattr(self.records[0], kind)[layer]
        out = torch.zeros(len(self.records), self.tokens.shape[1], first.shape[-1])
        for row, record in enumerate(self.records):
            p, n = int(self.prompt_lengths[row]), record.n_tokens
            out[row, p : p + n] = getattr(record, kind)[layer]
        return out


def make_batch(records: Sequence[TeacherRecord], pad_id: int) -> PSRBatch:
    if not records:
        raise ValueError("cannot build an empty batch")
    return PSRBatch(list(records), right_pad([r.pair.plain for r in records], pad_id),
                    torch.tensor([r.pair.plain_prompt.numel() for r in records]),
                    torch.tensor([r.n_tokens for r in records]))


class _ResidCache:
    """Frozen residual entering block ``start`` (i.e. ``stop_at_layer=start``) per record, kept on CPU."""

    def __init__(self, model: Any, start: int) -> None:
        self.model, self.start = model, start
        self._store: dict[int, Tensor] = {}

    @torch.no_grad()
    def get(self, batch: PSRBatch) -> Float[Tensor, "batch pos d_model"]:
        missing = [row for row, r in enumerate(batch.records) if id(r) not in self._store]
        if missing:
            lengths = [batch.records[row].pair.plain.numel() for row in missing]
            resid = self.model(batch.tokens[missing, : max(lengths)].to(model_device(self.model)),
                               stop_at_layer=self.start, padding_side="right")
            for i, row in enumerate(missing):
                self._store[id(batch.records[row])] = resid[i, : lengths[i]].float().cpu().clone()
        out = torch.zeros(len(batch.records), batch.tokens.shape[1], int(self.model.cfg.d_model))
        for row, record in enumerate(batch.records):
            value = self._store[id(record)]
            out[row, : value.shape[0]] = value
        return out


def _start_layer(config: PSRConfig) -> int:
    """Block whose input is cached: S-PSR likelihood starts above its layer; A-PSR at its first layer."""
    return config.layers[0] + 1 if config.variant == "single" else config.layers[0]


def _unembed_response(model: Any, final: Tensor, batch: PSRBatch) -> tuple[Tensor, Tensor]:
    """Logits at the positions that predict response tokens (final norm + unembedding there only)."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    mask = batch.response_mask()
    predict = torch.zeros_like(mask)
    predict[:, :-1] = mask[:, 1:]  # position t predicts token t+1
    picked = final[predict.to(final.device)][None]
    if model.cfg.normalization_type is not None:
        picked = model.ln_final(picked)
    logits = apply_softcap(model.unembed(picked), model.cfg.output_logits_soft_cap)[0]
    labels = batch.tokens[mask].to(final.device)
    return logits, labels


def batch_loss(model: Any, psr: PSR, batch: PSRBatch, *, loss: str | None = None, alpha: float | None = None,
               cache: _ResidCache | None = None, regulariser: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """The training loss of ``psr`` on ``batch`` (with gradients) and its parts as floats."""
    config = psr.config
    loss = loss or config.loss
    alpha = config.train_alpha if alpha is None else alpha
    regulariser = config.regulariser if regulariser is None else regulariser
    mask = batch.response_mask()
    device = model_device(model)
    gates: list[Tensor] = []
    parts: dict[str, float] = {}

    if config.variant == "single" and loss == "mse":
        layer = config.layers[0]
        plain = batch.stacked("plain", layer).to(device)
        lam = psr.gate_values(layer, plain)
        gates.append(lam)
        added = alpha * lam[..., None] * psr.direction(layer).to(device)
        main = activation_mse(added, batch.stacked("delta", layer).to(device), mask.to(device))
    else:
        cache = cache or _ResidCache(model, _start_layer(config))
        resid = cache.get(batch).to(device)
        mask_d = mask.to(device)[..., None].float()
        captured: dict[int, Tensor] = {}

        def steer_at(layer: int):
            def hook(activation: Tensor, hook: Any = None) -> Tensor:
                lam = psr.gate_values(layer, activation)
                gates.append(lam)
                steered = activation + mask_d * alpha * lam[..., None] * psr.direction(layer).to(activation.dtype)
                captured[layer] = steered
                return steered
            return hook

        n_layers = int(model.cfg.n_layers)
        if config.variant == "single":
            layer = config.layers[0]
            hook = steer_at(layer)
            steered_in = hook(resid)
            final = model(steered_in, start_at_layer=layer + 1, stop_at_layer=n_layers, padding_side="right")
        else:
            stop = config.layers[-1] + 1 if loss == "mse" else n_layers
            fwd = [(hook_name(layer), steer_at(layer)) for layer in config.layers]
            with model.hooks(fwd_hooks=fwd):
                final = model(resid, start_at_layer=config.layers[0], stop_at_layer=stop, padding_side="right")
        if loss == "mse":
            terms = []
            for layer in config.layers:
                prompted = (batch.stacked("plain", layer) + batch.stacked("delta", layer)).to(device)
                terms.append(activation_mse(captured[layer], prompted, mask.to(device)))
            main = torch.stack(terms).mean()
        elif loss == "likelihood":
            logits, labels = _unembed_response(model, final, batch)
            main = response_nll(logits, labels)
        else:
            raise ValueError(f"loss must be 'mse' or 'likelihood', got {loss!r}")
    parts[loss] = float(main.detach())
    total = main
    if regulariser:
        penalty = torch.stack([dead_gate_penalty(g, mask.to(g.device)) for g in gates]).mean()
        parts["dead_gate_penalty"] = float(penalty.detach())
        total = total + regulariser * penalty
    parts["loss"] = float(total.detach())
    return total, parts


@torch.no_grad()
def response_gates(model: Any, psr: PSR, record: TeacherRecord, alpha: float = 1.0) -> dict[int, Tensor]:
    """λ_t of every steered layer on the record's response tokens, read through the inference hooks
    (one pass over ``xy'`` with the PSR steering the response tokens, as in training). For A-PSR the gate
    of a layer sees the activation already steered by the layers below."""
    p, n = record.pair.plain_prompt.numel(), record.n_tokens
    with psr.steer(model, float(alpha), positions=list(range(p, p + n))) as hooks:
        model(record.pair.plain[None].to(model_device(model)), stop_at_layer=psr.layers[-1] + 1)
    # a float α is the hook's coefficient, so ``last_gate`` holds λ itself (not α·λ)
    return {layer: hook.last_gate[0, p : p + n].float().cpu()
            for layer, (_, hook) in zip(psr.layers, hooks, strict=True)}


@torch.no_grad()
def fit_metrics(psr: PSR, records: Sequence[TeacherRecord], layer: int | None = None, *,
                model: Any = None) -> dict[str, float]:
    """How well the PSR's *own-layer* term ``λ(h_t)·z`` reproduces the teacher Δ at ``layer`` (default: last).

    ``r2`` = 1 − Σ‖λz − Δ‖² / Σ‖Δ‖²; ``r2_constant`` is the same for the best single constant vector
    (mean Δ), i.e. what constant steering could do; ``lambda_delta_pearson``/``_spearman`` correlate λ_t
    with ‖Δ_t‖. Without ``model`` λ is read from the unsteered activations (exact for S-PSR); with
    ``model`` it is read through the hooks (:func:`response_gates`, right for A-PSR too). For A-PSR ``r2``
    reads only the layer's own term (the layers below also contribute).
    """
    from analysis.token_effects import pearson, spearman

    layer = psr.layers[-1] if layer is None else layer
    deltas = torch.cat([r.delta[layer] for r in records])
    if model is not None:
        lam = torch.cat([response_gates(model, psr, r)[layer] for r in records])
    else:
        plains = torch.cat([r.plain[layer] for r in records])
        lam = psr.gate_values(layer, plains[None])[0].cpu()
    pred = lam[:, None] * psr.direction(layer).detach().cpu()
    total = deltas.pow(2).sum()
    constant = deltas - deltas.mean(dim=0)
    norms = deltas.norm(dim=-1)
    return {"r2": float(1 - (pred - deltas).pow(2).sum() / total),
            "r2_constant": float(1 - constant.pow(2).sum() / total),
            "lambda_delta_pearson": pearson(lam, norms), "lambda_delta_spearman": spearman(lam, norms),
            "mean_lambda": float(lam.mean()), "dead_share": float((lam == 0).float().mean())}


def _param_groups(psr: PSR, records: Sequence[TeacherRecord], lr: float) -> list[dict[str, Any]]:
    groups = []
    d = psr.config.d_model
    for layer in psr.layers:
        plains = torch.cat([r.plain[layer] for r in records])
        deltas = torch.cat([r.delta[layer] for r in records])
        rms_h = float(plains.pow(2).mean().sqrt()) or 1.0
        rms_d = float(deltas.pow(2).mean().sqrt()) or 1.0
        gate = psr.gate(layer)
        groups += [{"params": [gate.weight], "lr": lr / (math.sqrt(d) * rms_h)},
                   {"params": [gate.bias], "lr": lr},
                   {"params": [psr.direction(layer)], "lr": lr * rms_d}]
    return groups


def train_psr(model: Any, records: Sequence[TeacherRecord], config: PSRConfig, *, init: str = "mean_delta",
              progress: bool = True, log_every: int = 10) -> tuple[PSR, TrainResult]:
    """Train a PSR on teacher records (every record needs ``plain``/``delta`` at every ``config.layers``).

    Args:
        init: ``"mean_delta"`` (start as constant steering by the mean teacher change, w = 0, b = 1) or
            ``"random"`` (small random w, b = 1, z = mean Δ).

    Raises:
        ValueError: no records, or records that lack a layer of ``config.layers``.
    """
    from tqdm.auto import tqdm

    if not records:
        raise ValueError("no teacher records to train on")
    for layer in config.layers:
        if any(layer not in r.delta for r in records):
            raise ValueError(f"teacher records lack layer {layer}; compute_teacher(..., layers={config.layers})")
    if int(model.cfg.d_model) != config.d_model:
        raise ValueError(f"config.d_model={config.d_model} but the model has d_model={model.cfg.d_model}")
    torch.manual_seed(config.seed)
    psr = PSR(config)
    mean_delta_init(psr, {layer: [r.delta[layer] for r in records] for layer in config.layers})
    if init == "random":
        for layer in config.layers:
            rms = float(torch.cat([r.plain[layer] for r in records]).pow(2).mean().sqrt()) or 1.0
            psr.set_layer(layer, weight=torch.randn(config.d_model) / (math.sqrt(config.d_model) * rms) * 0.1)
    elif init != "mean_delta":
        raise ValueError(f"init must be 'mean_delta' or 'random', got {init!r}")
    psr.to(model_device(model))
    model.requires_grad_(False)
    optimizer = torch.optim.AdamW(_param_groups(psr, records, config.lr), weight_decay=config.weight_decay)
    pad = pad_token_id(model)
    cache = _ResidCache(model, _start_layer(config))
    generator = torch.Generator().manual_seed(config.seed)
    result = TrainResult()
    everything = make_batch(records[: max(config.batch_size, 1) * 4], pad)
    start = time.perf_counter()
    with torch.no_grad():
        _, result.initial = batch_loss(model, psr, everything, cache=cache)
    for step in tqdm(range(config.steps), desc=f"train {config.short_name}", disable=not progress):
        order = torch.randperm(len(records), generator=generator)[: config.batch_size].tolist()
        batch = make_batch([records[i] for i in order], pad)
        optimizer.zero_grad(set_to_none=True)
        total, parts = batch_loss(model, psr, batch, cache=cache)
        total.backward()
        torch.nn.utils.clip_grad_norm_(psr.parameters(), 1.0e3)
        optimizer.step()
        if step % max(1, log_every) == 0 or step == config.steps - 1:
            result.history.append({"step": step, **parts})
    with torch.no_grad():
        _, result.final = batch_loss(model, psr, everything, cache=cache)
    result.seconds = time.perf_counter() - start
    psr.config.extra = {**psr.config.extra, "trained_steps": config.steps, "n_train_records": len(records),
                        "initial_loss": result.initial.get("loss"), "final_loss": result.final.get("loss")}
    return psr, result
