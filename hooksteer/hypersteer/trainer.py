"""Training HyperSteer with Hugging Face Accelerate (1 CPU, 1 GPU or several GPUs, same code).

Only H trains: AdamW over H's parameters, linear warm-up then linear decay to 0, gradient clipping,
token-mean loss over the target tokens: KL to the prompt-steered teacher (``config.loss="distill"``, on
:class:`~hooksteer.distill.DistillRecord` s) or cross-entropy (``"ce"``, on SteeringExamples). The same
trainer trains the bounds of :mod:`hooksteer.hypersteer.bounds` (free vectors: oracle and floor). The frozen base model's layer-``l`` activations are
computed once per example (under ``no_grad``) and cached; each step then runs only the blocks above
the injection site with Δ added (``config.start_above_site``).

Launch on several GPUs with ``accelerate launch -m hooksteer.cli train-hypersteer cfg.json``: every
process gets an equal shard of each epoch's shuffled examples; gradients are averaged by DDP.

Example:
    >>> from hooksteer.hypersteer import HyperSteer, HyperSteerConfig, HyperSteerTrainer   # doctest: +SKIP
    >>> hyper = HyperSteer(model, HyperSteerConfig(n_blocks=2, epochs=1, batch_size=8))  # doctest: +SKIP
    >>> trainer = HyperSteerTrainer(hyper, train_examples, eval_examples, output_dir="runs/hyper")  # doctest: +SKIP
    >>> result = trainer.train()                 # saves runs/hyper/{config.json, model.safetensors}  # doctest: +SKIP
    >>> trainer.train(resume_from=latest_checkpoint("runs/hyper"))   # continue an interrupted run  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hooksteer.activations import pad_token_id
from hooksteer.data.schema import SteeringExample
from hooksteer.hypersteer.bounds import ConceptVectors
from hooksteer.hypersteer.data import EncodedExample, HyperBatch, ResidCache, collate, encode_examples
from hooksteer.hypersteer.loss import (
    TeacherShiftCache,
    distill_loss,
    steered_logits_full,
    steered_loss_above_site,
    steered_positions,
    target_logits_above_site,
    target_loss,
)
from hooksteer.hypersteer.model import HyperSteer, HyperSteerFileError

STATE_FILE = "training_state.pt"
CHECKPOINT_PREFIX = "checkpoint-"


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Training checkpoints under ``output_dir``, oldest first (``checkpoint-000120`` ...)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint under ``output_dir`` (``None`` if there is none): pass it to ``train(resume_from=)``."""
    found = checkpoint_dirs(output_dir)
    return found[-1] if found else None


@dataclass
class TrainResult:
    """What :meth:`HyperSteerTrainer.train` returns (also written to ``history.json``)."""

    steps: int
    train_loss: list[dict[str, float]] = field(default_factory=list)
    eval_loss: list[dict[str, float]] = field(default_factory=list)
    target_tokens_seen: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "train_loss": self.train_loss, "eval_loss": self.eval_loss,
                "target_tokens_seen": self.target_tokens_seen, "seconds": self.seconds}


def linear_schedule(warmup_steps: int, total_steps: int):
    """LR multiplier: linear warm-up over ``warmup_steps``, then linear decay to 0 at ``total_steps``.

    Example:
        >>> f = linear_schedule(2, 10); [round(f(s), 2) for s in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = total_steps - step
        return max(0.0, remaining / max(1, total_steps - warmup_steps))

    return multiplier


def parameter_groups(hyper: HyperSteer | ConceptVectors) -> list[dict[str, Any]]:
    """AdamW parameter groups: H's blocks and embeddings at ``config.lr``, the head's weight at ``head_lr`` and
    its bias (the part of Δ shared by every steering prompt) and the direction prior's gain at ``head_bias_lr``
    (a gate head like the head; shared gates like its bias); a vector table and its gates at ``lr``.

    The shared part of a useful vector is large (tens of units of norm at a 243-norm residual), far more than
    a bias can travel at a block-sized learning rate, hence its own rate.
    """
    cfg = hyper.config
    if isinstance(hyper, ConceptVectors):
        return [{"params": [p for p in hyper.parameters() if p.requires_grad], "lr": cfg.lr}]
    groups: dict[str, list[Tensor]] = {"body": [], "head_weight": [], "head_bias": []}
    for name, param in hyper.named_parameters():
        if not param.requires_grad:
            continue
        key = {"head.weight": "head_weight", "head.bias": "head_bias", "prior_gain": "head_bias",
               "gate_head.weight": "head_weight", "gate_head.bias": "head_bias", "gate_params": "head_bias"
               }.get(name, "body")
        groups[key].append(param)
    rates = {"body": cfg.lr, "head_weight": cfg.head_lr if cfg.head_lr is not None else cfg.lr,
             "head_bias": cfg.head_bias_lr if cfg.head_bias_lr is not None else cfg.lr}
    return [{"params": params, "lr": rates[key], "name": key} for key, params in groups.items() if params]


def needs_context(hyper: HyperSteer | ConceptVectors) -> bool:
    """Whether ``hyper`` reads the base model's layer-``l`` activations over the base prompt."""
    return isinstance(hyper, HyperSteer) and hyper.config.variant == "cross_attention"


def batch_deltas(forward: Any, hyper: HyperSteer | ConceptVectors, batch: HyperBatch, resid: Tensor | None) -> Tensor:
    """The batch's vectors: ``forward`` is ``hyper`` itself or its Accelerate/DDP wrapper; ``resid`` is the
    frozen layer-``l`` residual (needed by cross-attention)."""
    if isinstance(hyper, ConceptVectors):
        return forward(hyper.indices(batch.keys or []))
    context = context_mask = None
    if needs_context(hyper):
        if resid is None:
            raise ValueError("the cross_attention variant needs the base model's layer activations")
        context_mask = batch.context_mask()
        context = resid[:, : context_mask.shape[1]]
    return forward(batch.h_ids, batch.h_lengths, context, context_mask, batch.pool_mask)


class HyperSteerTrainer:
    """Trains a :class:`HyperSteer` (or a :class:`~hooksteer.hypersteer.bounds.ConceptVectors` table).

    Args:
        hyper: the hypernetwork (its ``config`` holds the loss and optimisation settings).
        train_examples: training records: :class:`~hooksteer.distill.DistillRecord` s for ``loss="distill"``,
            :class:`~hooksteer.data.schema.SteeringExample` s (or DistillRecords) for ``loss="ce"``.
        eval_examples: held-out records for the periodic eval loss (optional).
        output_dir: where checkpoints and the final weights go (``None``: nothing is written).
        accelerator: an ``accelerate.Accelerator`` (default: a new one with ``config.mixed_precision``).
        progress: show a tqdm bar with the running loss.
    """

    def __init__(self, hyper: HyperSteer | ConceptVectors, train_examples: Sequence[SteeringExample | Any],
                 eval_examples: Sequence[SteeringExample | Any] | None = None, *,
                 output_dir: str | os.PathLike | None = None, accelerator: Any = None, progress: bool = True) -> None:
        from accelerate import Accelerator

        if not isinstance(hyper, HyperSteer | ConceptVectors):
            raise TypeError(f"hyper must be a HyperSteer or ConceptVectors, got {type(hyper).__name__}")
        if not train_examples:
            raise ValueError("train_examples is empty")
        self.config = hyper.config
        self.accelerator = accelerator or Accelerator(mixed_precision=self.config.mixed_precision)
        self.base = hyper.base_model
        self.base.requires_grad_(False)
        self.base.eval()
        current, target = next(self.base.parameters()).device, torch.device(self.accelerator.device)
        if current.type != target.type or (current.type != "cpu" and current.index != target.index):
            self.base.to(self.accelerator.device)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.progress = progress
        self.pad_id = pad_token_id(self.base)
        self.train_data = encode_examples(self.base, train_examples, self.config)
        self.eval_data = encode_examples(self.base, eval_examples, self.config) if eval_examples else []
        storage = self.config.activation_cache
        self.train_cache = ResidCache(self.base, hyper.layer, storage)
        self.eval_cache = ResidCache(self.base, hyper.layer, storage)
        self.train_shifts, self.eval_shifts = TeacherShiftCache(), TeacherShiftCache()

        params = [p for p in hyper.parameters() if p.requires_grad]
        base_ids = {id(p) for p in self.base.parameters()}
        if any(id(p) in base_ids for p in params):  # pragma: no cover - guarded by deep copies
            raise RuntimeError("a base-model parameter ended up in H's optimizer")
        optimizer = torch.optim.AdamW(parameter_groups(hyper), lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.steps_per_epoch = len(self._epoch_batches(0))
        if self.config.max_steps is not None:
            self.total_steps = int(self.config.max_steps)
        else:
            self.total_steps = self.config.epochs * self.steps_per_epoch
        # The scheduler is stepped by hand once per optimizer step (not prepared: Accelerate would step it
        # once per process).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, linear_schedule(self.config.warmup_steps, max(1, self.total_steps)))
        self.model, self.optimizer = self.accelerator.prepare(hyper, optimizer)
        self.step = 0
        self.result = TrainResult(steps=0)

    # ------------------------------------------------------------------ data order
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's batches for ``epoch``: a seeded shuffle, sharded evenly across processes."""
        n = len(self.train_data)
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator).tolist()
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        per_process = n // world
        if per_process == 0:
            raise ValueError(f"{n} training examples cannot be shared by {world} processes")
        shard = order[rank::world][:per_process]
        size = self.config.batch_size
        return [shard[i : i + size] for i in range(0, len(shard), size)]

    # ------------------------------------------------------------------ loss
    @property
    def hyper(self) -> HyperSteer | ConceptVectors:
        """The unwrapped hypernetwork (or vector table)."""
        return self.accelerator.unwrap_model(self.model)

    def batch_loss(self, batch: HyperBatch, cache: ResidCache, shifts: TeacherShiftCache | None = None
                   ) -> tuple[Tensor, Tensor]:
        """``(loss_sum, n_target_tokens)`` of one batch, gradients flowing into H only. ``shifts`` keeps the
        teacher-shift token weights per example (``token_weights="teacher_shift"``; ``None``: computed for this
        batch only)."""
        hyper = self.hyper
        resid = None
        if self.config.start_above_site or needs_context(hyper):
            resid = cache.get(batch)
        delta = batch_deltas(self.model, hyper, batch, resid)
        weights = self._token_weights(batch, cache, shifts)
        if self.config.start_above_site:
            return steered_loss_above_site(self.base, resid, hyper.config.sites, delta, batch, self.config.loss,
                                           self.config.positions, weights)
        logits = steered_logits_full(self.base, batch.tokens, hyper.config.sites, delta,
                                     steered_positions(batch, self.config.positions))
        return distill_loss(logits, batch, weights) if self.config.loss == "distill" else target_loss(logits, batch)

    def _token_weights(self, batch: HyperBatch, cache: ResidCache, shifts: TeacherShiftCache | None) -> Tensor | None:
        """Per-target-token weights of ``config.token_weights`` (``None`` for uniform), from the unsteered model
        computed the way the loss is (above the site, or a full forward)."""
        if self.config.token_weights == "uniform":
            return None
        layer = self.hyper.layer

        def unsteered_logits() -> Tensor:
            mask = batch.loss_mask()
            if self.config.start_above_site:
                return target_logits_above_site(self.base, cache.get(batch), layer, mask)
            return self.base(batch.tokens, padding_side="right")[:, :-1][mask.to(batch.tokens.device)]

        return (shifts if shifts is not None else TeacherShiftCache()).weights(batch, unsteered_logits)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Token-mean eval loss (KL or cross-entropy, as trained) on the eval examples (all processes), or None."""
        if not self.eval_data:
            return None
        was_training = self.model.training
        self.model.eval()
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        mine = self.eval_data[rank::world]
        total = torch.zeros(2, device=self.accelerator.device)
        for start in range(0, len(mine), self.config.batch_size):
            batch = collate(mine[start : start + self.config.batch_size], self.pad_id).to(self.accelerator.device)
            with self.accelerator.autocast():
                loss_sum, n = self.batch_loss(batch, self.eval_cache, self.eval_shifts)
            total += torch.stack([loss_sum.float(), n.float()])
        total = self.accelerator.reduce(total, reduction="sum")
        self.model.train(was_training)
        return float(total[0] / total[1].clamp(min=1))

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, directory: str | os.PathLike, *, epoch: int, batch_in_epoch: int) -> Path | None:
        """Save H (safetensors) and optimizer/scheduler/step (``training_state.pt``) into ``directory``."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.hyper.save(tmp)
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "step": self.step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                 "total_steps": self.total_steps, "history": self.result.to_dict()}
        torch.save(state, tmp / STATE_FILE)
        old = directory.with_name(directory.name + ".old")
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
        return directory

    def _resume(self, directory: str | os.PathLike) -> tuple[int, int]:
        directory = Path(directory)
        state_path = directory / STATE_FILE
        if not state_path.is_file():
            raise HyperSteerFileError(f"no {STATE_FILE} in {directory}: not a training checkpoint")
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
            raise HyperSteerFileError(f"{state_path} cannot be loaded safely (corrupt?): {error}") from error
        if state.get("total_steps") != self.total_steps:
            raise HyperSteerFileError(
                f"checkpoint was made for {state.get('total_steps')} total steps, this run has {self.total_steps}: "
                "resume with the same data and config")
        self.hyper.load_weights(directory)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        history = state.get("history", {})
        self.result = TrainResult(steps=self.step, train_loss=list(history.get("train_loss", [])),
                                  eval_loss=list(history.get("eval_loss", [])),
                                  target_tokens_seen=int(history.get("target_tokens_seen", 0)),
                                  seconds=float(history.get("seconds", 0.0)))
        return int(state["epoch"]), int(state["batch_in_epoch"])

    # ------------------------------------------------------------------ loop
    def train(self, resume_from: str | os.PathLike | None = None) -> TrainResult:
        """Run (or continue) training; returns the loss history. Saves the final H to ``output_dir``."""
        import time

        from tqdm.auto import tqdm

        start_epoch, skip = self._resume(resume_from) if resume_from is not None else (0, 0)
        cfg, accelerator = self.config, self.accelerator
        n_epochs = math.ceil(self.total_steps / max(1, self.steps_per_epoch))
        bar = tqdm(total=self.total_steps, initial=self.step, desc="hypersteer", unit="step",
                   disable=not (self.progress and accelerator.is_local_main_process))
        self.model.train()
        if self.step == 0 and cfg.eval_every:
            self._log_eval(bar)  # the untrained loss, as a baseline
        began = time.perf_counter()
        running: list[float] = []
        for epoch in range(start_epoch, n_epochs):
            batches = self._epoch_batches(epoch)
            for batch_index, indices in enumerate(batches):
                if self.step >= self.total_steps:
                    break
                if epoch == start_epoch and batch_index < skip:
                    continue
                batch = collate([self.train_data[i] for i in indices], self.pad_id).to(accelerator.device)
                with accelerator.autocast():
                    loss_sum, n_tokens = self.batch_loss(batch, self.train_cache, self.train_shifts)
                loss = loss_sum / n_tokens.clamp(min=1)
                accelerator.backward(loss)
                if cfg.grad_clip is not None:
                    accelerator.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.result.target_tokens_seen += int(n_tokens) * accelerator.num_processes
                running.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{running[-1]:.3f}")
                if cfg.log_every and self.step % cfg.log_every == 0:
                    self._log_train(running)
                    running = []
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._log_eval(bar)
                if cfg.save_every and self.output_dir and self.step % cfg.save_every == 0:
                    self._checkpoint(epoch=epoch, batch_in_epoch=batch_index + 1)
            if self.step >= self.total_steps:
                break
        if running:
            self._log_train(running)
        if not self.result.eval_loss or self.result.eval_loss[-1]["step"] != self.step:
            self._log_eval(bar)
        bar.close()
        self.result.steps = self.step
        self.result.seconds += time.perf_counter() - began
        if self.output_dir is not None:
            epoch_done = min(n_epochs, math.ceil(self.step / max(1, self.steps_per_epoch)))
            self._checkpoint(epoch=epoch_done, batch_in_epoch=0)
            if accelerator.is_main_process:
                self.hyper.save(self.output_dir)
                (self.output_dir / "history.json").write_text(json.dumps(self.result.to_dict(), indent=2))
        return self.result

    def _checkpoint(self, *, epoch: int, batch_in_epoch: int) -> None:
        assert self.output_dir is not None
        self.save_checkpoint(self.output_dir / f"{CHECKPOINT_PREFIX}{self.step:06d}", epoch=epoch,
                             batch_in_epoch=batch_in_epoch)
        if self.accelerator.is_main_process and self.config.keep_checkpoints > 0:
            for old in checkpoint_dirs(self.output_dir)[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

    def _log_train(self, losses: list[float]) -> None:
        self.result.train_loss.append({"step": self.step, "loss": sum(losses) / len(losses),
                                       "lr": float(self.scheduler.get_last_lr()[0])})

    def _log_eval(self, bar: Any) -> None:
        value = self.evaluate()
        if value is not None:
            self.result.eval_loss.append({"step": self.step, "eval_loss": value})
            bar.set_postfix_str(f"eval_loss={value:.3f}")


def encoded_lengths(data: Sequence[EncodedExample]) -> dict[str, float]:
    """Mean token counts of encoded examples (for logging)."""
    if not data:
        return {}
    return {"h_tokens": sum(len(d.h_ids) for d in data) / len(data),
            "prompt_tokens": sum(len(d.prompt_ids) for d in data) / len(data),
            "target_tokens": sum(len(d.target_ids) for d in data) / len(data)}


@torch.no_grad()
def mean_loss(hyper: HyperSteer | ConceptVectors, examples: Sequence[Any], *, batch_size: int | None = None) -> float:
    """Token-mean loss (``hyper.config.loss``: KL to the prompted model, or cross-entropy) of ``hyper`` on
    ``examples``, without training (e.g. the eval KL of a trained H, an oracle, or an untrained floor = no
    steering). Always the plain token mean, also for H trained with ``token_weights="teacher_shift"``, so that
    eval KLs compare across settings.

    Example:
        >>> mean_loss(hyper, held_out_records)          # doctest: +SKIP
        0.41
    """
    if not examples:
        raise ValueError("mean_loss needs at least one example")
    base = hyper.base_model
    config = hyper.config
    data = encode_examples(base, examples, config)
    cache = ResidCache(base, hyper.layer, "off")
    pad = pad_token_id(base)
    device = next(base.parameters()).device
    size = batch_size or config.batch_size
    was_training = hyper.training
    hyper.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(data), size):
            batch = collate(data[start : start + size], pad).to(device)
            resid = cache.get(batch)
            delta = batch_deltas(hyper, hyper, batch, resid)
            loss_sum, n = steered_loss_above_site(base, resid, config.sites, delta, batch, config.loss,
                                                  config.positions)
            total, count = total + float(loss_sum), count + int(n)
    finally:
        hyper.train(was_training)
    return total / max(count, 1)
