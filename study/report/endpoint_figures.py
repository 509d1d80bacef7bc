"""The endpoint and calibration figures of a trial (the best trial in `report`): the test split's
ROC curves per image and per patient with both operating points marked, and a reliability
diagram. Same conventions as `study.figures`: plain `Figure` objects on the Agg canvas, no pyplot
state, fixed margins, PNG to a path or a binary stream.

The operating points are drawn where their thresholds (fixed on validation) land on **test**,
with their 95 % intervals as error bars: a point off the curve's corner is the honest picture of a
threshold chosen before the test set was seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from study.figures import COLORS, DPI, Target
from study.report.calibration import ReliabilityPoint
from study.report.endpoints import EndpointResult, LevelResult, SplitPredictions, is_positive, per_patient, score

MARKERS = {"sensitivity>=0.90": ("o", "sens >= 90 % on val"), "youden": ("s", "Youden on val")}


def roc_points(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of ``score >= t`` for every observed t, from (0, 0) to (1, 1)
    (tied scores make one step, as the Mann-Whitney AUC counts them)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    levels = np.unique(scores)[::-1]
    pos, neg = np.sort(scores[positive]), np.sort(scores[~positive])
    tpr = (pos.size - np.searchsorted(pos, levels, side="left")) / max(pos.size, 1)
    fpr = (neg.size - np.searchsorted(neg, levels, side="left")) / max(neg.size, 1)
    return np.r_[0.0, fpr], np.r_[0.0, tpr]


def _level_label(level: LevelResult) -> str:
    auc = level.auc
    return (f"per {level.level} (n={level.n}, {level.n_positive} positive): AUC {auc.estimate:.3f} "
            f"({auc.low:.3f}-{auc.high:.3f})")


def _bar(at: float, low: float, high: float) -> list[list[float]]:
    """An error bar's (below, above) lengths: never negative (an interval may exclude its estimate,
    e.g. BCa on a skewed bootstrap, or be undefined: NaN), so matplotlib always draws it."""
    def length(value: float) -> float:
        return value if math.isfinite(value) and value > 0 else 0.0

    return [[length(at - low)], [length(high - at)]]


def roc_figure(test: SplitPredictions, result: EndpointResult, title: str, path: Target) -> Target:
    """ROC curves of `result.endpoint` on `test`, per image (solid) and per patient (dashed),
    each operating point where its validation threshold lands on test, with 95 % error bars
    (sensitivity up, 1 - specificity across)."""
    s, p = score(test.probabilities, result.endpoint), is_positive(test.labels, result.endpoint)
    curves = {"image": (s, p), "patient": per_patient(s, p, np.asarray(test.groups))}
    fig = Figure(figsize=(6.4, 6.4), dpi=DPI)
    ax = fig.add_axes((0.12, 0.3, 0.84, 0.63))
    ax.plot([0, 1], [0, 1], ":", color="gray", linewidth=1)
    for i, (level, style) in enumerate(((result.image, "-"), (result.patient, "--"))):
        color = COLORS[i % len(COLORS)]
        fpr, tpr = roc_points(*curves[level.level])
        ax.plot(fpr, tpr, style, color=color, drawstyle="default", label=_level_label(level))
        for point in level.points:
            marker, rule = MARKERS.get(point.rule, ("^", point.rule))
            sens, spec = point.sensitivity, point.specificity
            x, y = 1 - spec.estimate, sens.estimate
            if not (math.isfinite(x) and math.isfinite(y)):  # no operating point (validation lacked a class)
                continue
            ax.errorbar([x], [y], xerr=_bar(x, 1 - spec.high, 1 - spec.low), yerr=_bar(y, sens.low, sens.high),
                        fmt=marker, color=color, markersize=7,
                        markerfacecolor="white", capsize=3, linewidth=1,
                        label=f"  {level.level}, {rule} (t={point.threshold:.3f}): "
                              f"sens {y:.2f} ({sens.low:.2f}-{sens.high:.2f}), "
                              f"spec {spec.estimate:.2f} ({spec.low:.2f}-{spec.high:.2f})")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="1 - specificity", ylabel="sensitivity")
    ax.set_aspect("equal", adjustable="box")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower left", fontsize=7, frameon=False,
               bbox_to_anchor=(0.02, 0.0))
    fig.text(0.99, 0.005, "thresholds fixed on validation; intervals over test patients, conditional on them",
             ha="right", fontsize=6, color="gray")
    fig.savefig(path, format="png")
    return path


def reliability_figure(series: Sequence[tuple[str, Sequence[ReliabilityPoint]]], title: str,
                       path: Target) -> Target:
    """A reliability diagram: per labelled series (top label, each endpoint's score), observed
    frequency against mean predicted probability per equal-mass bin, the marker's area growing
    with the bin's images; the diagonal is perfect calibration (below it: overconfident)."""
    fig = Figure(figsize=(5.6, 5.6), dpi=DPI)
    ax = fig.add_axes((0.13, 0.12, 0.82, 0.8))
    ax.plot([0, 1], [0, 1], ":", color="gray", linewidth=1, label="perfectly calibrated")
    for i, (label, points) in enumerate(series):
        if not points:
            continue
        x = [pt.confidence for pt in points]
        y = [pt.observed for pt in points]
        n = np.array([pt.count for pt in points], dtype=np.float64)
        color = COLORS[i % len(COLORS)]
        ax.plot(x, y, "-", color=color, linewidth=1, label=label)
        ax.scatter(x, y, s=12 + 60 * n / n.max(), color=color, zorder=3)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability (bin)", ylabel="observed frequency (bin)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    fig.text(0.99, 0.01, "equal-mass bins; marker area ~ images in the bin", ha="right", fontsize=7, color="gray")
    fig.savefig(path, format="png")
    return path
