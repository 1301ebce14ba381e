"""Token-level effects of prompt steering: where the instruction acts, and whether PSR found the same tokens.

Given the teacher change Δ_t (see :mod:`hooksteer.psr.teacher`) on a response's tokens:

* :func:`delta_norms` – ‖Δ_t‖ per token; :func:`projections` – Δ_t onto a steering vector's unit direction
  (e.g. DiffMean or HyperSteer), i.e. how much of the change is along that vector;
* :func:`concentration` – how concentrated Σ‖Δ_t‖ is over tokens: share carried by the top 10 % of tokens
  (0.1 if uniform), Gini coefficient (0 uniform, → 1 all on one token);
* :func:`pearson` / :func:`spearman` – correlation of a PSR's λ_t with ‖Δ_t‖;
* :func:`heatmap_png` / :func:`heatmap_html` – one row per quantity over the response's tokens.

Example:
    >>> import torch
    >>> stats = concentration(torch.tensor([10.0] + [0.0] * 9))
    >>> round(stats["top10_share"], 2), round(stats["gini"], 2)
    (1.0, 0.9)
    >>> round(spearman(torch.tensor([1., 2, 3]), torch.tensor([10., 20, 90])), 3)
    1.0
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["delta_norms", "projections", "concentration", "pearson", "spearman", "heatmap_png", "heatmap_html",
           "token_labels"]


def _vector(values: Any, name: str) -> Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float64).reshape(-1) if not isinstance(values, Tensor) else (
        values.detach().double().reshape(-1).cpu())
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return tensor


def delta_norms(delta: Float[Tensor, "n d_model"]) -> Float[Tensor, " n"]:
    """‖Δ_t‖ for every token."""
    if delta.ndim != 2 or delta.shape[0] == 0:
        raise ValueError(f"delta must have shape (n_tokens >= 1, d_model), got {tuple(delta.shape)}")
    return delta.float().norm(dim=-1)


def projections(delta: Float[Tensor, "n d_model"], vector: Any) -> Float[Tensor, " n"]:
    """Δ_t · v/‖v‖ for every token (``vector``: a tensor or a :class:`hooksteer.SteeringVector`)."""
    v = getattr(vector, "vector", vector)
    v = torch.as_tensor(v, dtype=torch.float32).reshape(-1)
    if delta.ndim != 2 or delta.shape[-1] != v.shape[0]:
        raise ValueError(f"delta {tuple(delta.shape)} and vector of width {v.shape[0]} do not match")
    norm = v.norm()
    if not bool(torch.isfinite(v).all()) or float(norm) == 0:
        raise ValueError("vector must be finite and non-zero")
    return delta.float() @ (v / norm)


def concentration(norms: Any, top: float = 0.1) -> dict[str, float]:
    """Share of Σ values carried by the top ``top`` fraction of tokens (at least one), and the Gini coefficient.

    Values must be ≥ 0 (e.g. ‖Δ_t‖). Returns ``top10_share`` (named after the default ``top``), ``gini``,
    ``n_tokens`` and ``max_over_median``.
    """
    x = _vector(norms, "norms")
    if bool((x < 0).any()):
        raise ValueError("concentration needs non-negative values (e.g. norms)")
    if not 0 < top <= 1:
        raise ValueError(f"top must be in (0, 1], got {top}")
    total = float(x.sum())
    n = x.numel()
    k = max(1, math.ceil(top * n))
    ordered = torch.sort(x).values
    share = float(ordered[-k:].sum()) / total if total > 0 else float("nan")
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    gini = float((2 * (ranks * ordered).sum()) / (n * total) - (n + 1) / n) if total > 0 else float("nan")
    median = float(ordered[(n - 1) // 2])
    return {"top10_share": share, "gini": gini, "n_tokens": n,
            "max_over_median": float(ordered[-1]) / median if median > 0 else float("inf")}


def pearson(a: Any, b: Any) -> float:
    """Pearson correlation (nan when either input is constant)."""
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"inputs have {x.numel()} and {y.numel()} values: lengths differ")
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    return float((x * y).sum()) / denom if denom > 0 else float("nan")


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (ties share the mean rank)."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, x.numel() + 1, dtype=x.dtype)
    for value in torch.unique(x):
        tied = x == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"inputs have {x.numel()} and {y.numel()} values: lengths differ")
    return pearson(_ranks(x), _ranks(y))


def token_labels(model_or_tokenizer: Any, token_ids: Sequence[int] | Tensor) -> list[str]:
    """Readable per-token strings (whitespace made visible) for heatmap axes."""
    tokenizer = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    ids = [int(i) for i in (token_ids.tolist() if isinstance(token_ids, Tensor) else token_ids)]
    return [tokenizer.decode([i]).replace("\n", "⏎").replace(" ", "·") or "∅" for i in ids]


def _rows(tokens: Sequence[str], rows: Mapping[str, Any]) -> dict[str, Tensor]:
    if not tokens:
        raise ValueError("no tokens to draw")
    if not rows:
        raise ValueError("no rows to draw")
    out = {}
    for label, values in rows.items():
        v = _vector(values, label)
        if v.numel() != len(tokens):
            raise ValueError(f"row {label!r} has {v.numel()} values for {len(tokens)} tokens")
        out[label] = v
    return out


def heatmap_png(tokens: Sequence[str], rows: Mapping[str, Any], path: str | Path, *,
                title: str = "Per-token effects", normalise: bool = True) -> Path:
    """Save a heatmap with one row per quantity (e.g. ‖Δ_t‖ and λ_t) over the tokens.

    With ``normalise=True`` each row is divided by its maximum, so rows of different units share one
    colour scale (the colour bar reads "fraction of row maximum").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = _rows(tokens, rows)
    matrix = torch.stack([v / v.abs().max() if normalise and float(v.abs().max()) > 0 else v
                          for v in data.values()]).numpy()
    width = min(max(6.0, 0.32 * len(tokens) + 2), 40.0)
    fig, ax = plt.subplots(figsize=(width, 1.0 + 0.6 * len(data)))
    image = ax.imshow(matrix, aspect="auto", cmap="magma" if matrix.min() >= 0 else "coolwarm")
    ax.set_yticks(range(len(data)), list(data))
    ax.set_xticks(range(len(tokens)), list(tokens), rotation=90, fontsize=7)
    ax.set_xlabel("response token")
    ax.set_ylabel("quantity")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="fraction of row maximum" if normalise else "value", pad=0.01)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def heatmap_html(tokens: Sequence[str], rows: Mapping[str, Any], *, title: str = "") -> str:
    """The same heatmap as HTML (one line of coloured tokens per row; hover shows the value).

    Example:
        >>> "<table" in heatmap_html(["a", "b"], {"λ": [0.0, 1.0]})
        True
    """
    data = _rows(tokens, rows)
    parts = [f"<div><b>{html.escape(title)}</b></div>" if title else "", "<table style='border-collapse:collapse'>"]
    for label, values in data.items():
        top = float(values.abs().max()) or 1.0
        cells = []
        for token, value in zip(tokens, values.tolist(), strict=True):
            strength = abs(value) / top
            colour = f"rgba(220,60,30,{strength:.2f})" if value >= 0 else f"rgba(30,90,220,{strength:.2f})"
            cells.append(f"<span title='{value:.4g}' style='background:{colour};padding:1px 2px;"
                         f"font-family:monospace'>{html.escape(token)}</span>")
        parts.append(f"<tr><td style='padding-right:8px'><b>{html.escape(label)}</b></td><td>{''.join(cells)}</td></tr>")
    parts.append("</table>")
    return "".join(parts)
