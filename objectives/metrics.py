"""Classification metrics from one confusion matrix.

Everything derives from the K x K count matrix (rows: true class, columns: predicted), which is
cheap to accumulate on the device and is what the report draws. The definitions match
scikit-learn's: accuracy; balanced accuracy over the classes present in the labels; macro F1 over
the classes present in labels or predictions; quadratic weighted kappa over the fixed grades
0..K-1 (the Kaggle DR metric, `cohen_kappa_score(..., weights="quadratic", labels=range(K))`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the study's records read METRIC_NAMES in processes that never load torch
    import torch

METRIC_NAMES = ("accuracy", "balanced_accuracy", "macro_f1", "kappa")  # what `summarize` computes from a confusion


@dataclass(frozen=True)
class Metric:
    """One metric a study may optimise: its name in the TOML and in stored metrics, a short label
    for tables, whether higher is better, and whether it needs the class scores (the loss) or the
    confusion matrix of the argmax suffices. The one place a metric's direction is written: the
    TOML's checks, the records, the reports and the CLI read it here, so `loss` can never again be
    maximised by default."""

    name: str
    label: str
    higher_is_better: bool
    needs_scores: bool = False

    @property
    def direction(self) -> str:
        """The Optuna direction that optimises this metric."""
        return "maximize" if self.higher_is_better else "minimize"


REGISTRY: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("kappa", "kappa", True),
        Metric("accuracy", "acc", True),
        Metric("balanced_accuracy", "bal_acc", True),
        Metric("macro_f1", "macro_f1", True),
        Metric("loss", "loss", False, needs_scores=True),
    )
}


def metric(name: str) -> Metric:
    """The registered metric `name`; a ValueError naming the known ones (the caller words the
    one-line error)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric `name` is better; unknown names (a stored study's own
    metric, written before the registry) count as higher-is-better, as every metric did then."""
    return REGISTRY[name].higher_is_better if name in REGISTRY else True


def confusion_matrix(target: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts on the tensors' own device (no host sync); rows are true classes."""
    import torch

    flat = target.long() * num_classes + pred.long()
    # scatter_add_, not bincount: bincount on CUDA reads its input's min and max back to the host
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat)).reshape(num_classes, num_classes)


def summarize(confusion: np.ndarray) -> dict[str, float | list[float]]:
    """accuracy, balanced_accuracy, macro_f1, kappa and per-class recall of a count matrix; the
    recall of a class absent from the split is NaN (undefined), never 0."""
    cm = np.asarray(confusion, dtype=np.float64)
    total = cm.sum()
    true_counts = cm.sum(axis=1)
    pred_counts = cm.sum(axis=0)
    hits = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(true_counts > 0, hits / true_counts, np.nan)  # no image of the class: undefined, not 0
        precision = np.where(pred_counts > 0, hits / pred_counts, 0.0)
        f1 = np.where(precision + np.nan_to_num(recall) > 0, 2 * precision * recall / (precision + recall), 0.0)
        f1 = np.nan_to_num(f1)  # a class only predicted, never present: F1 0 (scikit-learn's convention)
    present = true_counts > 0
    seen = present | (pred_counts > 0)
    return {
        "accuracy": float(hits.sum() / total) if total else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "kappa": quadratic_kappa(cm),
        "recall": [float(r) for r in recall],
    }


def quadratic_kappa(confusion: np.ndarray) -> float:
    """Quadratic weighted Cohen's kappa; 0 where it is undefined (one class everywhere)."""
    cm = np.asarray(confusion, dtype=np.float64)
    k = cm.shape[0]
    total = cm.sum()
    if total == 0 or k < 2:
        return 0.0
    grades = np.arange(k)
    weights = (grades[:, None] - grades[None, :]) ** 2 / (k - 1) ** 2
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / total
    denominator = (weights * expected).sum()
    if denominator == 0:
        return 0.0
    return float(1.0 - (weights * cm).sum() / denominator)
