"""The figures a study reports: row-normalised confusion matrices and learning curves.

Drawn from what the storage holds (a trial's ``test_confusion`` and ``curves`` user attrs), so
the runner can attach them to each trial as Optuna artifacts and `report` can redraw them later
without re-training. Plain `matplotlib.figure.Figure` objects on the Agg canvas: no display, no
pyplot state (the trial pages draw on a background thread) and fixed margins instead of
`tight_layout`, which draws every figure twice; every trial pays for these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import matplotlib
import numpy as np
from matplotlib.figure import Figure

DPI = 100
COLORS = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
Target = TypeVar("Target", Path, BinaryIO)  # where a figure's PNG goes (a file name or a binary stream), returned


@dataclass(frozen=True)
class Curve:
    """One trial's per-epoch curves (its ``curves`` user attr) under a legend label."""

    label: str
    curves: Mapping[str, list[Any]]
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


def confusion_figure(confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str,
                     path: Target) -> Target:
    """A row-normalised confusion matrix, values to 2 decimals, class names on both axes and
    each true row's n on the vertical one; PNG to `path` (a file name or a binary stream)."""
    k = len(class_names)
    width, height = 1.1 * k + 3.0, 1.0 * k + 1.8
    fig = Figure(figsize=(width, height), dpi=DPI)
    left, bottom = 2.3 / width, 1.3 / height  # room for "Proliferative (n=123)" and rotated names
    ax = fig.add_axes((left, bottom, 1 - left - 0.2 / width, 1 - bottom - 0.45 / height))
    shares = normalize_rows(confusion)
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), share in np.ndenumerate(shares):
        ax.text(j, i, f"{share:.2f}", ha="center", va="center", fontsize=9, color="white" if share > 0.5 else "black")
    ax.set_xticks(range(k), list(class_names), rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(k), row_labels(confusion, class_names), fontsize=9)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title, fontsize=10)
    fig.savefig(path, format="png")
    return path


def curves_figure(lines: Sequence[Curve], metric: str, path: Target) -> Target:
    """Train accuracy and the validation metric per epoch for labelled trials; the FE/FT boundary
    is a dotted vertical line, pruned trials are dashed; PNG to `path` (a file name or a stream)."""
    rows = (len(lines) + 2) // 3  # legend rows under the axes
    fig = Figure(figsize=(10, 3.8 + 0.2 * rows), dpi=DPI)
    axes = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.9, bottom=0.16 + 0.05 * rows, wspace=0.18)
    labels = []
    for i, line in enumerate(lines):
        curves = line.curves
        epochs = curves.get("epoch", [])
        if not epochs:
            continue
        color = COLORS[i % len(COLORS)]
        style = "--" if line.pruned else "-"
        label = f"{line.label} (pruned)" if line.pruned else line.label
        labels.append(label)
        for ax, key in ((axes[0], "train_accuracy"), (axes[1], f"val_{metric}")):
            if len(curves.get(key, [])) == len(epochs):  # an objective's rows may lack train_accuracy
                ax.plot(epochs, curves[key], style, color=color, marker=".", label=label)
        fe_epochs = curves.get("phase", []).count("fe")
        if 0 < fe_epochs < len(epochs):
            for ax in axes:
                ax.axvline(fe_epochs + 0.5, color=color, linestyle=":", linewidth=1)
    axes[0].set(title="train accuracy", xlabel="epoch")
    axes[1].set(title=f"validation {metric}", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, _ = axes[1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    fig.text(0.99, 0.01, "dotted: end of the frozen-backbone (FE) phase", ha="right", fontsize=7, color="gray")
    fig.savefig(path, format="png")
    return path
