"""A distillation dataset from the packaged concepts and base prompts: split, then teacher records.

:func:`build_distill_dataset` splits Wikipedia vital-article concepts and base prompts with
:func:`hooksteer.data.splits.make_split` and writes distillation records
(:func:`hooksteer.distill.build_distill_teacher`, cached) for train concepts × train prompts (training) and
held-out concepts × eval prompts (the eval loss, never trained on). The demo and ``hooksteer
train-hypersteer`` use it; the benchmark builds its own, larger variant.

Example:
    >>> data = build_distill_dataset(model, DistillDataSettings(train_concepts=40), cache_dir="runs/teacher")  # doctest: +SKIP
    >>> len(data.train), data.split.held_out_concepts[:2]                                                      # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hooksteer.data.schema import BasePrompt, Concept
from hooksteer.data.splits import DatasetSplit
from hooksteer.distill import DistillConfig, DistillData, build_distill_teacher

__all__ = ["DistillDataSettings", "DistillDataset", "build_distill_dataset"]


@dataclass
class DistillDataSettings:
    """Which concepts and prompts, and how their distillation records are made."""

    train_concepts: int = field(default=40, metadata={"help": "Wikipedia concepts to train on"})
    held_out: int = field(default=3, metadata={"help": "held-out concepts (never trained on)"})
    train_prompts: int = field(default=4, metadata={"help": "base prompts per training concept"})
    eval_prompts: int = field(default=2, metadata={"help": "held-out base prompts (eval loss, generations)"})
    prompt_sources: list[str] = field(default_factory=lambda: ["hand-written"],
                                      metadata={"help": "base-prompt sources (hand-written, mt-bench, writingbench)"})
    seed: int = field(default=0, metadata={"help": "concept shuffle and split seed"})
    response: str = field(default="prompted", metadata={"help": "whose greedy answer is distilled",
                                                        "choices": ["prompted", "unsteered"]})
    teacher_tokens: int = field(default=32, metadata={"help": "max tokens of a teacher answer"})
    top_k: int = field(default=32, metadata={"help": "teacher log-probs kept per position"})
    teacher_batch: int = field(default=16, metadata={"help": "pairs per teacher batch"})

    def __post_init__(self) -> None:
        for name in ("train_concepts", "held_out", "train_prompts", "eval_prompts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def distill_config(self) -> DistillConfig:
        return DistillConfig(response=self.response, max_new_tokens=self.teacher_tokens, top_k=self.top_k,
                             batch_size=self.teacher_batch)


@dataclass
class DistillDataset:
    """The split, the concepts and prompts in each part, and their distillation records."""

    split: DatasetSplit
    train_concepts: list[Concept]
    held_out_concepts: list[Concept]
    train_prompts: list[BasePrompt]
    eval_prompts: list[BasePrompt]
    train: DistillData
    held_out: DistillData


def build_distill_dataset(model: Any, settings: DistillDataSettings | None = None, *,
                          cache_dir: str | os.PathLike | None = None, generator: Any = None,
                          progress: bool = True) -> DistillDataset:
    """Split the packaged concepts / prompts and build (or reload from ``cache_dir``) their records.

    Raises:
        hooksteer.packaged.PackageMissingError: the concept or prompt data package is not installed.
        ValueError: not enough concepts or base prompts for the requested sizes.
    """
    from hooksteer.data.base_prompts import load_base_prompts
    from hooksteer.data.concepts import load_concepts
    from hooksteer.data.splits import make_split

    s = settings or DistillDataSettings()
    concepts = load_concepts(limit=s.train_concepts + s.held_out, seed=s.seed)
    prompts = load_base_prompts(s.prompt_sources)
    if len(concepts) < s.train_concepts + s.held_out or len(prompts) < s.train_prompts + s.eval_prompts:
        raise ValueError(f"need {s.train_concepts + s.held_out} concepts and {s.train_prompts + s.eval_prompts} "
                         f"base prompts; the packaged data has {len(concepts)} and {len(prompts)}")
    split = make_split(concepts, prompts, seed=s.seed, held_out=s.held_out, held_in=0, eval_prompts=s.eval_prompts)
    train_c, out_c = split.select(concepts, split.train_concepts), split.select(concepts, split.held_out_concepts)
    train_p = split.select(prompts, split.train_prompts)[: s.train_prompts]
    eval_p = split.select(prompts, split.eval_prompts)
    config = s.distill_config()
    train = build_distill_teacher(model, [(c, p) for c in train_c for p in train_p], config, cache_dir=cache_dir,
                                  generator=generator, progress=progress)
    split.check_examples(train.steering_examples())
    held = build_distill_teacher(model, [(c, p) for c in out_c for p in eval_p], config, cache_dir=cache_dir,
                                 generator=generator, progress=progress)
    return DistillDataset(split, train_c, out_c, train_p, eval_p, train, held)
