"""The ablation table's test Δ from stored per-image predictions: intervals over seeds AND test
patients (`study.report.ablation_intervals`), on in-memory studies whose trials store real
prediction records (`study.predictions`), no training."""

import numpy as np
from optuna.trial import TrialState

from study.report import ablation as ablation_report
from study.report import ablation_intervals, stats

from support.ablation import ablation_with_predictions


def test_test_deltas_cover_seeds_and_patients():
    study = ablation_with_predictions()
    frame = ablation_report.ablation_frame(study)
    test = frame[(frame.variant == "other") & frame.metric.str.startswith("test_")]
    assert (test.covers == ablation_report.SEEDS_AND_PATIENTS).all()
    val = frame[(frame.variant == "other") & (frame.metric == "val_kappa")]
    assert (val.covers == ablation_report.SEEDS_ONLY).all()
    # the rescored full-test values are the recorded ones: the stored rows line up with the trials
    by_arm = {n: {int(t.params["seed"]): t for t in study.get_trials() if t.params["variant"] == n}
              for n in ("baseline", "other")}
    found = ablation_intervals.test_replicates(study, by_arm, ["accuracy", "kappa"])
    for name, trials in by_arm.items():
        for seed, t in trials.items():
            assert abs(found["kappa"].full[name][seed] - t.user_attrs["test_metrics"]["kappa"]) < 1e-12
    # wider than the paired t over seeds, which treats the 100 test patients as the population
    for metric in ("accuracy", "kappa"):
        row = test[test.metric == f"test_{metric}"].iloc[0]
        naive = stats.paired(found[metric].full["other"], found[metric].full["baseline"], maximize=True)
        assert row.delta == naive.delta
        wider = 1.5 if metric == "accuracy" else 1.0  # kappa's seed noise is larger here (few grade 3-4 patients)
        assert (row.ci_high - row.ci_low) > wider * (naive.ci_high - naive.ci_low)
        assert row.p > naive.p
    caption = ablation_report.ablation_table(study)[2]
    assert "test patients" in caption and "do not cover drawing another training set" in caption


def test_without_predictions_the_caption_says_the_intervals_cover_seeds_only():
    study = ablation_with_predictions(store=False)
    frame = ablation_report.ablation_frame(study)
    assert (frame[frame.variant == "other"].covers == ablation_report.SEEDS_ONLY).all()
    assert "cover the seeds only" in ablation_report.ablation_table(study)[2]


def test_a_failed_seed_enters_the_worst_case_at_the_worst_value_without_patient_variance():
    study = ablation_with_predictions(fail=("other", 1003))
    frame = ablation_report.ablation_frame(study)
    row = frame[(frame.variant == "other") & (frame.metric == "test_kappa")].iloc[0]
    assert row.failed == 1 and row.n == 4 and row.covers == ablation_report.SEEDS_AND_PATIENTS
    assert np.isfinite(row.p_holm_worst) and not row.star
    by_arm = {n: {int(t.params["seed"]): t for t in study.get_trials(states=(TrialState.COMPLETE,))
                  if t.params["variant"] == n} for n in ("baseline", "other")}
    found = ablation_intervals.test_replicates(study, by_arm, ["kappa"])["kappa"]
    filled = found.filled({"other": [1003]}, {"other": {1003: -0.5}})
    assert filled.full["other"][1003] == -0.5 and np.all(filled.boot["other"][1003] == -0.5)
    assert 1003 not in found.full["other"]  # the original is left as it was
