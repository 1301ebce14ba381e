"""Training a PSR on teacher records: layer-by-layer initialisation, then end-to-end AdamW on the loss.

1. **Initialisation, one steered pass** (:func:`steered_pass` with ``fit=config.init``). The records run
   through the frozen model block by block. At each PSR layer l the activations ``H_l`` already carry the
   PSR layers below (exactly what the layer's gate reads at inference), and the *local* target is
   ``R_l = A_l(x'y') − H_l`` (what is still missing at l). ``"fit"``: rank-1 direction of R_l, ridge
   least-squares gate, optimal z for that gate, then ``local_steps`` Adam steps on the local MSE with
   held-out early stopping; ``"mean_delta"``: z_l = mean R_l, w = 0, b = 1 (constant steering). The
   layer is then applied and the pass continues. For S-PSR this is the closed-form fit of Δ_l.
2. **End-to-end** (``steps > 0``): the PSR layers ≥ ``train_from_layer`` are trained on ``loss``
   (``"mse"``: relative activation error at every trained layer; ``"likelihood"``: −log p(y'|x);
   ``"distill"``: top-k KL to the prompted model, :func:`hooksteer.distill.topk_kl`) through the frozen
   blocks above them. The steered residual entering the first trained layer is cached once (the layers
   below are frozen), so only the blocks above it run per step. Held-out responses (a share of the base
   prompts) decide early stopping; the best held-out state is kept.
3. **Diagnostics** (``diagnose=True``): one more steered pass gives, per model layer, the relative error
   ‖A_l^PSR − A_l(x'y')‖ / ‖Δ_l‖ on train and held-out responses, the local R² and dead-gate share of each
   PSR layer, and the teacher-forced NLL of the responses under the PSR (next to the unsteered and the
   prompted model's, when the records carry them) and the KL to the teacher (distillation records).

Steering in training uses the same positions and the same arithmetic as :class:`hooksteer.psr.model.PSRHook`
at inference (tested: activations agree to < 1e-4).

Learning rates are scaled per parameter (Adam steps are ~lr per coordinate): ``z_l`` by the RMS of the
layer's local residual, ``w_l`` by 1/(√d · RMS of H_l), ``b_l`` by 1 (the init scales λ to mean 1).

Example:
    >>> records = compute_teacher(model, pairs, layers=range(30), prefix_tokens=6)              # doctest: +SKIP
    >>> cfg = PSRConfig(layers=list(range(30)), d_model=576, variant="adaptive", loss="distill")  # doctest: +SKIP
    >>> psr, result = train_psr(model, records, cfg)                                           # doctest: +SKIP
    >>> result.fidelity["layers"][29]["rel_error_held_out"]                                    # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hooksteer.activations import model_device, pad_token_id
from hooksteer.psr.batch import PSRBatch, _distill_targets, _logits_at, _steer, make_batch, split_records
from hooksteer.psr.loss import dead_gate_penalty, response_nll
from hooksteer.psr.model import PSR, PSRConfig
from hooksteer.psr.passes import PassResult, steered_pass
from hooksteer.psr.teacher import TeacherRecord, hook_name

__all__ = ["TrainResult", "PSRBatch", "PassResult", "make_batch", "batch_loss", "fit_metrics", "response_gates",
           "split_records", "steered_pass", "train_psr"]


@dataclass
class TrainResult:
    """What one :func:`train_psr` run did.

    ``initial`` / ``final``: loss parts on the training records after the initialisation / at the end;
    ``held_out``: the same on the held-out records; ``layers``: per PSR layer, how the initialisation fitted
    (local relative MSE of the constant and of the gated fit, local steps used); ``fidelity``: the
    :class:`PassResult` of the final steered pass (per-layer errors, dead gates, NLL, KL).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    initial: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    held_out: dict[str, Any] = field(default_factory=dict)
    layers: dict[int, dict[str, float]] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    best_step: int | None = None
    stopped_early: bool = False
    n_train: int = 0
    n_held_out: int = 0
    regulariser: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"history": self.history, "seconds": self.seconds, "initial": self.initial, "final": self.final,
                "held_out": self.held_out, "layers": {str(k): v for k, v in self.layers.items()},
                "fidelity": self.fidelity, "best_step": self.best_step, "stopped_early": self.stopped_early,
                "n_train": self.n_train, "n_held_out": self.n_held_out, "regulariser": self.regulariser}


def batch_loss(model: Any, psr: PSR, batch: PSRBatch, *, loss: str | None = None, alpha: float | None = None,
               kept: Sequence[Tensor] | None = None, regulariser: float | None = None,
               layers: Sequence[int] | None = None) -> tuple[Tensor, dict[str, float]]:
    """The end-to-end training loss of ``psr`` on ``batch`` (with gradients) and its parts as floats.

    The PSR layers ``layers`` (default: ``config.trained_layers``) run with gradients from the first of
    them; the steered residual entering it is ``kept`` (one tensor per record, from :func:`steered_pass`)
    or computed here without gradients (the PSR layers below it applied).
    """
    config = psr.config
    loss = loss or config.loss
    alpha = config.train_alpha if alpha is None else float(alpha)
    regulariser = config.regulariser if regulariser is None else float(regulariser)
    trained = list(layers) if layers is not None else config.trained_layers
    start = trained[0]
    device = model_device(model)
    if kept is None:
        kept = steered_pass(model, psr, batch.records, alpha=alpha, keep_at=start).kept
    d = int(model.cfg.d_model)
    resid = torch.zeros(len(batch.records), batch.tokens.shape[1], d, device=device)
    for row, value in enumerate(kept):
        resid[row, : value.shape[0]] = value.to(device)
    smask = batch.steer_mask(config).to(device)
    span = batch.span_mask().to(device)
    gates: list[Tensor] = []
    captured: dict[int, Tensor] = {}
    resid, _, lam_st = _steer(psr, start, resid, smask, alpha)
    gates.append(lam_st)
    captured[start] = resid

    def steer_hook(layer: int):
        def hook(activation: Tensor, hook: Any = None) -> Tensor:
            steered, _, lam = _steer(psr, layer, activation, smask, alpha)
            gates.append(lam)
            captured[layer] = steered
            return steered
        return hook

    n_layers = int(model.cfg.n_layers)
    above = [layer for layer in psr.layers if layer > start]
    stop = (max(trained) + 1) if loss == "mse" else n_layers
    fwd = [(hook_name(layer), steer_hook(layer)) for layer in above if layer < stop]
    with model.hooks(fwd_hooks=fwd):
        final = model(resid, start_at_layer=start + 1, stop_at_layer=stop, padding_side="right") \
            if stop > start + 1 else resid
    parts: dict[str, float] = {}
    if loss == "mse":
        terms = []
        for layer in trained:
            target = batch.stacked("target", layer).to(device)
            delta = batch.stacked("delta", layer).to(device)
            terms.append((captured[layer] - target)[span].pow(2).sum() / delta[span].pow(2).sum().clamp_min(1e-12))
        main = torch.stack(terms).mean()
    elif loss in ("likelihood", "distill"):
        logits = _logits_at(model, final, batch.predict_mask())
        if loss == "likelihood":
            main = response_nll(logits, batch.tokens[batch.response_mask()].to(logits.device))
        else:
            from hooksteer.distill import topk_kl

            ids, logprobs = _distill_targets(batch.records)
            main = topk_kl(logits, ids.to(logits.device), logprobs.to(logits.device)).mean()
    else:
        raise ValueError(f"loss must be 'mse', 'likelihood' or 'distill', got {loss!r}")
    parts[loss] = float(main.detach())
    total = main
    on = (span & smask)
    penalty = torch.stack([dead_gate_penalty(g, on) for g in gates]).mean()
    parts["dead_gate_penalty"] = float(penalty.detach())
    if regulariser:
        total = total + regulariser * penalty
    parts["loss"] = float(total.detach())
    return total, parts


@torch.no_grad()
def response_gates(model: Any, psr: PSR, record: TeacherRecord, alpha: float = 1.0, *,
                   span: bool = False) -> dict[int, Tensor]:
    """λ_t of every steered layer, read through the inference hooks in one pass over ``xy'`` with the PSR
    steering the record's span (template prefix + response, as in training). Returns the response tokens'
    λ (``span=True``: the whole span's). For A-PSR the gate of a layer sees the activation already steered by
    the layers below."""
    start, end = record.span_start, record.span_start + record.n_span
    with psr.steer(model, float(alpha), positions=list(range(start, end))) as hooks:
        model(record.pair.plain[None].to(model_device(model)), stop_at_layer=psr.layers[-1] + 1)
    first = start if span else start + record.n_prefix
    # a float α is the hook's coefficient, so ``last_gate`` holds λ itself (not α·λ)
    return {layer: hook.last_gate[0, first:end].float().cpu()
            for layer, (_, hook) in zip(psr.layers, hooks, strict=True)}


@torch.no_grad()
def fit_metrics(psr: PSR, records: Sequence[TeacherRecord], layer: int | None = None, *,
                model: Any = None) -> dict[str, float]:
    """How well the PSR's *own-layer* term ``λ(h_t)·z`` reproduces the teacher Δ at ``layer`` (default: last).

    ``r2`` = 1 − Σ‖λz − Δ‖² / Σ‖Δ‖²; ``r2_constant`` is the same for the best single constant vector
    (mean Δ), i.e. what constant steering could do; ``lambda_delta_pearson``/``_spearman`` correlate λ_t
    with ‖Δ_t‖ (span tokens). Without ``model`` λ is read from the unsteered activations (exact for S-PSR);
    with ``model`` through the hooks (:func:`response_gates`). Meaningful for S-PSR; for A-PSR use the
    per-layer local R² and the cumulative error of :func:`steered_pass` (``TrainResult.fidelity``).
    """
    from analysis.token_effects import pearson, spearman

    layer = psr.layers[-1] if layer is None else layer
    deltas = torch.cat([r.delta[layer] for r in records])
    if model is not None:
        lam = torch.cat([response_gates(model, psr, r, span=True)[layer] for r in records])
    else:
        plains = torch.cat([r.plain[layer] for r in records])
        lam = psr.gate_values(layer, plains[None])[0].cpu()
    pred = lam[:, None] * psr.direction(layer).detach().cpu()
    total = deltas.pow(2).sum()
    constant = deltas - deltas.mean(dim=0)
    norms = deltas.norm(dim=-1)
    varies = lam.std() > 0 if lam.numel() > 1 else False
    return {"r2": float(1 - (pred - deltas).pow(2).sum() / total),
            "r2_constant": float(1 - constant.pow(2).sum() / total),
            "lambda_delta_pearson": pearson(lam, norms) if varies else float("nan"),
            "lambda_delta_spearman": spearman(lam, norms) if varies else float("nan"),
            "mean_lambda": float(lam.mean()), "dead_share": float((lam == 0).float().mean())}


def _param_groups(psr: PSR, layers: Sequence[int], fit: dict[int, dict[str, float]], lr: float
                  ) -> list[dict[str, Any]]:
    groups = []
    d = psr.config.d_model
    for layer in layers:
        info = fit.get(layer, {})
        rms_h = info.get("resid_rms") or 1.0
        rms_r = max(info.get("local_rms") or 0.0, 1e-2 * rms_h)  # a zero local residual must not freeze z
        gate = psr.gate(layer)
        groups += [{"params": [gate.weight], "lr": lr / (math.sqrt(d) * rms_h)},
                   {"params": [gate.bias], "lr": lr},
                   {"params": [psr.direction(layer)], "lr": lr * rms_r}]
    return groups


def _check_records(model: Any, records: Sequence[TeacherRecord], config: PSRConfig) -> None:
    if not records:
        raise ValueError("no teacher records to train on")
    for layer in config.layers:
        if any(layer not in r.delta for r in records):
            raise ValueError(f"teacher records lack layer {layer}; compute_teacher(..., layers={config.layers})")
    if int(model.cfg.d_model) != config.d_model:
        raise ValueError(f"config.d_model={config.d_model} but the model has d_model={model.cfg.d_model}")
    if max(config.layers) >= int(model.cfg.n_layers):
        raise ValueError(f"layers {config.layers} outside the model's {model.cfg.n_layers} blocks")
    if len({r.n_prefix for r in records}) != 1:
        raise ValueError("teacher records were computed with different prefix_tokens")
    if config.loss == "distill":
        _distill_targets(records)


def _mean_parts(model: Any, psr: PSR, records: Sequence[TeacherRecord], chunk: int, *,
                kept: Sequence[Tensor] | None = None, per_predicted_token: bool = False,
                **loss_options: Any) -> dict[str, float]:
    """:func:`batch_loss`'s parts over ``records`` in chunks (no gradients, no regulariser), each chunk weighted by
    its steered span tokens, or by its predicted answer tokens (``per_predicted_token``: the mean of a per-answer-
    token loss such as the KL). ``loss_options`` go to :func:`batch_loss` (``loss``, ``alpha``)."""
    pad = pad_token_id(model)
    total: dict[str, float] = {}
    weight = 0
    with torch.no_grad():
        for i in range(0, len(records), chunk):
            part = list(records[i : i + chunk])
            batch = make_batch(part, pad)
            n = int(batch.predict_mask().sum()) if per_predicted_token else sum(r.n_span for r in part)
            _, parts = batch_loss(model, psr, batch, kept=None if kept is None else kept[i : i + chunk],
                                  regulariser=0.0, **loss_options)
            for key, value in parts.items():
                total[key] = total.get(key, 0.0) + value * n
            weight += n
    return {k: v / max(weight, 1) for k, v in total.items()}


def distill_kl(model: Any, psr: PSR, records: Sequence[TeacherRecord], *, alpha: float = 1.0,
               batch_size: int = 8) -> float:
    """Mean top-k KL(teacher ‖ model steered by ``psr`` at ``alpha``) per answer token of ``records`` (distillation
    records, e.g. never-trained eval pairs), the number ``HyperSteer``'s eval KL reports for a vector.

    Example:
        >>> kl = distill_kl(model, psr, compute_teacher(model, eval_pairs, psr.layers, prefix_tokens="auto"))  # doctest: +SKIP
    """
    if not records:
        raise ValueError("no teacher records to measure the KL on")
    _distill_targets(records)  # a clear error when the records carry no teacher log-probs
    return _mean_parts(model, psr, records, batch_size, per_predicted_token=True, loss="distill",
                       alpha=alpha)["distill"]


def train_psr(model: Any, records: Sequence[TeacherRecord], config: PSRConfig, *, init: str | None = None,
              held_out: Sequence[TeacherRecord] | None = None, progress: bool = True, log_every: int = 10,
              diagnose: bool = True) -> tuple[PSR, TrainResult]:
    """Train a PSR on teacher records (every record needs ``plain``/``delta`` at every ``config.layers``).

    Args:
        model: the frozen ``HookedTransformer``.
        records: teacher records (:func:`hooksteer.psr.teacher.compute_teacher`); with ``loss="distill"`` from
            :func:`hooksteer.psr.teacher.pairs_from_distill` pairs.
        config: :class:`PSRConfig` (``template_tokens=None`` is set from the records' span prefix).
        init: overrides ``config.init``.
        held_out: explicit held-out records (default: ``config.held_out_fraction`` of the base prompts).
        diagnose: run every block in the passes and record the per-layer fidelity, dead gates, NLL and KL.

    Raises:
        ValueError: no records, records that lack a layer, a distillation loss without teacher top-k.
    """
    from tqdm.auto import tqdm

    if init is not None:
        config.init = init
    _check_records(model, records, config)
    if config.template_tokens is None:
        config.template_tokens = int(records[0].n_prefix)
    if held_out is None:
        train, held = split_records(records, config.held_out_fraction, config.seed)
    else:
        train, held = list(records), list(held_out)
        if held:
            _check_records(model, held, config)
    torch.manual_seed(config.seed)
    psr = PSR(config).to(model_device(model))
    psr.requires_grad_(False)
    model.requires_grad_(False)
    pad = pad_token_id(model)
    result = TrainResult(n_train=len(train), n_held_out=len(held))
    start_time = time.perf_counter()
    trained = config.trained_layers
    if not trained:
        raise ValueError(f"train_from_layer={config.train_from_layer} leaves no PSR layer to train")
    steps = config.steps
    first = trained[0]
    init_pass = steered_pass(model, psr, train, held_out=held, alpha=config.train_alpha, fit=config.init,
                             to_end=diagnose, keep_at=first if steps > 0 else None)
    result.layers = init_pass.fit
    result.fidelity = init_pass.to_dict()
    result.regulariser = max([float(config.regulariser)] +
                             [v.get("local_regulariser", 0.0) for v in init_pass.fit.values()])
    if steps > 0:
        kept_train, kept_held = init_pass.kept[: len(train)], init_pass.kept[len(train):]
        for layer in trained:
            for p in (psr.gate(layer).weight, psr.gate(layer).bias, psr.direction(layer)):
                p.requires_grad_(True)
        optimizer = torch.optim.AdamW(_param_groups(psr, trained, init_pass.fit, config.lr),
                                      weight_decay=config.weight_decay)
        generator = torch.Generator().manual_seed(config.seed)
        weight = float(config.regulariser)
        result.initial = _mean_parts(model, psr, train, config.batch_size, kept=kept_train)
        best = _mean_parts(model, psr, held, config.batch_size, kept=kept_held)["loss"] if held else float("inf")
        result.held_out["initial"] = best if held else None
        best_state, result.best_step, bad = copy.deepcopy(psr.state_dict()), 0, 0
        bar = tqdm(range(1, steps + 1), desc=f"train {config.short_name}", disable=not progress)
        for step in bar:
            order = torch.randperm(len(train), generator=generator)[: config.batch_size].tolist()
            batch = make_batch([train[i] for i in order], pad)
            optimizer.zero_grad(set_to_none=True)
            total, parts = batch_loss(model, psr, batch, kept=[kept_train[i] for i in order], regulariser=weight)
            if weight == 0 and config.auto_regulariser > 0 and parts["dead_gate_penalty"] >= 1.0 / len(order):
                weight = float(config.auto_regulariser)  # an example's gate died: switch the regulariser on
                result.regulariser = max(result.regulariser, weight)
            total.backward()
            torch.nn.utils.clip_grad_norm_(psr.parameters(), 1.0e3)
            optimizer.step()
            entry: dict[str, float] = {"step": step, **parts}
            if held and (step % config.eval_every == 0 or step == steps):
                current = _mean_parts(model, psr, held, config.batch_size, kept=kept_held)["loss"]
                entry["held_out_loss"] = current
                if current < best - 1e-6:
                    best, best_state, result.best_step, bad = current, copy.deepcopy(psr.state_dict()), step, 0
                else:
                    bad += 1
                    if bad >= config.patience:
                        result.history.append(entry)
                        result.stopped_early = True
                        break
            if step % max(1, log_every) == 0 or step == steps or "held_out_loss" in entry:
                result.history.append(entry)
        if held:
            psr.load_state_dict(best_state)
            result.held_out["best"] = best
        psr.requires_grad_(False)
        result.final = _mean_parts(model, psr, train, config.batch_size, kept=kept_train)
        if diagnose:
            final_pass = steered_pass(model, psr, train, held_out=held, alpha=config.train_alpha, start_layer=first,
                                      start_resid=init_pass.kept, to_end=True)
            layers = {**init_pass.layers, **final_pass.layers}
            result.fidelity = {**final_pass.to_dict(), "layers": {str(k): v for k, v in sorted(layers.items())},
                               "fit": {str(k): v for k, v in init_pass.fit.items()},
                               "init": init_pass.to_dict()}
    else:  # no end-to-end steps: the initialisation is the PSR; its fit is in ``layers`` / ``fidelity``
        top = init_pass.layers.get(config.layers[-1], {})
        result.initial = result.final = {"rel_error_top": top.get("rel_error_train", float("nan"))}
    result.seconds = time.perf_counter() - start_time
    psr.config.extra = {**psr.config.extra, "trained_steps": steps, "n_train_records": len(train),
                        "n_held_out_records": len(held), "initial_loss": result.initial.get("loss"),
                        "final_loss": result.final.get("loss")}
    return psr, result
