"""One figure of the multi-behaviour interactions (see :mod:`analysis.multi_behaviour`).

Rows: measured behaviours. Columns: the behaviour steered alone (layer × coefficient), all behaviours
combined at one layer, their difference (the interaction: what the other vectors do to this
behaviour), and simultaneous steering (each behaviour at its own layer) against the behaviour alone at
that layer. Heatmaps share one diverging colour scale centred at 0 (Δ log-odds of the behaviour answer,
nats); cells whose outputs collapsed (≥ 95 % identical) are marked ×.

Example:
    >>> from analysis.multi_behaviour_plot import plot_interactions         # doctest: +SKIP
    >>> plot_interactions(result, "runs/multi/interactions.png")
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.multi_behaviour import MultiBehaviourResult  # noqa: E402


def _heatmap(ax, values: np.ndarray, collapsed: np.ndarray, result: MultiBehaviourResult, limit: float,
             title: str, cmap: str = "RdBu_r"):
    image = ax.imshow(values, cmap=cmap, vmin=-limit, vmax=limit, aspect="auto", origin="lower")
    ax.set_xticks(range(len(result.coefficients)), [f"{c:g}" for c in result.coefficients])
    ax.set_yticks(range(len(result.layers)), [str(layer) for layer in result.layers])
    ax.set_xlabel("coefficient")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    for li, ci in zip(*np.nonzero(collapsed), strict=True):
        ax.text(ci, li, "×", ha="center", va="center", color="black", fontsize=12)
    return image


def plot_interactions(result: MultiBehaviourResult, path: str | os.PathLike | None = None, *, dpi: int = 120):
    """Draw (and save, if ``path`` is given) the interaction figure; returns the matplotlib Figure."""
    names = result.behaviours
    own = result.alone_own
    limit = float(max(np.abs(own).max(), np.abs(result.combined_effect).max(), np.abs(result.interaction).max(), 1e-6))
    fig, axes = plt.subplots(len(names), 4, figsize=(17, 3.2 * len(names)), squeeze=False)
    for b, name in enumerate(names):
        alone_collapsed = result.collapsed("alone")[b]
        combined_collapsed = result.collapsed("combined")
        image = _heatmap(axes[b, 0], own[..., b], alone_collapsed, result, limit, f"{name}: steered alone")
        fig.colorbar(image, ax=axes[b, 0], label="Δ log-odds (nats)")
        image = _heatmap(axes[b, 1], result.combined_effect[..., b], combined_collapsed, result, limit,
                         f"{name}: all {len(names)} combined at one layer")
        fig.colorbar(image, ax=axes[b, 1], label="Δ log-odds (nats)")
        image = _heatmap(axes[b, 2], result.interaction[..., b], combined_collapsed, result, limit,
                         f"{name}: interaction = combined − alone", cmap="PuOr_r")
        fig.colorbar(image, ax=axes[b, 2], label="Δ log-odds difference (nats)")
        ax = axes[b, 3]
        x = np.arange(len(result.coefficients))
        layer = result.simultaneous_layers[name]
        ax.plot(x, result.simultaneous_reference[:, b], "o--", color="grey", label=f"alone at layer {layer}")
        ax.plot(x, result.simultaneous_effect[:, b], "o-", color="C3", label="simultaneous (own layers)")
        for ci in np.nonzero(result.collapsed("simultaneous"))[0]:
            ax.text(ci, result.simultaneous_effect[ci, b], "×", ha="center", va="center", fontsize=12)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(x, [f"{c:g}" for c in result.coefficients])
        ax.set_xlabel("shared coefficient")
        ax.set_ylabel("Δ log-odds (nats)")
        ax.set_title(f"{name}: simultaneous vs alone", fontsize=9)
        ax.legend(fontsize=7)
    layers = ", ".join(f"{n}@{result.simultaneous_layers[n]}" for n in names)
    fig.suptitle(f"Multi-behaviour steering ({result.config.get('model', 'model')}): Δ log-odds of the behaviour "
                 f"answer vs unsteered; × = mode collapse; simultaneous layers {layers}", fontsize=10)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig
