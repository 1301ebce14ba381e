"""Timing HyperSteer inference: seconds per new steering vector.

Example:
    >>> timing = time_vector_inference(hyper, [("Mention cats.", "Tell me a story.")])   # doctest: +SKIP
    >>> timing["seconds_per_vector"]                                                      # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any


def time_vector_inference(hyper: Any, pairs: Sequence[tuple[str, str]],
                          warmup: tuple[str, str] | None = None) -> dict[str, Any]:
    """Median seconds of one ``hyper.steering_params(s, x)`` call (the vector, with its gates when gated) over unseen
    (steering, base) pairs after a warm-up call, and the per-vector cost of one batched call over all pairs."""
    if not pairs:
        raise ValueError("time_vector_inference needs at least one (steering prompt, base prompt) pair")
    hyper.steering_params(*(warmup or pairs[0]))
    single = []
    for steering_prompt, base_prompt in pairs:
        start = time.perf_counter()
        hyper.steering_params(steering_prompt, base_prompt)
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    hyper.steering_params([s for s, _ in pairs], [b for _, b in pairs])
    batched = (time.perf_counter() - start) / len(pairs)
    return {"seconds_per_vector": statistics.median(single), "seconds_per_vector_batched": batched,
            "n_vectors": len(pairs), "single_seconds": single}
