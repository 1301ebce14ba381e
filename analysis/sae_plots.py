"""Plots for SAE comparisons (matplotlib; every axis labelled, heatmaps with colour bars).

Example:
    >>> from analysis.sae_plots import plot_cosines, plot_retained                # doctest: +SKIP
    >>> fig = plot_cosines(compare_vector(vec, sae), title="DiffMean vs SAE features")
    >>> fig.savefig("cosines.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["plot_cosines", "plot_feature_heatmap", "plot_retained"]


def _figure(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=size)
    return fig, ax


def plot_cosines(comparison: Any, *, top: int = 5, title: str | None = None, ax: Any = None) -> Any:
    """Histogram of the vector's cosine to every decoder direction, with the top features marked."""
    fig, ax = _figure(ax, (7, 4))
    cosines = comparison.cosines.numpy()
    ax.hist(cosines, bins=80, color="tab:blue", alpha=0.8)
    ax.set_yscale("log")
    for feature, value in list(zip(comparison.top_features, comparison.top_cosines, strict=True))[:top]:
        ax.axvline(value, color="tab:red", lw=0.8, alpha=0.7)
        ax.annotate(str(feature), (value, 1), rotation=90, fontsize=7, color="tab:red",
                    xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("cosine similarity to decoder direction")
    ax.set_ylabel("number of SAE features (log)")
    ax.set_title(title or f"{comparison.hook_name}: vector vs {len(cosines)} SAE features")
    fig.tight_layout()
    return fig


def plot_retained(results: Mapping[str, Sequence[Any]], *, title: str | None = None) -> Any:
    """Retained steering effect and reconstruction cosine against k, one line per vector."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in results.items():
        ks = [r.k for r in rows]
        left.plot(ks, [r.retained for r in rows], marker="o", label=name)
        right.plot(ks, [r.cosine for r in rows], marker="o", label=name)
    for ax, label in ((left, "effect retained  (1 − KL(full‖top-k) / KL(full‖none))"),
                      (right, "cosine(top-k reconstruction, vector)")):
        ax.set_xscale("log")
        ax.set_xlabel("k (SAE features in the reconstruction)")
        ax.set_ylabel(label)
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    left.set_title("steering effect kept by top-k features")
    right.set_title("direction kept by top-k features")
    fig.suptitle(title or "vector replaced by its top-k SAE features")
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_feature_heatmap(
    model: Any, sae: Any, feature_ids: Sequence[int], text: str, *, hook_name: str | None = None,
    max_tokens: int = 40, title: str | None = None,
) -> Any:
    """Token-by-feature activation heatmap of ``feature_ids`` on one text (first position skipped)."""
    import matplotlib.pyplot as plt

    from hooksteer.methods.sae_feature import feature_activations

    acts = next(iter(feature_activations(model, sae, [text], hook_name=hook_name)))
    ids = [int(f) for f in feature_ids]
    values = acts[:max_tokens, ids].T.numpy()
    tokens = model.to_tokens(text)[0].tolist()[1 : 1 + values.shape[1]]
    labels = [model.tokenizer.decode([t]).replace("\n", "\\n") for t in tokens]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(labels) + 2), 0.45 * len(ids) + 1.8))
    image = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(ids)), [f"f{f}" for f in ids], fontsize=8)
    ax.set_xlabel("token")
    ax.set_ylabel("SAE feature")
    ax.set_title(title or "SAE feature activations")
    fig.colorbar(image, ax=ax, label="activation")
    fig.tight_layout()
    return fig
