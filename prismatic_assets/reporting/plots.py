"""Small matplotlib figures for asset metadata and MLflow artifacts, as PNG bytes.

Headless (Agg backend). `markdown_image` embeds a PNG in Dagster markdown metadata so the
plot shows in the asset's page without a separate file server.
"""

from __future__ import annotations

import base64
import functools
import io
from types import ModuleType
from typing import Mapping, Sequence

import numpy as np


@functools.cache
def pyplot() -> ModuleType:
    """matplotlib.pyplot on the headless backend, imported by the first figure (not by every
    Dagster step process that loads the code location: pyplot takes ~0.4 s to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def cluster_sizes_png(sizes: Sequence[int], sparse: Sequence[bool] | np.ndarray, title: str = "Cluster sizes") -> bytes:
    """Bar chart of cluster sizes, largest first, sparse clusters highlighted."""
    counts = np.asarray(sizes)  # (K,)
    is_sparse = np.asarray(sparse, dtype=bool)  # (K,)
    order = np.argsort(-counts, kind="stable")
    fig, ax = pyplot().subplots(figsize=(6, 3))
    colors = ["tab:orange" if is_sparse[i] else "tab:blue" for i in order]
    ax.bar(range(len(order)), counts[order], color=colors)
    ax.set_xlabel("cluster (sorted by size)")
    ax.set_ylabel("samples")
    ax.set_title(f"{title} (orange = sparse)")
    return _png(fig)


def series_png(x: Sequence[float], ys: dict[str, Sequence[float]], xlabel: str, ylabel: str, title: str) -> bytes:
    """Line plot of one or more series against x (G-Vendi per round, loss per step)."""
    fig, ax = pyplot().subplots(figsize=(6, 3))
    for label, y in ys.items():
        ax.plot(list(x), list(y), marker="o", markersize=3, label=label)
    if all(float(v).is_integer() for v in x):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(ys) > 1:
        ax.legend()
    return _png(fig)


def scatter_png(x: Sequence[float], y: Sequence[float], labels: Sequence[str], xlabel: str, ylabel: str,
                title: str) -> bytes:
    """Labelled points (G-Vendi against accuracy, one point per arm)."""
    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    ax.scatter(list(x), list(y))
    for xi, yi, label in zip(x, y, labels):
        ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(fig)


def bars_png(labels: Sequence[str], values: Sequence[float], ylabel: str, title: str) -> bytes:
    fig, ax = pyplot().subplots(figsize=(6, 3))
    ax.bar(list(labels), list(values))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    return _png(fig)


def interval_scatter_png(x: Sequence[float], series: Mapping[str, tuple[Sequence[float], Sequence[float],
                                                                       Sequence[float]]],
                         labels: Sequence[str], xlabel: str, ylabel: str, title: str) -> bytes:
    """Labelled points with vertical interval bars, one colour per series: {name: (y, low, high)}
    (a diversity measure against each split's accuracy and its 95% interval, one point per set)."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for name, (ys, lows, highs) in series.items():
        y, low, high = np.asarray(ys, float), np.asarray(lows, float), np.asarray(highs, float)
        ax.errorbar(list(x), y, yerr=[y - low, high - y], fmt="o", capsize=3, label=name)
        for xi, yi, label in zip(x, y, labels):
            ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)
