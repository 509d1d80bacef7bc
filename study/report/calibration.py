"""Calibration of a classifier's probabilities on the test split: does "0.8" mean 80 %?

Three figures, each with a 95 % cluster-bootstrap interval over test patients (percentile; the
same resampling as `study.report.endpoints`):

- multiclass Brier score: per image, the sum over classes of (p_k - y_k)^2, averaged over images
  (0 is perfect; it mixes calibration and discrimination, so read it beside the ECE);
- top-label expected calibration error: images sorted by their top probability (confidence)
  into 15 bins of equal mass (equal numbers of images: with 73 % grade 0, equal-width bins leave
  most bins almost empty), ECE = sum over bins of (n_b / n) |accuracy_b - confidence_b|;
- the binary ECE of an endpoint's score (summed probability of its positive classes) against the
  endpoint's label, 15 equal-mass bins: is "P(referable) = 0.3" right 30 % of the time?

The bin edges are fixed on the observed test set and kept in every resample (like the endpoint's
thresholds, the interval is conditional on them); this makes the bootstrap a product of resample
weights with per-patient bin sums. ECE is biased upward in small samples (|mean| of noise > 0), so
a perfectly calibrated model on 200 images still shows an ECE of a few points: compare variants
on the same test set, not against 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from study.report.endpoints import (
    Interval,
    SplitPredictions,
    compact,
    is_positive,
    n_groups,
    percentile_interval,
    resample_weights,
    score,
)
from study.spaces.report_layout import Endpoint

BINS = 15


@dataclass(frozen=True)
class ReliabilityPoint:
    """One bin of a reliability diagram: mean confidence, observed frequency, images in it."""

    confidence: float
    observed: float
    count: int


@dataclass(frozen=True)
class CalibrationResult:
    """Brier and top-label ECE of the test split, and each endpoint's binary ECE, by name."""

    brier: Interval
    ece: Interval
    endpoint_ece: dict[str, Interval]
    resamples: int
    seed: int
    bins: int = BINS


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(labels), k))
    out[np.arange(len(labels)), np.asarray(labels)] = 1.0
    return out


def brier_per_image(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each image's sum over classes of (p_k - y_k)^2 (between 0 and 2)."""
    p = np.asarray(probabilities, dtype=np.float64)
    return ((p - one_hot(labels, p.shape[1])) ** 2).sum(axis=1)


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: the mean over images of the sum over classes of (p_k - y_k)^2."""
    return float(brier_per_image(probabilities, labels).mean())


def top_label(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's confidence (its largest probability) and whether its argmax is right."""
    p = np.asarray(probabilities, dtype=np.float64)
    return p.max(axis=1), (p.argmax(axis=1) == np.asarray(labels)).astype(np.float64)


def equal_mass_bins(confidence: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Each image's bin (0..bins-1): images sorted by confidence (stable) cut into `bins` runs of
    equal size (sizes differ by at most one; fewer bins than images is fine)."""
    order = np.argsort(np.asarray(confidence), kind="stable")
    out = np.empty(order.size, dtype=np.int64)
    for b, members in enumerate(np.array_split(order, min(bins, max(order.size, 1)))):
        out[members] = b
    return out


def ece(confidence: np.ndarray, outcome: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error over equal-mass bins: sum_b (n_b / n) |mean outcome - mean confidence|."""
    confidence, outcome = np.asarray(confidence, dtype=np.float64), np.asarray(outcome, dtype=np.float64)
    which = equal_mass_bins(confidence, bins)
    gap = np.bincount(which, weights=outcome - confidence)
    return float(np.abs(gap).sum() / confidence.size)


def top_label_ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Top-label ECE (Guo et al. 2017's confidence ECE), equal-mass bins."""
    return ece(*top_label(probabilities, labels), bins)


def endpoint_ece(probabilities: np.ndarray, labels: np.ndarray, endpoint: Endpoint, bins: int = BINS) -> float:
    """Binary ECE of the endpoint's score against its label, equal-mass bins."""
    return ece(score(probabilities, endpoint), is_positive(labels, endpoint).astype(np.float64), bins)


def reliability_points(confidence: np.ndarray, outcome: np.ndarray, bins: int = BINS) -> list[ReliabilityPoint]:
    """The points of a reliability diagram: per equal-mass bin, mean confidence and observed
    frequency (a calibrated model lies on the diagonal). For the top label pass `top_label(...)`;
    for an endpoint its score and 0/1 label."""
    confidence, outcome = np.asarray(confidence, dtype=np.float64), np.asarray(outcome, dtype=np.float64)
    which = equal_mass_bins(confidence, bins)
    count = np.bincount(which)
    conf = np.bincount(which, weights=confidence)
    obs = np.bincount(which, weights=outcome)
    return [ReliabilityPoint(float(c / n), float(o / n), int(n)) for c, o, n in zip(conf, obs, count) if n > 0]


def _boot_ece(confidence: np.ndarray, outcome: np.ndarray, groups: np.ndarray, weights: np.ndarray,
              bins: int) -> np.ndarray:
    """ECE per resample with the observed bins: per patient and bin, the summed gap and count."""
    g, which = weights.shape[1], equal_mass_bins(confidence, bins)
    cell = groups * bins + which
    gap = np.bincount(cell, weights=outcome - confidence, minlength=g * bins).reshape(g, bins)
    count = np.bincount(cell, minlength=g * bins).reshape(g, bins).astype(np.float64)
    return np.abs(weights @ gap).sum(axis=1) / (weights @ count).sum(axis=1)


def evaluate_calibration(test: SplitPredictions, endpoints: tuple[Endpoint, ...] = (), B: int = 2000, seed: int = 0,
                         bins: int = BINS) -> CalibrationResult:
    """Brier, top-label ECE and each endpoint's binary ECE on `test`, with percentile intervals
    from B cluster-bootstrap resamples of the test patients (unstratified: no figure here needs
    both classes in a resample; seeded)."""
    p = np.asarray(test.probabilities, dtype=np.float64)
    labels, groups = np.asarray(test.labels), compact(test.groups)
    weights = resample_weights(groups, B, seed).astype(np.float64)
    g = n_groups(groups)
    per_image = brier_per_image(p, labels)
    boot_brier = (weights @ np.bincount(groups, weights=per_image, minlength=g)) / (
        weights @ np.bincount(groups, minlength=g))
    confidence, correct = top_label(p, labels)
    result_ece = percentile_interval(ece(confidence, correct, bins),
                                     _boot_ece(confidence, correct, groups, weights, bins))
    by_endpoint = {}
    for endpoint in endpoints:
        s, y = score(p, endpoint), is_positive(labels, endpoint).astype(np.float64)
        by_endpoint[endpoint.name] = percentile_interval(ece(s, y, bins), _boot_ece(s, y, groups, weights, bins))
    return CalibrationResult(percentile_interval(float(per_image.mean()), boot_brier), result_ece, by_endpoint,
                             B, seed, bins)
