"""One pass of teacher records through the frozen model with a PSR steering, block by block.

:func:`steered_pass` measures every layer (relative error to the prompted activations, local R², dead gates)
and scores the responses (NLL, KL to a distillation teacher); with ``fit=`` it also *initialises* each PSR
layer when the pass reaches it, from the activations the layers below already steer (see
:mod:`hooksteer.psr.trainer`): one pass gives the layer-by-layer fit of an A-PSR.

Example:
    >>> run = steered_pass(model, psr, records, held_out=held, to_end=True)        # doctest: +SKIP
    >>> run.layers[29]["rel_error_held_out"], run.nll["psr_held_out"]               # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hooksteer.activations import model_device, pad_token_id
from hooksteer.psr.batch import PSRBatch, _distill_targets, _logits_at, _run_blocks, _steer, make_batch
from hooksteer.psr.model import PSR
from hooksteer.psr.teacher import TeacherRecord

__all__ = ["PassResult", "steered_pass"]


@dataclass
class PassResult:
    """Per model layer ``layers[l]`` (where the records hold targets): ``rel_error_<part>`` =
    √(Σ‖A_l^PSR − A_l(x'y')‖² / Σ‖Δ_l‖²) over span tokens (1 = no better than unsteered); at PSR layers also
    ``local_r2_<part>`` (share of the local residual A_l(x'y') − H_l that the layer's own term explains),
    ``dead_share_<part>`` (steered tokens with λ = 0), ``dead_examples_<part>`` (examples whose gate is zero
    on every steered token) and ``mean_lambda_<part>``. ``nll``: mean response NLL per token under the PSR
    (``psr_<part>``), unsteered (``plain_<part>``) and prompted (``prompted_<part>``), and ``kl_<part>`` to
    the distillation teacher. ``<part>`` is ``train`` or ``held_out``. ``kept``: the steered residual entering
    ``keep_at`` (before that layer's PSR), one ``(length, d_model)`` tensor per record (train, then held-out).
    ``activations``: with ``capture=True``, the (steered) ``hook_resid_post`` of every layer run, right-padded
    ``(records, pos, d_model)``.
    """

    layers: dict[int, dict[str, float]] = field(default_factory=dict)
    nll: dict[str, float] = field(default_factory=dict)
    fit: dict[int, dict[str, float]] = field(default_factory=dict)
    kept: list[Tensor] = field(default_factory=list)
    activations: dict[int, Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": {str(k): v for k, v in self.layers.items()}, "nll": self.nll,
                "fit": {str(k): v for k, v in self.fit.items()}}


def _ratio(num: Tensor, den: Tensor) -> float:
    den_f = float(den)
    return float(num) / den_f if den_f > 0 else float("nan")


@torch.no_grad()
def steered_pass(model: Any, psr: PSR, records: Sequence[TeacherRecord], *, held_out: Sequence[TeacherRecord] = (),
                 alpha: float = 1.0, fit: str | None = None, start_layer: int | None = None,
                 start_resid: Sequence[Tensor] | None = None, to_end: bool = False, keep_at: int | None = None,
                 chunk: int = 16, capture: bool = False) -> PassResult:
    """Run ``records`` (then ``held_out``) through the model block by block with the PSR steering, measuring
    every layer (see :class:`PassResult`).

    Args:
        fit: ``None`` (measure only), or ``"fit"`` / ``"mean_delta"`` / ``"random"``: initialise each PSR layer
            from the training records when the pass reaches it (see the module docstring).
        start_layer / start_resid: start from a cached pre-steer residual at ``start_layer`` (one tensor per
            record, train then held-out) instead of the embeddings.
        to_end: run every block and score the responses (NLL, KL); else stop after the last layer that has a
            PSR or a teacher target.
        keep_at: keep the steered residual entering this PSR layer (for end-to-end training from there).
        capture: keep every layer's steered residual (``PassResult.activations``; tests and plots).
    """
    everything = [*records, *held_out]
    n_train = len(records)
    if not everything:
        raise ValueError("no records to run")
    if fit is not None and alpha != 1.0:
        raise ValueError("the layer-wise initialisation fits the PSR at alpha = 1")
    device = model_device(model)
    batch = make_batch(everything, pad_token_id(model))
    span, smask = batch.span_mask().to(device), batch.steer_mask(psr.config).to(device)
    parts = {"train": torch.arange(len(everything)) < n_train}
    parts["held_out"] = ~parts["train"]
    parts = {k: v.to(device) for k, v in parts.items() if bool(v.any())}
    record_layers = set(everything[0].plain)
    n_layers = int(model.cfg.n_layers)
    last = n_layers - 1 if to_end else max([*psr.layers, *record_layers])
    if start_resid is not None:
        if start_layer is None or len(start_resid) != len(everything):
            raise ValueError("start_resid needs start_layer and one tensor per record")
        resid = torch.zeros(len(everything), batch.tokens.shape[1], int(model.cfg.d_model), device=device)
        for row, value in enumerate(start_resid):
            resid[row, : value.shape[0]] = value.to(device)
        first, skip_block = int(start_layer), True
    else:
        resid = model(batch.tokens.to(device), stop_at_layer=0, padding_side="right").float()
        first, skip_block = 0, False
    result = PassResult()
    for layer in range(first, last + 1):
        if not (skip_block and layer == first):
            resid = _run_blocks(model, resid, layer, layer + 1, chunk)
        target = batch.stacked("target", layer).to(device) if layer in record_layers else None
        stats: dict[str, float] = {}
        if layer in psr.layers:
            if keep_at == layer:
                lengths = (batch.prompt_lengths + batch.response_lengths).tolist()
                result.kept = [resid[row, : lengths[row]].detach().cpu().clone() for row in range(len(everything))]
            if fit is not None:
                if target is None:
                    raise ValueError(f"the records hold no teacher activations at PSR layer {layer}")
                with torch.enable_grad():
                    result.fit[layer] = _fit_layer(psr, layer, resid, target, span & smask, parts, fit)
            steered, lam, _ = _steer(psr, layer, resid, smask, alpha)
            on = span & smask
            for part, rows in parts.items():
                mask = on & rows[:, None]
                if target is not None:
                    local = target - resid
                    added = steered - resid
                    stats[f"local_r2_{part}"] = 1.0 - _ratio((local - added)[mask].pow(2).sum(), local[mask].pow(2).sum())
                stats[f"dead_share_{part}"] = float((lam[mask] == 0).float().mean()) if bool(mask.any()) else float("nan")
                per_example = (lam * mask).sum(dim=-1)[rows]
                stats[f"dead_examples_{part}"] = float((per_example == 0).float().mean())
                stats[f"mean_lambda_{part}"] = float(lam[mask].mean()) if bool(mask.any()) else float("nan")
            resid = steered
        if target is not None:
            delta = batch.stacked("delta", layer).to(device)
            for part, rows in parts.items():
                mask = span & rows[:, None]
                stats[f"rel_error_{part}"] = math.sqrt(max(_ratio((resid - target)[mask].pow(2).sum(),
                                                                  delta[mask].pow(2).sum()), 0.0))
        if stats:
            result.layers[layer] = stats
        if capture:
            result.activations[layer] = resid.detach().cpu().clone()
    if to_end:
        result.nll = _response_scores(model, resid, batch, parts)
    return result


def _response_scores(model: Any, final: Tensor, batch: PSRBatch, parts: dict[str, Tensor]) -> dict[str, float]:
    predict = batch.predict_mask()
    out: dict[str, float] = {}
    records = batch.records
    has_distill = all(r.pair.has_distill_target for r in records)
    for part, rows in parts.items():
        mask = predict & rows.cpu()[:, None]
        logits = _logits_at(model, final, mask).float()
        chosen = [r for r, keep in zip(records, rows.tolist(), strict=True) if keep]
        labels = torch.cat([r.pair.response for r in chosen]).to(logits.device)
        out[f"psr_{part}"] = float(torch.nn.functional.cross_entropy(logits, labels))
        if all(r.nll_plain is not None for r in chosen):
            out[f"plain_{part}"] = float(torch.cat([r.nll_plain for r in chosen]).mean())  # type: ignore[misc]
            out[f"prompted_{part}"] = float(torch.cat([r.nll_prompted for r in chosen]).mean())  # type: ignore[misc]
        if has_distill:
            from hooksteer.distill import topk_kl

            ids, logprobs = _distill_targets(chosen)
            out[f"kl_{part}"] = float(topk_kl(logits, ids, logprobs).mean())
    return out


def _rel_mse(pred: Tensor, target: Tensor, scale: Tensor) -> Tensor:
    return (pred - target).pow(2).mean() / scale


def _fit_layer(psr: PSR, layer: int, resid: Tensor, target: Tensor, on: Tensor, parts: dict[str, Tensor],
               mode: str) -> dict[str, float]:
    """Initialise (w, b, z) of ``layer`` on the training rows' local residual (see the module docstring)."""
    config = psr.config
    d = int(config.d_model)
    train_mask = on & parts["train"][:, None]
    if not bool(train_mask.any()):
        raise ValueError(f"no steered span token to fit layer {layer} on")
    h, r = resid[train_mask].float(), (target - resid)[train_mask].float()
    rows = torch.nonzero(train_mask)[:, 0]
    held = parts.get("held_out")
    h_ev = r_ev = rows_ev = None
    if held is not None:
        held_mask = on & held[:, None]
        if bool(held_mask.any()):
            h_ev, r_ev = resid[held_mask].float(), (target - resid)[held_mask].float()
            rows_ev = torch.nonzero(held_mask)[:, 0]
    scale = r.pow(2).mean().clamp_min(1e-12)
    rms_h = float(h.pow(2).mean().sqrt()) or 1.0
    mean_r = r.mean(dim=0)
    const_mse = float(_rel_mse(mean_r.expand_as(r), r, scale))
    info: dict[str, float] = {"local_rms": float(scale.sqrt()), "resid_rms": rms_h, "local_rel_mse_constant": const_mse}
    if mode == "mean_delta":
        psr.set_layer(layer, weight=torch.zeros(d), bias=1.0, z=mean_r.cpu())
        info["local_rel_mse_init"] = const_mse
        return info
    if mode == "random":
        generator = torch.Generator().manual_seed(config.seed + layer)
        psr.set_layer(layer, weight=torch.randn(d, generator=generator) / (math.sqrt(d) * rms_h) * 0.1, bias=1.0,
                      z=mean_r.cpu())
    elif mode == "fit":
        _least_squares_gate(psr, layer, h, r, config.fit_ridge)
    else:
        raise ValueError(f"init must be 'fit', 'mean_delta' or 'random', got {mode!r}")
    gated = float(_rel_mse(psr.added(layer, h[None])[0], r, scale))
    if gated > const_mse:  # the ReLU fit can lose to the constant: start from the better one
        psr.set_layer(layer, weight=torch.zeros(d), bias=1.0, z=mean_r.cpu())
        gated = const_mse
        info["init_fell_back_to_constant"] = 1.0
    info["local_rel_mse_init"] = gated
    if config.local_steps > 0:
        info.update(_local_steps(psr, layer, h, r, rows, h_ev, r_ev, rows_ev, scale, rms_h))
    return info


def _least_squares_gate(psr: PSR, layer: int, h: Tensor, r: Tensor, ridge: float) -> None:
    """Rank-1 direction of the local residual, ridge least-squares gate on it, optimal z; λ scaled to mean 1."""
    d = h.shape[1]
    _, vectors = torch.linalg.eigh(r.T @ r)
    u = vectors[:, -1]
    c = r @ u
    if c.sum() < 0:
        u, c = -u, -c
    rms_h = float(h.pow(2).mean().sqrt()) or 1.0
    x = torch.cat([h / rms_h, torch.ones(h.shape[0], 1, dtype=h.dtype)], dim=1)
    gram = x.T @ x
    penalty = ridge * float(torch.diagonal(gram)[:d].mean()) * torch.ones(d + 1, dtype=h.dtype)
    penalty[d] = 0.0
    beta = torch.linalg.solve(gram + torch.diag(penalty), x.T @ c)
    w, b = beta[:d] / rms_h, beta[d]
    lam = torch.relu(h @ w + b)
    if float(lam.pow(2).sum()) <= 0:
        psr.set_layer(layer, weight=torch.zeros(d), bias=1.0, z=r.mean(dim=0).cpu())
        return
    z = (lam @ r) / (lam @ lam)
    s = float(lam.mean())
    psr.set_layer(layer, weight=(w / s).cpu(), bias=(b / s).cpu(), z=(z * s).cpu())


def _local_steps(psr: PSR, layer: int, h: Tensor, r: Tensor, rows: Tensor, h_ev: Tensor | None,
                 r_ev: Tensor | None, rows_ev: Tensor | None, scale: Tensor, rms_h: float) -> dict[str, float]:
    """Adam on the layer's local relative MSE (cached activations: no forward pass), early-stopped on held-out."""
    config = psr.config
    gate, z = psr.gate(layer), psr.direction(layer)
    params = [gate.weight, gate.bias, z]
    for p in params:
        p.requires_grad_(True)
    d = int(config.d_model)
    optimizer = torch.optim.Adam([{"params": [gate.weight], "lr": config.lr / (math.sqrt(d) * rms_h)},
                                  {"params": [gate.bias], "lr": config.lr},
                                  {"params": [z], "lr": config.lr * float(scale.sqrt())}])
    n_examples = int(max(rows.max(), rows_ev.max() if rows_ev is not None else 0)) + 1
    weight = float(config.regulariser)
    scale_ev = r_ev.pow(2).mean().clamp_min(1e-12) if r_ev is not None else None

    def loss_on(hh: Tensor, rr: Tensor, sc: Tensor, rr_rows: Tensor, reg: float) -> tuple[Tensor, Tensor]:
        pre = hh @ gate.weight + gate.bias
        lam = torch.relu(pre)
        main = _rel_mse(lam[:, None] * z, rr, sc)
        sums = torch.zeros(n_examples, dtype=lam.dtype).index_add(0, rr_rows, lam + (pre - pre.detach()))
        present = torch.zeros(n_examples, dtype=torch.bool)
        present[rr_rows] = True
        penalty = torch.relu(1.0 - sums[present]).mean()
        dead = (torch.zeros(n_examples, dtype=lam.dtype).index_add(0, rr_rows, lam.detach())[present] == 0).any()
        return main + reg * penalty, dead

    def evaluate() -> float:
        with torch.no_grad():
            if h_ev is None or r_ev is None or rows_ev is None or scale_ev is None:
                return float(loss_on(h, r, scale, rows, 0.0)[0])
            return float(loss_on(h_ev, r_ev, scale_ev, rows_ev, 0.0)[0])

    best, best_state, best_step, bad, step = evaluate(), _layer_state(psr, layer), 0, 0, 0
    for step in range(1, config.local_steps + 1):
        optimizer.zero_grad(set_to_none=True)
        total, dead = loss_on(h, r, scale, rows, weight)
        if bool(dead) and weight == 0 and config.auto_regulariser > 0:
            weight = float(config.auto_regulariser)
            total, _ = loss_on(h, r, scale, rows, weight)
        total.backward()
        optimizer.step()
        if step % config.eval_every == 0 or step == config.local_steps:
            current = evaluate()
            if current < best - 1e-6:
                best, best_state, best_step, bad = current, _layer_state(psr, layer), step, 0
            else:
                bad += 1
                if h_ev is not None and bad >= config.patience:
                    break
    _load_layer_state(psr, layer, best_state)
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    with torch.no_grad():
        final_train = float(loss_on(h, r, scale, rows, 0.0)[0])
    return {"local_steps_run": float(step), "local_best_step": float(best_step), "local_rel_mse_fit": final_train,
            "local_rel_mse_held_out": best if h_ev is not None else float("nan"),
            "local_regulariser": weight}


def _layer_state(psr: PSR, layer: int) -> tuple[Tensor, Tensor, Tensor]:
    gate = psr.gate(layer)
    return gate.weight.detach().clone(), gate.bias.detach().clone(), psr.direction(layer).detach().clone()


def _load_layer_state(psr: PSR, layer: int, state: tuple[Tensor, Tensor, Tensor]) -> None:
    psr.set_layer(layer, weight=state[0].cpu(), bias=state[1].cpu(), z=state[2].cpu())
