"""The ablation interval over seeds and test patients (study/report/contrasts.py).

Unit checks on hand-built numbers, then the null simulation of issue 19: two variants equal in the
population but strong on different images (each image has a per-variant latent propensity drawn
once per variant, partly shared within its patient), 5 seeds that add per-seed noise around it,
~195 test images in 100 patients. Today's paired t over seeds must fail the 2-7 % band there, and
the variance-components interval must sit in it with power >= 0.8 for a planted effect.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from objectives.metrics import quadratic_kappa, quadratic_kappas
from study.report import stats as ablation_stats
from study.report.contrasts import (
    factorial_contrasts,
    resampled_kappa,
    resampled_metric,
    variance_components_interval,
    welch_satterthwaite,
)
from study.report.uncertainty import resample_weights, resampled_confusions

from support.contrasts import HIGH, LOW, rejections, simulate

# ---------------------------------------------------------------- the interval on hand numbers


def test_interval_by_hand():
    full = np.array([0.02, 0.04, 0.00, 0.06, 0.03])
    rng = np.random.default_rng(0)
    common = rng.normal(0, 0.01, (400, 1))
    boot = full + common + rng.normal(0, 0.004, (400, 5))
    got = variance_components_interval(full, boot, patients="averaged")
    v_seed = full.var(ddof=1) / 5
    v_pat = boot.mean(axis=1).var(ddof=1)
    nu = (v_seed + v_pat) ** 2 / (v_seed**2 / 4)
    half = stats.t.ppf(0.975, nu) * math.sqrt(v_seed + v_pat)
    assert got.delta == pytest.approx(0.03)
    assert got.v_seed == pytest.approx(v_seed) and got.v_patients == pytest.approx(v_pat)
    assert got.df == pytest.approx(nu)
    assert (got.low, got.high) == pytest.approx((0.03 - half, 0.03 + half))
    assert got.p == pytest.approx(2 * stats.t.sf(0.03 / math.sqrt(v_seed + v_pat), nu))
    assert (got.n_seeds, got.resamples) == (5, 400)
    # the shared part is the mean between-seed covariance: ~0.01^2 here, the 0.004^2 seed-specific
    # resampling noise is left out (it is in s_d^2 already)
    shared = variance_components_interval(full, boot)
    cov = np.cov(boot, rowvar=False)
    assert shared.v_patients == pytest.approx((cov.sum() - np.trace(cov)) / 20)
    assert shared.v_patients == pytest.approx(1e-4, rel=0.2)
    assert shared.v_patients < got.v_patients
    assert shared.high - shared.low < got.high - got.low


def test_patients_widen_the_paired_t():
    """Constant-ish per-seed deltas: the paired t is sure, the test-set component is not."""
    full = np.array([0.050, 0.052, 0.049, 0.051, 0.048])
    boot = full + np.random.default_rng(1).normal(0, 0.03, (1000, 1))
    got = variance_components_interval(full, boot)
    assert stats.ttest_rel(full, np.zeros(5)).pvalue < 1e-5
    assert got.p > 0.05 and got.low < 0 < got.high
    assert got.df > 1000  # patients dominate: nu runs towards infinity


def test_single_seed_has_no_interval():
    boot = np.full((400, 1), 0.04) + np.linspace(-0.01, 0.01, 400)[:, None]
    got = variance_components_interval(np.array([0.04]), boot)
    assert got.delta == pytest.approx(0.04) and got.n_seeds == 1
    assert all(math.isnan(x) for x in (got.low, got.high, got.p, got.df, got.v_seed))
    assert got.v_patients > 0


@pytest.mark.parametrize("patients", ["shared", "averaged"])
def test_no_variance_gives_no_p(patients):
    got = variance_components_interval(np.full(5, 0.03), np.full((400, 5), 0.03), patients=patients)
    assert got.delta == pytest.approx(0.03) and got.v_seed == 0 and got.v_patients == 0
    assert math.isnan(got.p) and math.isnan(got.low) and math.isnan(got.high)


def test_zero_seed_variance_uses_the_normal():
    full = np.full(5, 0.03)
    boot = full + np.random.default_rng(2).normal(0, 0.01, (500, 1))
    got = variance_components_interval(full, boot)
    assert got.df == math.inf and got.v_seed == 0
    half = 1.959964 * math.sqrt(got.v_patients)
    assert (got.low, got.high) == pytest.approx((0.03 - half, 0.03 + half))


def test_nan_seed_and_replicate_are_dropped():
    rng = np.random.default_rng(3)
    full = np.array([0.01, np.nan, 0.03, 0.02, 0.05])
    boot = full + rng.normal(0, 0.01, (300, 5))
    boot[:, 1] = rng.normal(size=300)  # garbage on the dropped seed must not count
    boot[7, 2] = np.nan  # a replicate where the metric is undefined on a kept seed
    got = variance_components_interval(full, boot)
    kept = variance_components_interval(full[[0, 2, 3, 4]], np.delete(boot[:, [0, 2, 3, 4]], 7, axis=0))
    assert got == kept
    assert (got.n_seeds, got.resamples) == (4, 299)
    assert got.delta == pytest.approx(0.0275)


def test_bad_shapes_and_options():
    with pytest.raises(ValueError):
        variance_components_interval(np.zeros(5), np.zeros((10, 4)))
    with pytest.raises(ValueError):
        variance_components_interval(np.zeros(5), np.zeros((10, 5)), patients="both")


def test_welch_satterthwaite_limits():
    assert welch_satterthwaite(1.0, 4, 0.0) == 4
    assert welch_satterthwaite(0.0, 4, 1.0) == math.inf
    assert welch_satterthwaite(1.0, 4, 1.0) == pytest.approx(16)
    assert welch_satterthwaite(1.0, 4, 1.0, pat_df=4) == pytest.approx(8)


# ---------------------------------------------------------------- resampling and metrics


def test_resample_weights():
    w = resample_weights(50, 300, seed=7)
    assert w.shape == (300, 50) and w.dtype == np.int64
    assert np.all(w.sum(axis=1) == 50)
    assert np.array_equal(w, resample_weights(50, 300, seed=7))
    assert not np.array_equal(w, resample_weights(50, 300, seed=8))
    assert abs(w.mean() - 1) < 0.01 and w.var() == pytest.approx(1 - 1 / 50, rel=0.1)
    strata = np.array([0] * 45 + [1] * 3 + [2] * 2)
    ws = resample_weights(50, 300, seed=7, strata=strata)
    for label, size in ((0, 45), (1, 3), (2, 2)):
        assert np.all(ws[:, strata == label].sum(axis=1) == size)  # each stratum kept in every replicate
    with pytest.raises(ValueError):
        resample_weights(50, 10, seed=0, strata=np.zeros(49))


def test_resampled_metric_equals_index_resampling():
    rng = np.random.default_rng(4)
    totals = rng.integers(1, 3, 30)
    correct = np.minimum(rng.integers(0, 3, (5, 30)), totals)  # (S, G)
    w = resample_weights(30, 20, seed=1)
    got = resampled_metric(correct, w, totals)
    assert got.shape == (20, 5)
    for b in range(20):
        drawn = np.repeat(np.arange(30), w[b])
        assert np.allclose(got[b], correct[:, drawn].sum(axis=1) / totals[drawn].sum())
    assert np.allclose(resampled_metric(correct, np.ones((1, 30)), totals)[0], correct.sum(1) / totals.sum())


def test_batched_kappa_equals_the_metric():
    rng = np.random.default_rng(5)
    matrices = rng.integers(0, 9, (200, 5, 5)).astype(float)
    matrices[0] = 0  # no images
    matrices[1] = 0
    matrices[1, 2, 2] = 7  # one class everywhere
    matrices[2] = np.diag([3, 1, 0, 2, 5])  # perfect
    matrices[3] = np.fliplr(np.diag([3, 1, 4, 2, 5]))  # reversed
    got = quadratic_kappas(matrices.reshape(10, 20, 5, 5))
    assert got.shape == (10, 20)
    expected = np.array([quadratic_kappa(m) for m in matrices])
    assert np.allclose(got.ravel(), expected, atol=1e-12)
    assert got.ravel()[2] == pytest.approx(1.0) and got.ravel()[3] < 0
    two = rng.integers(0, 9, (40, 2, 2))
    assert np.allclose(quadratic_kappas(two), [quadratic_kappa(m) for m in two])


def test_resampled_kappa_equals_recounting():
    rng = np.random.default_rng(6)
    per_group = rng.integers(0, 3, (3, 12, 4, 4))  # (S, G, K, K)
    w = resample_weights(12, 15, seed=2)
    assert resampled_confusions(w, per_group).shape == (15, 3, 4, 4)
    got = resampled_kappa(per_group, w)
    assert got.shape == (15, 3)
    for b in range(15):
        drawn = np.repeat(np.arange(12), w[b])
        for s in range(3):
            assert got[b, s] == pytest.approx(quadratic_kappa(per_group[s, drawn].sum(axis=0)))


# ---------------------------------------------------------------- factorial contrasts


def test_factorial_contrasts_by_hand():
    """2x2 (arch, loss) on 3 seeds plus a 3-level factor check, against stats.factorial_effects."""
    levels = {"arch": ["r18", "r50"], "loss": ["ce", "focal"]}
    reference = {"arch": "r18", "loss": "ce"}
    y = {("r18", "ce"): [0.60, 0.62, 0.61], ("r50", "ce"): [0.66, 0.65, 0.67],
         ("r18", "focal"): [0.63, 0.61, 0.62], ("r50", "focal"): [0.72, 0.70, 0.71]}
    shifts = np.array([[0.0], [0.01], [-0.02]])  # 3 replicates: boot = full + a shift per replicate
    cells = {cell: (np.array(v), np.array(v) + shifts * (1 + i)) for i, (cell, v) in enumerate(y.items())}
    got = factorial_contrasts(cells, ["arch", "loss"], levels, reference)
    assert set(got) == {"main:arch=r50", "main:loss=focal", "interaction:arch x loss"}
    arch_full = (np.array(y["r50", "ce"]) + y["r50", "focal"]) / 2 - (np.array(y["r18", "ce"]) + y["r18", "focal"]) / 2
    assert np.allclose(got["main:arch=r50"][0], arch_full)  # [0.075, 0.06, 0.075]
    inter = np.array(y["r50", "focal"]) - y["r50", "ce"] - y["r18", "focal"] + y["r18", "ce"]
    assert np.allclose(got["interaction:arch x loss"][0], inter)  # [0.03, 0.04, 0.03]
    # the replicate shifts are 1, 2, 3, 4 x shift for the cells in order: interaction (4 - 2 - 3 + 1) = 0
    assert np.allclose(got["interaction:arch x loss"][1], inter)
    assert np.allclose(got["main:arch=r50"][1], arch_full + shifts * ((2 + 4) - (1 + 3)) / 2)
    assert got["main:arch=r50"][1].shape == (3, 3)
    # the full values give the same per-seed numbers as the existing paired effects
    per_seed = {cell: dict(enumerate(v)) for cell, v in y.items()}
    for effect in ablation_stats.factorial_effects(per_seed, ["arch", "loss"], levels, reference, maximize=True):
        assert effect.contrast.delta == pytest.approx(got[effect.name][0].mean())


def test_factorial_contrasts_nan_seed_and_three_levels():
    levels = {"a": [0, 1, 2], "b": ["x", "y"]}
    cells = {}
    for a in levels["a"]:
        for b in levels["b"]:
            full = np.array([a + (b == "y") * 0.5, 1.0, 2.0])
            cells[(a, b)] = (full, np.tile(full, (4, 1)))
    cells[(2, "y")][0][1] = np.nan  # seed 1 failed in one cell
    got = factorial_contrasts(cells, ["a", "b"], levels, {"a": 0, "b": "x"})
    assert set(got) == {"main:a=1", "main:a=2", "main:b=y"}  # no interaction for a 3-level factor
    assert got["main:a=2"][0][0] == pytest.approx(2.0)
    assert math.isnan(got["main:a=2"][0][1]) and math.isnan(got["main:b=y"][0][1])
    assert not math.isnan(got["main:a=1"][0][1])
    with pytest.raises(ValueError):
        factorial_contrasts({(0, "x"): cells[(0, "x")]}, ["a", "b"], levels, {"a": 0, "b": "x"})


# ---------------------------------------------------------------- the null simulation


def calibrated(rejections: np.ndarray) -> bool:
    """False-positive rate at nominal 5 % inside [2 %, 7 %]: neither too many stars nor none."""
    return LOW <= float(np.mean(rejections)) <= HIGH


def test_band_refuses_an_infinitely_wide_interval_and_the_paired_t():
    """The band has a floor: an interval that is never short enough to exclude 0 (infinitely
    wide: p = 1 always) rejects nothing, and that must fail the check like too many stars do."""
    assert not calibrated(np.zeros(1000, dtype=bool))
    assert not calibrated(np.arange(1000) < 110)  # 11 %: the paired t
    assert calibrated(np.arange(1000) < 50)


def test_null_simulation_accuracy():
    """Fast layer: R = 1,000 null ablations, B = 400, accuracy (~3 s)."""
    null = simulate("accuracy", 1000, 400, seed=19)
    assert abs(null.delta) < 0.005
    assert np.mean(rejections(null.paired_t)) > 0.11 and not calibrated(rejections(null.paired_t))
    assert calibrated(rejections(null.shared)), np.mean(rejections(null.shared))
    assert calibrated(rejections(null.averaged)), np.mean(rejections(null.averaged))


def test_power_accuracy():
    """Planted: variant 1's latent + 0.6, i.e. Delta accuracy ~ +0.10 (~1 s)."""
    alternative = simulate("accuracy", 300, 400, planted=0.6, seed=20)
    assert 0.08 < alternative.delta < 0.12
    assert np.mean(rejections(alternative.shared)) >= 0.8


def test_rounding_noise_is_no_variance():
    """Differences that are constant up to rounding (0.1 + 0.2 - 0.3 style) give no p, not p = 0."""
    full = np.array([0.7 - 0.4, 0.1 + 0.2, 0.3, 0.6 - 0.3, 0.9 - 0.6])
    assert full.var() > 0  # the rounding is really there
    got = variance_components_interval(full, np.tile(full, (400, 1)))
    assert math.isnan(got.p) and got.v_seed == 0 and got.v_patients == 0
