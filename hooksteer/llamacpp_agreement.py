"""Does an exported control vector do in llama.cpp what the vector does in hooksteer?

Compares the next-token log-probability *shift* caused by steering in two implementations of the same
GGUF model: hooksteer's steered TransformerLens model (weights dequantised to float32) and llama.cpp
(the quantised weights, e.g. Q4_1), steered with the exported ``.gguf`` file as llama.cpp parses it
(:func:`hooksteer.llamacpp.read_with_ggml`) through ``llama_set_adapter_cvec``. Raw logits differ by
the quantisation; the shifts should agree.

Example:
    >>> report = shift_agreement(model, llm, "love.gguf", vector, prompts)        # doctest: +SKIP
    >>> report["mean_correlation"], report["top1_agreement"]                       # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hooksteer.hooks import steer
from hooksteer.llamacpp import LlamaCppModel, directions, read_with_ggml

__all__ = ["ggml_buffer", "log_softmax", "shift_agreement", "torch_next_token_logits"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities from logits (float64, numerically stable)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def ggml_buffer(path: str | os.PathLike, n_embd: int, shift: int = 0) -> np.ndarray:
    """The ``llama_set_adapter_cvec`` buffer of a control vector parsed by llama.cpp's own GGUF reader.

    ``shift`` moves every direction by that many layers (``direction.N`` applied at layer ``N + shift``):
    used to show that the mapping is exact -- agreement drops when the vector lands one layer off.
    """
    arch, arrays = read_with_ggml(path)
    if arch != "controlvector":
        raise ValueError(f"{path}: architecture {arch!r}")
    layers = {n + shift: a for n, a in arrays.items() if n + shift >= 1}
    data = np.zeros(n_embd * max(layers), dtype=np.float32)
    for n, array in layers.items():
        data[n_embd * (n - 1): n_embd * n] += array   # common_control_vector_load_one: layer N at N - 1
    return data


@torch.no_grad()
def torch_next_token_logits(model: Any, tokens: Sequence[int], steering: Any = None) -> np.ndarray:
    """Last-position logits of a HookedTransformer, steered at every position when ``steering`` is given."""
    ids = torch.tensor([list(tokens)], device=model.cfg.device)
    if steering is None:
        return model(ids)[0, -1].float().cpu().numpy()
    with steer(model, steering, positions="all"):
        return model(ids)[0, -1].float().cpu().numpy()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def shift_agreement(
    model: Any,
    llm: LlamaCppModel,
    path: str | os.PathLike,
    steering: Any,
    prompts: Sequence[Sequence[int]],
    *,
    top_k: int = 20,
    shift: int = 0,
    base: Mapping[str, list[np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Agreement of next-token log-prob shifts between hooksteer and llama.cpp on token-id prompts.

    For each prompt: Δ = log p(steered) − log p(unsteered) in each implementation, compared on the union
    of both steered distributions' ``top_k`` tokens (Pearson correlation), plus whether the steered top-1
    token is the same. ``path`` is the exported ``.gguf`` of ``steering``; it must hold exactly the
    directions :func:`hooksteer.llamacpp.directions` computes (checked, bit for bit). ``base`` reuses
    unsteered logits ``{"torch": [...], "llama": [...]}`` across calls.
    """
    _, parsed = read_with_ggml(path)
    expected = directions(steering, n_layers=llm.n_layers, d_model=llm.n_embd)
    if sorted(parsed) != sorted(expected) or any(not np.array_equal(parsed[n], expected[n]) for n in expected):
        raise AssertionError(f"{path} does not hold the steering's directions as llama.cpp parses it")
    if base is None:
        llm.set_control_vector(None)
        base = {"torch": [torch_next_token_logits(model, p) for p in prompts],
                "llama": [llm.next_token_logits(p) for p in prompts]}
    llm.set_control_vector(ggml_buffer(path, llm.n_embd, shift))
    try:
        steered_llama = [llm.next_token_logits(p) for p in prompts]
    finally:
        llm.set_control_vector(None)
    rows = []
    for i, tokens in enumerate(prompts):
        steered_torch = torch_next_token_logits(model, tokens, steering)
        lp = {"torch": (log_softmax(base["torch"][i]), log_softmax(steered_torch)),
              "llama": (log_softmax(base["llama"][i]), log_softmax(steered_llama[i]))}
        top = np.union1d(np.argsort(-lp["torch"][1])[:top_k], np.argsort(-lp["llama"][1])[:top_k])
        d_torch = (lp["torch"][1] - lp["torch"][0])[top]
        d_llama = (lp["llama"][1] - lp["llama"][0])[top]
        rows.append({
            "n_tokens": len(tokens),
            "correlation": _pearson(d_torch, d_llama),
            "top1_torch": int(np.argmax(lp["torch"][1])),
            "top1_llama": int(np.argmax(lp["llama"][1])),
            "top1_unsteered_torch": int(np.argmax(lp["torch"][0])),
            "top1_unsteered_llama": int(np.argmax(lp["llama"][0])),
            "mean_abs_shift_torch": float(np.abs(d_torch).mean()),
            "mean_abs_shift_llama": float(np.abs(d_llama).mean()),
            "unsteered_logit_correlation": _pearson(base["torch"][i], base["llama"][i]),
        })
    correlations = [r["correlation"] for r in rows]
    return {
        "top_k": top_k,
        "shift": shift,
        "mean_correlation": float(np.mean(correlations)),
        "min_correlation": float(np.min(correlations)),
        "top1_agreement": float(np.mean([r["top1_torch"] == r["top1_llama"] for r in rows])),
        "top1_changed_by_steering": float(np.mean([r["top1_torch"] != r["top1_unsteered_torch"] for r in rows])),
        "unsteered_top1_agreement": float(np.mean([r["top1_unsteered_torch"] == r["top1_unsteered_llama"]
                                                   for r in rows])),
        "prompts": rows,
        "base": base,
    }
