"""The cluster bootstrap of test metrics (`study.report.uncertainty`): metrics match `summarize`,
resampling keeps strata, intervals are reproducible, and a 95 % interval covers about 95 %."""

from __future__ import annotations

import time

import numpy as np
import pytest

from objectives.metrics import CONFUSION_METRICS, summarize
from study.report import uncertainty as uq

from support.uncertainty import coverage


def test_batched_metrics_match_summarize_on_random_matrices() -> None:
    rng = np.random.default_rng(0)
    mats = []
    for i in range(200):
        k = int(rng.integers(2, 6))
        cm = rng.integers(0, 6, size=(k, k))
        if i % 3 == 0:  # absent classes (rows of zeros) and never-predicted ones
            cm[rng.integers(k)] = 0
            cm[:, rng.integers(k)] = 0
        mats.append(cm)
    mats.append(np.zeros((3, 3), dtype=int))
    mats.append(np.array([[5, 0], [0, 0]]))
    for cm in mats:
        got = uq.batched_metrics(cm[None])
        want = summarize(cm)
        for name in CONFUSION_METRICS:
            assert got[name][0] == pytest.approx(want[name], abs=1e-12), (name, cm)
        np.testing.assert_allclose(got["recall"][0], want["recall"], equal_nan=True)


def test_group_confusions_sum_to_the_whole_matrix() -> None:
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 30, size=100)
    groups = np.unique(groups, return_inverse=True)[1]
    labels, predicted = rng.integers(0, 4, 100), rng.integers(0, 4, 100)
    per_group = uq.group_confusions(groups, labels, predicted, 4)
    assert per_group.shape == (groups.max() + 1, 4, 4)
    whole = np.zeros((4, 4), dtype=int)
    np.add.at(whole, (labels, predicted), 1)
    np.testing.assert_array_equal(per_group.sum(0), whole)
    weights = np.ones((3, per_group.shape[0]), dtype=int)
    np.testing.assert_array_equal(uq.resampled_confusions(weights, per_group), np.stack([whole] * 3))


def test_stratified_weights_keep_each_stratum_count_and_are_seeded() -> None:
    groups = np.arange(50)
    strata = np.array([0] * 40 + [1] * 8 + [2] * 2)
    w = uq.resample_weights(uq.group_count(groups), 500, seed=3, strata=strata)
    assert w.shape == (500, 50)
    np.testing.assert_array_equal(w[:, strata == 2].sum(1), 2)
    np.testing.assert_array_equal(w[:, strata == 1].sum(1), 8)
    np.testing.assert_array_equal(w, uq.resample_weights(uq.group_count(groups), 500, seed=3, strata=strata))
    plain = uq.resample_weights(uq.group_count(groups), 500, seed=3)
    np.testing.assert_array_equal(plain.sum(1), 50)
    assert (plain[:, strata == 2].sum(1) == 0).any()  # unstratified: a rare stratum goes missing


def _predictions(n_groups: int, k: int, rng: np.random.Generator):
    sizes = rng.integers(1, 3, size=n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    labels = rng.integers(0, k, size=len(groups))
    probabilities = rng.random((len(groups), k)).astype(np.float32)
    return probabilities, labels, groups


def test_intervals_contain_the_estimate_are_reproducible_and_every_recall_is_defined() -> None:
    rng = np.random.default_rng(2)
    probabilities, labels, groups = _predictions(300, 5, rng)
    labels[:6] = [0, 1, 2, 3, 4, 4]
    a = uq.test_intervals(probabilities, labels, groups, B=500, seed=7)
    b = uq.test_intervals(probabilities, labels, groups, B=500, seed=7)
    assert a == b
    assert set(a) == {*CONFUSION_METRICS, *(f"recall_{c}" for c in range(5))}
    cm = np.zeros((5, 5), dtype=int)
    np.add.at(cm, (labels, probabilities.argmax(1)), 1)
    want = summarize(cm)
    for name, interval in a.items():
        estimate = want["recall"][int(name[7:])] if name.startswith("recall_") else want[name]
        assert interval.estimate == pytest.approx(estimate)
        assert interval.low <= interval.estimate <= interval.high
        assert interval.low < interval.high
        assert interval.resamples == 500
    assert a["accuracy"].method == "percentile" and a["recall_4"].method == "bca"
    assert all(iv.dropped == 0 for iv in a.values())  # stratified: every class in every resample


def test_dropped_counts_resamples_where_a_recall_is_undefined() -> None:
    # class 1 appears only in a group whose worst class is 2: resamples without that group lack it
    groups = np.array([0, 0, 1, 2, 3, 4, 5, 6])
    labels = np.array([1, 2, 2, 2, 0, 0, 0, 2])
    probabilities = np.eye(3, dtype=np.float32)[labels]
    out = uq.test_intervals(probabilities, labels, groups, B=400, seed=0)
    assert 0 < out["recall_1"].dropped < 400
    assert out["recall_0"].dropped == 0


def test_bca_at_the_bound_is_the_bound_and_percentile_ignores_nan() -> None:
    iv = uq.bca_interval(1.0, np.ones(100), np.ones(10))
    assert (iv.low, iv.high) == (1.0, 1.0)
    iv = uq.percentile_interval(0.5, np.array([np.nan, 0.4, 0.6, np.nan]))
    assert iv.dropped == 2 and 0.4 <= iv.low < iv.high <= 0.6


def test_seven_thousand_images_two_thousand_resamples_well_under_a_second() -> None:
    rng = np.random.default_rng(4)
    probabilities, labels, groups = _predictions(4000, 5, rng)
    probabilities, labels, groups = probabilities[:7000], labels[:7000], groups[:7000]
    started = time.perf_counter()
    uq.test_intervals(probabilities, labels, groups, B=2000, seed=0)
    assert time.perf_counter() - started < 2.0  # measured ~0.3 s; a loose bound for a busy CI box


def test_coverage_of_the_accuracy_interval_is_about_95_percent() -> None:
    assert 0.85 <= coverage(reps=100, n_groups=150, B=400, seed=0) <= 1.0


def _interval_record() -> dict:
    rng = np.random.default_rng(5)
    probabilities, labels, groups = _predictions(100, 3, rng)
    return uq.interval_record(uq.test_intervals(probabilities, labels, groups, B=300, seed=0), seed=0)


def test_notes_load_trials_and_tables_show_recorded_intervals_and_say_when_missing() -> None:
    import optuna

    from study.api import load_trials
    from study.dashboard.trial_pages import Page, note
    from study.records import TEST_INTERVALS, TrialRecord
    from study.report.frames import cell_table, page_view, trial_frame

    record = _interval_record()
    low, high = record["intervals"]["kappa"]
    test = {"kappa": 0.5, "accuracy": 0.6, "loss": 1.0}
    shown = note(Page("s", 1, "COMPLETE", "kappa", val=test, test=test, intervals=record))
    assert f"[{low:.3f}, {high:.3f}]" in shown and "300 resamples" in shown
    old = note(Page("s", 1, "COMPLETE", "kappa", val=test, test=test))
    assert "Test intervals missing (older run)." in old and "[" not in old.split("| test |")[1].split("\n")[0]

    study = optuna.create_study(direction="maximize")
    for number, arch in enumerate(["a", "b"]):
        trial = study.ask()
        trial.set_user_attr("config", {"arch": arch})
        trial.set_user_attr("test_metrics", {"kappa": 0.5, "accuracy": 0.6, "balanced_accuracy": 0.4,
                                             "macro_f1": 0.3, "recall": [0.1, 0.2, 0.3]})
        trial.set_user_attr("class_names", ["x", "y", "z"])
        if number == 0:
            trial.set_user_attr(TEST_INTERVALS, record)
        study.tell(trial, 0.5)
    frame = load_trials(study)
    assert frame.loc[0, "test_kappa_low"] == low and frame.loc[0, "test_kappa_high"] == high
    assert frame.loc[0, "test_recall_z_high"] == record["intervals"]["recall_2"][1]
    assert np.isnan(frame.loc[1, "test_kappa_low"])  # an older trial: no interval, NaN
    assert TrialRecord.from_trial(study.trials[1]).interval("kappa") is None
    cells = page_view(cell_table(trial_frame(study), True, ["arch"]), "kappa")
    column = [c for c in cells.columns if c.startswith("test")][0]
    assert cells[column].tolist() == [f"0.500 [{low:.3f}, {high:.3f}]", "0.500"]


@pytest.mark.parametrize("recorded", [True, False])
def test_report_best_trial_table_shows_test_intervals_or_says_they_are_missing(recorded: bool) -> None:
    import optuna

    from study.records import TEST_INTERVALS, StudyRecord
    from study.report.build import _settings_section

    record = _interval_record()
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.set_user_attr("test_metrics", {"kappa": 0.5, "accuracy": 0.6, "balanced_accuracy": 0.4, "macro_f1": 0.3})
    trial.set_user_attr("val_metrics", {"kappa": 0.5, "accuracy": 0.6, "balanced_accuracy": 0.4, "macro_f1": 0.3})
    if recorded:
        trial.set_user_attr(TEST_INTERVALS, record)
    study.tell(trial, 0.5)
    text = _settings_section(study, StudyRecord.from_study(study), "memory")
    low, high = record["intervals"]["accuracy"]
    assert (f"0.600 [{low:.3f}, {high:.3f}]" in text) == recorded
    assert ("Test intervals missing (older run)" in text) != recorded
