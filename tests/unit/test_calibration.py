"""Calibration on test: multiclass Brier, top-label and endpoint ECE over equal-mass bins, their
patient-bootstrap intervals and the reliability diagram's points."""

import numpy as np
import pytest

from study.report import calibration as cal
from study.report.endpoints import Endpoint, SplitPredictions

REFERABLE = Endpoint("referable", (2, 3, 4))


def simulated(n=20000, temperature=1.0, seed=0):
    """Labels drawn from the model's own probabilities (calibrated by construction); the
    reported probabilities are softmax(logits / temperature): < 1 is overconfident."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 5)) * 1.5
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = (truth.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    shown = np.exp(logits / temperature)
    return SplitPredictions(shown / shown.sum(axis=1, keepdims=True), labels, np.repeat(np.arange(n // 2), 2))


def test_brier_by_hand():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    labels = np.array([0, 1, 0])
    # 0; 0.25 + 0.25; 0.64 + 0.09 + 0.25
    assert cal.brier_per_image(p, labels) == pytest.approx([0.0, 0.5, 0.98])
    assert cal.brier(p, labels) == pytest.approx(1.48 / 3)


def test_equal_mass_ece_by_hand():
    confidence = np.array([0.9, 0.6, 0.9, 0.6, 0.7, 0.8])
    correct = np.array([1, 1, 1, 0, 1, 0])
    # sorted: (0.6,1) (0.6,0) | (0.7,1) (0.8,0) | (0.9,1) (0.9,1); gaps 0.1, 0.25, 0.1, each bin 2/6
    assert cal.equal_mass_bins(confidence, 3).tolist() == [2, 0, 2, 0, 1, 1]
    assert cal.ece(confidence, correct, bins=3) == pytest.approx((0.2 + 0.5 + 0.2) / 6)
    p = np.array([[0.9, 0.1], [0.4, 0.6]])
    assert cal.top_label_ece(p, np.array([0, 0]), bins=2) == pytest.approx((0.1 + 0.6) / 2)
    assert np.bincount(cal.equal_mass_bins(np.random.default_rng(0).random(100), 15)).tolist() == [7] * 10 + [6] * 5
    points = cal.reliability_points(confidence, correct, bins=3)
    assert [(pt.confidence, pt.observed, pt.count) for pt in points] == pytest.approx(
        [(0.6, 0.5, 2), (0.75, 0.5, 2), (0.9, 1.0, 2)])


def test_binary_ece_of_an_endpoint_score():
    p = np.array([[0.7, 0.1, 0.1, 0.05, 0.05], [0.1, 0.1, 0.4, 0.2, 0.2]])
    # scores 0.2 (negative) and 0.8 (positive): gaps 0.2 each
    assert cal.endpoint_ece(p, np.array([0, 3]), REFERABLE, bins=2) == pytest.approx(0.2)


def test_calibrated_probabilities_give_an_ece_near_0_and_overconfident_ones_a_larger_one():
    calibrated, overconfident = simulated(), simulated(temperature=0.5)
    good, bad = cal.evaluate_calibration(calibrated, (REFERABLE,), B=300), \
        cal.evaluate_calibration(overconfident, (REFERABLE,), B=300)
    assert good.ece.estimate < 0.02 and good.endpoint_ece["referable"].estimate < 0.02
    assert bad.ece.estimate > 0.08 and bad.ece.low > good.ece.high
    assert bad.endpoint_ece["referable"].estimate > 0.05
    assert bad.brier.estimate > good.brier.estimate
    for point in cal.reliability_points(*cal.top_label(calibrated.probabilities, calibrated.labels)):
        assert abs(point.observed - point.confidence) < 0.05  # on the diagonal
    over = cal.reliability_points(*cal.top_label(overconfident.probabilities, overconfident.labels))
    assert over[-1].confidence - over[-1].observed > 0.05  # confident bins are right less often than they say


def test_calibration_intervals_are_patient_bootstraps_reproducible_by_seed():
    split = simulated(n=600, seed=3)
    result = cal.evaluate_calibration(split, (REFERABLE,), B=500, seed=9)
    assert result == cal.evaluate_calibration(split, (REFERABLE,), B=500, seed=9)
    for interval in (result.brier, result.ece, result.endpoint_ece["referable"]):
        assert interval.method == "percentile" and interval.low < interval.high
    assert result.brier.low < result.brier.estimate < result.brier.high
    # weights of 1 for every patient give back the estimate
    confidence, correct = cal.top_label(split.probabilities, split.labels)
    ones = np.ones((1, 300))
    assert cal._boot_ece(confidence, correct, split.groups, ones, 15)[0] == pytest.approx(result.ece.estimate)
