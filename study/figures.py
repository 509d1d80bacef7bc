"""The figures a study reports: row-normalised confusion matrices and learning curves.

Drawn from what the storage holds (a trial's ``test_confusion`` and ``curves`` user attrs), so
the runner can attach them to each trial as Optuna artifacts and `report` can redraw them later
without re-training. Matplotlib's non-interactive Agg backend: no display needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402


@dataclass(frozen=True)
class Curve:
    """One trial's per-epoch curves (its ``curves`` user attr) under a legend label."""

    label: str
    curves: Mapping[str, list]
    pruned: bool = False


def normalize_rows(confusion: Sequence[Sequence[int]]) -> np.ndarray:
    """Each true class's row divided by its count (a class absent from the split stays 0)."""
    counts = np.asarray(confusion, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def row_labels(confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> list[str]:
    """Each true class with its count, ``Mild (n=7)``: a 0.50 in a row of 2 images is one image."""
    totals = np.asarray(confusion, dtype=np.int64).sum(axis=1)
    return [f"{name} (n={int(total)})" for name, total in zip(class_names, totals)]


def confusion_figure(confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str, path: Path) -> Path:
    """A row-normalised confusion matrix, values to 2 decimals, class names on both axes and
    each true row's n on the vertical one."""
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.1 * k + 3.0, 1.0 * k + 1.8), dpi=110)
    display = ConfusionMatrixDisplay(normalize_rows(confusion), display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", values_format=".2f", colorbar=False, xticks_rotation=30)
    display.im_.set_clim(0.0, 1.0)
    ax.set_yticks(range(k), row_labels(confusion, class_names))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def curves_figure(lines: Sequence[Curve], metric: str, path: Path) -> Path:
    """Train accuracy and the validation metric per epoch for labelled trials; the FE/FT boundary
    is a dotted vertical line, pruned trials are dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, line in enumerate(lines):
        curves = line.curves
        epochs = curves.get("epoch", [])
        if not epochs:
            continue
        color = colors[i % len(colors)]
        style = "--" if line.pruned else "-"
        label = f"{line.label} (pruned)" if line.pruned else line.label
        axes[0].plot(epochs, curves.get("train_accuracy", []), style, color=color, marker=".", label=label)
        axes[1].plot(epochs, curves.get(f"val_{metric}", []), style, color=color, marker=".", label=label)
        fe_epochs = curves.get("phase", []).count("fe")
        if 0 < fe_epochs < len(epochs):
            for ax in axes:
                ax.axvline(fe_epochs + 0.5, color=color, linestyle=":", linewidth=1)
    axes[0].set(title="train accuracy", xlabel="epoch")
    axes[1].set(title=f"validation {metric}", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    fig.text(0.99, 0.01, "dotted: end of the frozen-backbone (FE) phase", ha="right", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(labels) - 1) // 3), 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path
