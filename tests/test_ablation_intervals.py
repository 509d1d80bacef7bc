"""The ablation table's test Δ from stored per-image predictions: intervals over seeds AND test
patients (`study.report.ablation_intervals`), on in-memory studies whose trials store real
prediction records (`study.predictions`), no training."""

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from objectives.metrics import CONFUSION_METRICS, summarize
from study.predictions import Predictions, write_predictions
from study.records import ABLATION_VERSION
from study.report import ablation as ablation_report
from study.report import ablation_intervals, stats
from study.report.uncertainty import group_confusions

SEEDS = [1001, 1002, 1003, 1004, 1005]
PATIENTS, K = 100, 5


def make_rows(rng):
    """200 test images of 100 patients (two eyes each), grades skewed like DR."""
    groups = np.repeat(np.arange(PATIENTS), 2)
    grade = rng.choice(K, size=PATIENTS, p=[0.7, 0.1, 0.12, 0.04, 0.04])
    labels = np.repeat(grade, 2)
    return labels, groups


def predictions(rng, labels, propensity):
    """Probabilities whose argmax is right where a draw falls under the image's propensity."""
    correct = rng.random(len(labels)) < propensity
    wrong = (labels + rng.integers(1, K, size=len(labels))) % K
    predicted = np.where(correct, labels, wrong)
    probabilities = np.full((len(labels), K), 0.1 / (K - 1), dtype=np.float32)
    probabilities[np.arange(len(labels)), predicted] = 0.9
    return probabilities


def ablation_with_predictions(*, store=True, fail=None):
    """A one-at-a-time ablation of two variants equal in the population but each strong on its own
    images (per-image propensities drawn once per variant), 5 seeds, predictions stored."""
    rng = np.random.default_rng(3)
    labels, groups = make_rows(rng)
    study = optuna.create_study(direction="maximize")
    names = ["baseline", "other"]
    plan = {"parent": "p", "mode": "one-at-a-time", "factors": [], "baseline": "baseline",
            "variants": {n: {"lr": 0.01} for n in names}, "levels": {n: {} for n in names}, "seeds": SEEDS,
            "retune": None, "metric": "kappa", "split_per_seed": True, "ablation_version": ABLATION_VERSION}
    for key, value in plan.items():
        study.set_user_attr(key, value)
    dists = {"variant": CategoricalDistribution(names), "seed": CategoricalDistribution(SEEDS)}
    propensity = {n: rng.beta(0.6, 0.25, size=len(labels)) for n in names}  # mostly stable per image
    for name in names:
        for seed in SEEDS:
            params = {"variant": name, "seed": seed}
            if fail == (name, seed):
                study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.FAIL,
                                             user_attrs={"fail_reason": "nan_loss"}))
                continue
            probabilities = predictions(rng, labels, propensity[name])
            confusion = group_confusions(groups, labels, probabilities.argmax(1), K).sum(0)
            measured = summarize(confusion)
            study.enqueue_trial(params)
            trial = study.ask(dists)  # running: Optuna takes system attrs of running trials only
            trial.set_user_attr("test_metrics", {m: measured[m] for m in CONFUSION_METRICS})
            if store:
                write_predictions(study, trial, "test", Predictions(probabilities, labels, groups), "hash")
                own = np.random.default_rng([seed, len(name)])  # each seed its own validation split
                val_labels, val_groups = make_rows(own)
                write_predictions(study, trial, "val", Predictions(predictions(own, val_labels, 0.7), val_labels,
                                                                   val_groups), f"val-{seed}")
            study.tell(trial, measured["kappa"])
    return study


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
