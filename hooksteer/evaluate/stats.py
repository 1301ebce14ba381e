"""Bootstrap confidence intervals over concepts, for benchmark tables.

With ~20 concepts × a few prompts, steering scores are noisy. Every benchmark table reports, per method,
the mean over concepts with a bootstrap 95 % interval (concepts resampled with replacement), and a claim
"A beats B" needs the interval of the *paired* difference (same concepts resampled for both) to exclude 0.

Example:
    >>> ci = bootstrap_ci([0.1, 0.2, 0.3, 0.4], seed=0)
    >>> round(ci.mean, 3), ci.low <= ci.mean <= ci.high
    (0.25, True)
    >>> diff = paired_difference_ci([0.5, 0.6, 0.7, 0.8], [0.1, 0.2, 0.3, 0.4], seed=0)
    >>> diff.excludes_zero, round(diff.mean, 3)
    (True, 0.4)
    >>> str(bootstrap_ci([1.0, 1.0], seed=0))
    '1.000 [1.000, 1.000]'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["Interval", "bootstrap_ci", "paired_difference_ci", "per_concept_scores"]


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap interval (``level`` e.g. 0.95), over ``n`` concepts."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (a difference that is not noise)."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "excludes_zero": self.excludes_zero}

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _check(values: Sequence[float], what: str) -> torch.Tensor:
    data = torch.as_tensor([float(v) for v in values], dtype=torch.float64)
    if data.numel() == 0:
        raise ValueError(f"{what}: no values to bootstrap")
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"{what}: values must be finite")
    return data


def _interval(data: torch.Tensor, resamples: int, level: float, seed: int) -> Interval:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, data.numel(), (resamples, data.numel()), generator=generator)
    means = data[picks].mean(dim=1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    mean = float(data.mean())
    return Interval(mean=mean, low=min(low, mean), high=max(high, mean), n=int(data.numel()), level=level)


def bootstrap_ci(values: Sequence[float], *, resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> Interval:
    """Mean of ``values`` (one per concept) with a percentile-bootstrap interval."""
    return _interval(_check(values, "bootstrap_ci"), resamples, level, seed)


def paired_difference_ci(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, level: float = 0.95,
                         seed: int = 0) -> Interval:
    """Mean of ``a − b`` over paired concepts (same order) with a bootstrap interval; ``a`` beats ``b`` when
    :attr:`Interval.excludes_zero` and the mean is positive."""
    left, right = _check(a, "paired_difference_ci (a)"), _check(b, "paired_difference_ci (b)")
    if left.shape != right.shape:
        raise ValueError(f"paired values need the same length, got {left.numel()} and {right.numel()}")
    return _interval(left - right, resamples, level, seed)


def per_concept_scores(rows: Sequence[Mapping[str, Any]], method: str, concepts: Sequence[str],
                       key: str = "score") -> list[float]:
    """``key`` of ``method`` for each concept id in ``concepts`` (in that order) from per-concept result rows
    (dicts with ``method``, ``concept_id`` and ``key``).

    Raises:
        KeyError: a concept has no row for ``method``.
    """
    table = {(r["method"], r["concept_id"]): r[key] for r in rows}
    missing = [c for c in concepts if (method, c) not in table]
    if missing:
        raise KeyError(f"method {method!r} has no result for concept(s) {missing[:5]}")
    values = [float(table[(method, c)]) for c in concepts]
    if any(math.isnan(v) for v in values):
        raise ValueError(f"method {method!r} has a NaN {key}")
    return values
