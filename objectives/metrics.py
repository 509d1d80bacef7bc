"""The metric registry (`REGISTRY`: name, labels, direction, scores or confusion, computation) and
classification metrics from confusion matrices.

A metric is described once, here: the TOML check, the stored records, the report's tables and
intervals, the trial notes, `load_trials` and the CLI read the registry, so adding one that the
confusion matrix determines is one entry below. Every confusion metric derives from the K x K
count matrix (rows: true class, columns: predicted), which is cheap to accumulate on the device
and is what the report draws. The definitions match scikit-learn's: accuracy; balanced accuracy
over the classes present in the labels; macro F1 over the classes present in labels or
predictions; quadratic weighted kappa over the fixed grades 0..K-1 (the Kaggle DR metric,
`cohen_kappa_score(..., weights="quadratic", labels=range(K))`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the study's records read the registry in processes that never load torch
    import torch


@dataclass(frozen=True)
class Metric:
    """One metric, the one place it is described: its name in the TOML and in stored metrics, a
    short label for table headers (``bal_acc``), a long label for prose and the trial note
    (``balanced accuracy``), whether higher is better, whether the report's tables (and the test
    intervals) show it, and how it is computed. The TOML's checks, the records, the reports, the
    notes, `load_trials` and the CLI read it here, so `loss` can never again be maximised by
    default and a new metric is one entry.

    `confusion` computes the metric from count matrices (rows: true class), vectorised over
    leading axes: (..., K, K) -> (...), so the trial's value (`summarize`) and the report's
    patient bootstrap (`study.report.uncertainty.batched_metrics`, thousands of resampled
    matrices at once) are one definition. A metric without it `needs_scores`: it is computed from
    the class scores by the training loop (the loss)."""

    name: str
    label: str
    long_label: str
    higher_is_better: bool
    confusion: Callable[[np.ndarray], np.ndarray] | None = None
    tabulated: bool = True

    @property
    def direction(self) -> str:
        """The Optuna direction that optimises this metric."""
        return "maximize" if self.higher_is_better else "minimize"

    @property
    def needs_scores(self) -> bool:
        """Whether the class scores are needed (the argmax's confusion matrix does not suffice)."""
        return self.confusion is None


def _counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """total, true counts per class, predicted counts per class and hits of (..., K, K) matrices."""
    return cm.sum(axis=(-2, -1)), cm.sum(axis=-1), cm.sum(axis=-2), np.diagonal(cm, axis1=-2, axis2=-1)


def recalls(confusions: np.ndarray) -> np.ndarray:
    """(..., K) per-class recall; NaN for a class absent from the labels (undefined, never 0)."""
    cm = np.asarray(confusions, dtype=np.float64)
    _, true_counts, _, hits = _counts(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(true_counts > 0, hits / true_counts, np.nan)


def accuracy(confusions: np.ndarray) -> np.ndarray:
    """Share of images on the diagonal; 0 for an empty matrix."""
    cm = np.asarray(confusions, dtype=np.float64)
    total, _, _, hits = _counts(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, hits.sum(axis=-1) / total, 0.0)


def balanced_accuracy(confusions: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present in the labels (scikit-learn's); 0 where none is."""
    cm = np.asarray(confusions, dtype=np.float64)
    present = cm.sum(axis=-1) > 0
    n_present = present.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_present > 0, np.where(present, np.nan_to_num(recalls(cm)), 0.0).sum(axis=-1) / n_present, 0.0)


def macro_f1(confusions: np.ndarray) -> np.ndarray:
    """Mean F1 over the classes present in labels or predictions; a class only predicted, never
    present, has F1 0 (scikit-learn's convention)."""
    cm = np.asarray(confusions, dtype=np.float64)
    _, true_counts, pred_counts, hits = _counts(cm)
    recall = recalls(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_counts > 0, hits / pred_counts, 0.0)
        f1 = np.where(precision + np.nan_to_num(recall) > 0, 2 * precision * recall / (precision + recall), 0.0)
        f1 = np.nan_to_num(f1)
        seen = (true_counts > 0) | (pred_counts > 0)
        n_seen = seen.sum(axis=-1)
        return np.where(n_seen > 0, np.where(seen, f1, 0.0).sum(axis=-1) / n_seen, 0.0)


def quadratic_kappas(confusions: np.ndarray) -> np.ndarray:
    """Quadratic weighted Cohen's kappa over the fixed grades 0..K-1 of every (K, K) matrix in
    (..., K, K); 0 where it is undefined (no images, one class everywhere)."""
    cm = np.asarray(confusions, dtype=float)
    k = cm.shape[-1]
    if k < 2:
        return np.zeros(cm.shape[:-2])
    grades = np.arange(k)
    w = (grades[:, None] - grades[None, :]) ** 2 / (k - 1) ** 2
    total = cm.sum(axis=(-2, -1))
    rows, cols = cm.sum(axis=-1), cm.sum(axis=-2)
    safe_total = np.where(total == 0, 1.0, total)
    denominator = np.einsum("...i,ij,...j->...", rows, w, cols) / safe_total
    observed = (cm * w).sum(axis=(-2, -1))
    defined = (total > 0) & (denominator != 0)
    return np.where(defined, 1.0 - observed / np.where(defined, denominator, 1.0), 0.0)


# The registry, in the order tables show the metrics (the trial note leads with the study's metric
# and then `HEADLINE`).
REGISTRY: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", "acc", "accuracy", True, accuracy),
        Metric("balanced_accuracy", "bal_acc", "balanced accuracy", True, balanced_accuracy),
        Metric("macro_f1", "f1", "macro f1", True, macro_f1),
        Metric("kappa", "kappa", "kappa", True, quadratic_kappas),
        Metric("loss", "loss", "loss", False, tabulated=False),
    )
}
HEADLINE = "kappa"  # the test metric a table leads with where the study's metric is not one (a validation loss)
CONFUSION_METRICS = tuple(m.name for m in REGISTRY.values() if m.confusion is not None)  # what `summarize` computes
TABLE_METRICS = tuple(m.name for m in REGISTRY.values() if m.tabulated)  # every split's metrics in the report tables


def metric(name: str) -> Metric:
    """The registered metric `name`; a ValueError naming the known ones (the caller words the
    one-line error)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown metric {name!r}; known: {known()}")
    return REGISTRY[name]


def known() -> str:
    """The registered names as errors list them: the headline first (``kappa, accuracy, ...``)."""
    return ", ".join(headline_first(HEADLINE))


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric `name` is better; unknown names (a stored study's own
    metric, written before the registry) count as higher-is-better, as every metric did then."""
    return REGISTRY[name].higher_is_better if name in REGISTRY else True


def label(name: str) -> str:
    """The short table label of metric `name` (``bal_acc``); an unknown name as it is."""
    return REGISTRY[name].label if name in REGISTRY else name


def long_label(name: str) -> str:
    """The prose label of metric `name` (``balanced accuracy``); an unknown name with spaces for ``_``."""
    return REGISTRY[name].long_label if name in REGISTRY else name.replace("_", " ")


def headline(name: str) -> str:
    """The metric a test table leads with: the study's metric where the tables show it, else
    `HEADLINE` (a study that optimises the validation loss leads with test kappa)."""
    return name if name in TABLE_METRICS else HEADLINE


def headline_first(first: str) -> tuple[str, ...]:
    """`first` (the study's metric), then `HEADLINE`, then every other registered metric: the
    order a trial's note and an ablation's rows show them."""
    return tuple(dict.fromkeys((first, HEADLINE, *REGISTRY)))


def confusion_matrix(target: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts on the tensors' own device (no host sync); rows are true classes."""
    import torch

    flat = target.long() * num_classes + pred.long()
    # scatter_add_, not bincount: bincount on CUDA reads its input's min and max back to the host
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat)).reshape(num_classes, num_classes)


def summarize(confusion: np.ndarray) -> dict[str, float | list[float]]:
    """Every registered confusion metric (accuracy, balanced_accuracy, macro_f1, kappa) and the
    per-class recall of a count matrix; the recall of a class absent from the split is NaN
    (undefined), never 0."""
    cm = np.asarray(confusion, dtype=np.float64)
    values: dict[str, float | list[float]] = {  # CONFUSION_METRICS, in its order
        m.name: float(m.confusion(cm)) for m in REGISTRY.values() if m.confusion is not None}
    values["recall"] = [float(r) for r in recalls(cm)]
    return values


def quadratic_kappa(confusion: np.ndarray) -> float:
    """Quadratic weighted Cohen's kappa of one matrix; 0 where it is undefined (one class everywhere)."""
    return float(quadratic_kappas(confusion))
