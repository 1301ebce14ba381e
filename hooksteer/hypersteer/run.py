"""``hooksteer train-hypersteer CONFIG``: train a HyperSteer hypernetwork from a JSON run file.

The run file holds :class:`~hooksteer.hypersteer.config.HyperSteerConfig` fields plus these run settings:

``model``          base model (default: the embedded SmolLM2-135M-Instruct; ``"tiny:llama"`` / ``"tiny:gpt2"``
                   build a tiny random test model)
``data``           ``loss="distill"`` (the default): :class:`~hooksteer.hypersteer.dataset.DistillDataSettings`
                   fields (``train_concepts``, ``held_out``, ``train_prompts``, ``eval_prompts``, ...): the
                   packaged Wikipedia concepts are split and distillation records are written (cached in
                   ``out/teacher/``, or ``teacher_cache``); the split is saved as ``out/split.json``
``teacher_cache``  folder of the distillation cache (default ``out/teacher``)
``examples``       ``loss="ce"``: JSONL file of SteeringExample records
                   (``concept_id, steering_prompt, base_prompt, target[, finished]``)
``eval_examples``  JSONL file of held-out records (optional)
``eval_fraction``  if no eval file: hold out this fraction of the *concepts* (default 0.1)
``split``          optional DatasetSplit JSON (``hooksteer.data.splits``): training examples are checked
                   against it (no held-out concept or eval prompt may be trained on)
``out``            output folder (default ``runs/hypersteer``)

Command-line flags (``--examples``, ``--eval-examples``, ``--out``, ``--resume``) override the file.
Several processes (GPUs, or CPU processes with ``ACCELERATE_USE_CPU=true``):
``accelerate launch -m hooksteer.cli train-hypersteer run.json`` or ``torchrun --nproc_per_node N -m hooksteer.cli ...``.

Outputs: ``out/config.json`` + ``out/model.safetensors`` (the trained H, load with
``HyperSteer.load(out, model)``), ``out/checkpoint-NNNNNN/`` (resumable), ``out/history.json`` and
``out/train_config.json`` (the run settings).

Example:
    $ cat run.json
    {"variant": "cross_attention", "n_blocks": 2, "epochs": 1, "batch_size": 8, "examples": "train.jsonl"}
    $ hooksteer train-hypersteer run.json --out runs/hyper
    $ hooksteer train-hypersteer run.json --out runs/hyper --resume latest
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from hooksteer.data.schema import SteeringExample
from hooksteer.hypersteer.config import HyperSteerConfig, HyperSteerConfigError

RUN_KEYS = ("model", "data", "teacher_cache", "examples", "eval_examples", "eval_fraction", "split", "out")


def read_examples(path: str | Path) -> list[SteeringExample]:
    """Read SteeringExample records from a JSONL file (one JSON object per line)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"no examples file at {path}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(SteeringExample.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError) as error:
            raise SystemExit(f"{path}:{number}: not a SteeringExample record ({error})") from error
    if not records:
        raise SystemExit(f"{path} holds no examples")
    return records


def split_by_concept(examples: list[SteeringExample], fraction: float, seed: int
                     ) -> tuple[list[SteeringExample], list[SteeringExample]]:
    """Hold out ``fraction`` of the concepts (all their examples) for evaluation."""
    concepts = sorted({e.concept_id for e in examples})
    random.Random(seed).shuffle(concepts)
    n_eval = int(round(fraction * len(concepts)))
    if fraction > 0 and len(concepts) > 1:
        n_eval = max(1, min(n_eval, len(concepts) - 1))
    held = set(concepts[:n_eval])
    return [e for e in examples if e.concept_id not in held], [e for e in examples if e.concept_id in held]


def load_base_model(name: str) -> Any:
    """``"tiny:llama"`` / ``"tiny:gpt2"`` (random test models) or anything :func:`hooksteer.load_model` takes."""
    if name.startswith("tiny:"):
        from hooksteer.testing import tiny_model

        return tiny_model(name.split(":", 1)[1])
    from hooksteer.models import load_model

    return load_model(name, progress=True)


def train_from_run_file(config_path: str | Path, *, examples: str | None = None, eval_examples: str | None = None,
                        out: str | None = None, resume: str | None = None, progress: bool = True) -> Path:
    """Do what ``hooksteer train-hypersteer`` does; returns the output folder."""
    from hooksteer.hypersteer.model import HyperSteer
    from hooksteer.hypersteer.trainer import HyperSteerTrainer, latest_checkpoint
    from hooksteer.models import DEFAULT_MODEL

    try:
        raw = json.loads(Path(config_path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"cannot read run file {config_path}: {error}") from error
    run = {key: raw.pop(key) for key in RUN_KEYS if key in raw}
    try:
        config = HyperSteerConfig.from_dict(raw)
    except HyperSteerConfigError as error:
        raise SystemExit(f"{config_path}: {error}") from error
    out_dir = Path(out or run.get("out") or "runs/hypersteer")
    examples_path = examples or run.get("examples")
    eval_path = eval_examples or run.get("eval_examples")
    data_settings = None
    if config.loss == "distill":
        if examples_path or eval_path:
            raise SystemExit("loss='distill' builds its own data from the packaged concepts (\"data\" in the run "
                             "file); --examples / \"examples\" are for loss='ce'")
        from hooksteer.hypersteer.dataset import DistillDataSettings

        try:
            data_settings = DistillDataSettings(**dict(run.get("data") or {}))
        except (TypeError, ValueError) as error:
            raise SystemExit(f"{config_path}: invalid \"data\" settings: {error}") from error
    elif not examples_path:
        raise SystemExit("give the training examples: --examples FILE.jsonl or \"examples\" in the run file")
    else:
        train = read_examples(examples_path)
        if eval_path:
            held = read_examples(eval_path)
        else:
            train, held = split_by_concept(train, float(run.get("eval_fraction", 0.1)), config.seed)
        if run.get("split"):
            from hooksteer.data.splits import DatasetSplit

            DatasetSplit.load(run["split"]).check_examples(train)
    model = load_base_model(str(run.get("model", DEFAULT_MODEL)))
    hyper = HyperSteer(model, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    if data_settings is not None:
        from hooksteer.hypersteer.dataset import build_distill_dataset

        dataset = build_distill_dataset(model, data_settings, cache_dir=run.get("teacher_cache") or out_dir / "teacher",
                                        progress=progress)
        dataset.split.save(out_dir / "split.json")
        train, held = dataset.train.records, dataset.held_out.records
    settings = {**hyper.config.to_dict(), **run, "examples": str(examples_path) if examples_path else None,
                "eval_examples": eval_path, "out": str(out_dir), "n_train": len(train), "n_eval": len(held),
                "resume": resume}
    resume_from = latest_checkpoint(out_dir) if resume == "latest" else resume
    if resume == "latest" and resume_from is None:
        raise SystemExit(f"--resume latest: no checkpoint-* folder in {out_dir}")
    trainer = HyperSteerTrainer(hyper, train, held, output_dir=out_dir, progress=progress)
    main_process = trainer.accelerator.is_main_process
    if main_process:
        (out_dir / "train_config.json").write_text(json.dumps(settings, indent=2, default=str))
        print(f"Training HyperSteer ({hyper.config.variant}, {hyper.config.n_blocks} blocks, site {hyper.hook_name}) "
              f"on {len(train)} examples, evaluating on {len(held)}, {trainer.accelerator.num_processes} "
              f"process(es) on {trainer.accelerator.device} ...", flush=True)
    result = trainer.train(resume_from=resume_from)
    last_eval = result.eval_loss[-1]["eval_loss"] if result.eval_loss else float("nan")
    if main_process:
        print(f"Done: {result.steps} steps, final eval loss {last_eval:.4f}; saved to {out_dir}/")
    return out_dir
