"""Deterministic train / evaluation splits of concepts and base prompts (saved with every dataset).

Concepts are split three ways:

``train``
    concepts used for training (HyperSteer, PSR, ...).
``held_in``
    evaluation concepts that ARE in ``train`` (a subset of it), evaluated on *eval* base prompts only.
``held_out``
    evaluation concepts never seen in training.

Base prompts are split into ``train_prompts`` and ``eval_prompts`` (disjoint). Training examples use
train concepts x train prompts; evaluation uses (held-in | held-out) concepts x eval prompts, so no
(concept, prompt) pair and no held-out concept or eval prompt is ever trained on.
:meth:`DatasetSplit.check_no_leak` verifies this and is called on every save and load.

Example:
    >>> from hooksteer.data.schema import BasePrompt, Concept
    >>> concepts = [Concept(id=f"c{i}", title=f"C{i}") for i in range(20)]
    >>> prompts = [BasePrompt(id=f"p{i}", text=f"Prompt {i}?") for i in range(10)]
    >>> split = make_split(concepts, prompts, seed=0, held_out=4, held_in=3, eval_prompts=3)
    >>> len(split.train_concepts), len(split.held_out_concepts), len(split.eval_prompts)
    (16, 4, 3)
    >>> split.check_no_leak()
"""

from __future__ import annotations

import json
import pathlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hooksteer.data.schema import BasePrompt, Concept, SteeringExample
from hooksteer.io import atomic_write_text

__all__ = ["DataLeakError", "DatasetSplit", "Split", "make_split"]

SPLIT_FORMAT = 1
Role = Literal["train", "held_in", "held_out"]


class DataLeakError(ValueError):
    """A split lets evaluation data into training (or is otherwise inconsistent)."""


@dataclass(frozen=True)
class DatasetSplit:
    """Ids of the concepts and base prompts in each part of a dataset (see the module docstring)."""

    seed: int
    train_concepts: list[str]
    held_in_concepts: list[str]
    held_out_concepts: list[str]
    train_prompts: list[str]
    eval_prompts: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- checks -----------------------------------------------------------------------------------
    def check_no_leak(self) -> None:
        """Raise :class:`DataLeakError` unless held-out concepts and eval prompts are kept out of training.

        Checks: no duplicates inside a part; held-out ∩ train = ∅; held-in ⊆ train;
        held-in ∩ held-out = ∅; train prompts ∩ eval prompts = ∅.
        """
        for name in ("train_concepts", "held_in_concepts", "held_out_concepts", "train_prompts", "eval_prompts"):
            ids = getattr(self, name)
            if len(ids) != len(set(ids)):
                raise DataLeakError(f"{name} contains duplicate ids")
        train = set(self.train_concepts)
        _disjoint("held_out_concepts", self.held_out_concepts, "train_concepts", train)
        _disjoint("held_in_concepts", self.held_in_concepts, "held_out_concepts", set(self.held_out_concepts))
        _disjoint("eval_prompts", self.eval_prompts, "train_prompts", set(self.train_prompts))
        missing = [c for c in self.held_in_concepts if c not in train]
        if missing:
            raise DataLeakError(f"held-in concepts must be training concepts; not in training: {missing[:5]}")

    def check_examples(self, train_examples: Iterable[SteeringExample]) -> None:
        """Raise :class:`DataLeakError` if a training example uses a held-out concept or an eval prompt, or a
        concept that is not a training concept of this split.

        Examples are matched by ``concept_id`` and ``base_prompt_id`` (falling back to the prompt text
        when ``meta["prompt_texts"]`` was recorded by :func:`make_split`). Ids and texts are compared
        after :func:`normalise_text` (case, surrounding and repeated whitespace do not hide a leak).
        """
        train = {normalise_text(c) for c in self.train_concepts}
        held_out = {normalise_text(c) for c in self.held_out_concepts}
        eval_ids = {normalise_text(p) for p in self.eval_prompts}
        eval_texts = {normalise_text(text) for pid, text in self.meta.get("prompt_texts", {}).items()
                      if pid in set(self.eval_prompts) and isinstance(text, str)}
        for example in train_examples:
            concept = normalise_text(example.concept_id)
            if concept in held_out:
                raise DataLeakError(f"training example uses held-out concept {example.concept_id!r}")
            if concept not in train:
                raise DataLeakError(f"training example concept {example.concept_id!r} is not a training concept "
                                    "of the split")
            if normalise_text(example.base_prompt_id) in eval_ids or normalise_text(example.base_prompt) in eval_texts:
                raise DataLeakError(f"training example uses eval prompt {example.base_prompt[:60]!r}")

    # ---- queries ----------------------------------------------------------------------------------
    def role(self, concept_id: str) -> Role | None:
        """``"held_out"``, ``"held_in"``, ``"train"`` (training only) or None (not in the split)."""
        if concept_id in self.held_out_concepts:
            return "held_out"
        if concept_id in self.held_in_concepts:
            return "held_in"
        if concept_id in self.train_concepts:
            return "train"
        return None

    def select(self, items: Sequence[Any], ids: Sequence[str]) -> list[Any]:
        """The items (Concepts or BasePrompts) whose ``id`` is in ``ids``, in ``ids`` order."""
        by_id = {item.id: item for item in items}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"{len(missing)} ids of the split are not among the given items, e.g. {missing[:3]}")
        return [by_id[i] for i in ids]

    # ---- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": SPLIT_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSplit:
        data = dict(data)
        fmt = data.pop("format", SPLIT_FORMAT)
        if fmt != SPLIT_FORMAT:
            raise ValueError(f"unsupported split format {fmt} (expected {SPLIT_FORMAT})")
        split = cls(**data)
        split.check_no_leak()
        return split

    def save(self, path: str | pathlib.Path) -> pathlib.Path:
        """Write the split as JSON (after :meth:`check_no_leak`)."""
        self.check_no_leak()
        return atomic_write_text(pathlib.Path(path), json.dumps(self.to_dict(), indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | pathlib.Path) -> DatasetSplit:
        """Read a split written by :meth:`save` (and check it)."""
        return cls.from_dict(json.loads(pathlib.Path(path).read_text(encoding="utf-8")))


#: Short alias.
Split = DatasetSplit


def normalise_text(text: str) -> str:
    """Case-folded, with whitespace runs collapsed and the ends stripped (what the leak checks compare).

    Example:
        >>> normalise_text("  What is  a Volcano?\n")
        'what is a volcano?'
    """
    return " ".join(str(text).split()).casefold()


def _disjoint(name_a: str, a: Iterable[str], name_b: str, b: set[str]) -> None:
    overlap = sorted(set(a) & b)
    if overlap:
        raise DataLeakError(f"{name_a} and {name_b} overlap in {len(overlap)} ids, e.g. {overlap[:5]}")


def _count(value: int | float, total: int, name: str) -> int:
    """An absolute count from a count (int) or a fraction (float in [0, 1])."""
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} fraction must lie in [0, 1], got {value}")
        value = round(value * total)
    if not 0 <= value <= total:
        raise ValueError(f"{name}={value} is out of range for {total} items")
    return int(value)


def _shuffled_ids(items: Sequence[Concept] | Sequence[BasePrompt], seed: int, salt: str) -> list[str]:
    ids = sorted({item.id for item in items})
    if len(ids) != len(items):
        raise ValueError(f"{salt}: ids are not unique")
    random.Random(f"{seed}-{salt}").shuffle(ids)
    return ids


def make_split(
    concepts: Sequence[Concept],
    base_prompts: Sequence[BasePrompt],
    *,
    seed: int = 0,
    held_out: int | float = 0.1,
    held_in: int | float = 0.1,
    eval_prompts: int | float = 0.2,
) -> DatasetSplit:
    """Split concepts into train / held-in / held-out and base prompts into train / eval, by ``seed``.

    The result depends only on the *set* of ids and the seed (input order does not matter).
    Counts may be given as ints or as fractions (floats); ``held_in`` is counted from the training
    concepts.

    Example:
        >>> from hooksteer.data.schema import BasePrompt, Concept
        >>> cs = [Concept(id=str(i), title=str(i)) for i in range(10)]
        >>> ps = [BasePrompt(id=str(i), text=str(i)) for i in range(5)]
        >>> len(make_split(cs, ps, seed=1, held_out=2, held_in=2, eval_prompts=1).held_out_concepts)
        2
    """
    concept_ids = _shuffled_ids(concepts, seed, "concepts")
    prompt_ids = _shuffled_ids(base_prompts, seed, "prompts")
    n_out = _count(held_out, len(concept_ids), "held_out")
    train = concept_ids[n_out:]
    n_in = _count(held_in, len(train), "held_in")
    n_eval = _count(eval_prompts, len(prompt_ids), "eval_prompts")
    split = DatasetSplit(
        seed=seed,
        train_concepts=train,
        held_in_concepts=train[:n_in],
        held_out_concepts=concept_ids[:n_out],
        train_prompts=prompt_ids[n_eval:],
        eval_prompts=prompt_ids[:n_eval],
        meta={"prompt_texts": {p.id: p.text for p in base_prompts}},
    )
    split.check_no_leak()
    return split
