"""Trials written the way the runner writes them (`records.TrialWriter`, `write_test_intervals`,
`StudyRecord`, `AblationRecord`) into Optuna's in-memory storage and read back through every
reader: `load_trials` / `load_ablation` (the notebook API), the report's `trial_frame`, and the
dashboard notes. A key spelled differently by a writer and a reader, or a flattener that drops or
renames a value, fails here without training anything."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from objectives.metrics import CONFUSION_METRICS, TABLE_METRICS, summarize
from study import records
from study.api import load_ablation, load_trials
from study.dashboard.trial_pages import Page, heartbeat_note, note
from study.records import AblationRecord, StudyRecord, TrialRecord, TrialWriter, write_test_intervals
from study.report.frames import trial_frame
from study.report.uncertainty import interval_record, test_intervals

NAMES = ["No DR", "Mild", "Severe"]


def _evaluation(rng: np.random.Generator) -> tuple[float, dict, list[list[int]]]:
    confusion = rng.integers(1, 30, (3, 3))
    return float(rng.random()), summarize(confusion), confusion.tolist()


def _write(study: optuna.Study, rng: np.random.Generator, state: TrialState) -> None:
    """One trial as `run` writes it: config and data first, curves as it trains, then either the
    result and test intervals (complete), the curves only (pruned) or a reason (failed)."""
    trial = study.ask()
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    loss = trial.suggest_categorical("loss", ["ce", "focal"])
    config = {"lr": lr, "loss": loss, "epochs": 3, "arch": "resnet18"}
    if loss == "focal":
        config["focal_gamma"] = trial.suggest_float("focal_gamma", 0.0, 5.0)
    writer = TrialWriter(trial)
    writer.clear_failure()
    writer.config(config)
    writer.data(NAMES, "f" * 64)
    epochs = 3 if state == TrialState.COMPLETE else 2
    curves = {"epoch": list(range(1, epochs + 1)), "phase": ["ft"] * epochs,
              "val_kappa": rng.random(epochs).tolist(), "train_loss": rng.random(epochs).tolist()}
    writer.curves(curves)
    if state == TrialState.COMPLETE:
        evaluations = {"val": _evaluation(rng), "test": _evaluation(rng)}
        writer.result(12.5 + trial.number, curves, 2, evaluations)
        labels, groups = rng.integers(0, 3, 60), np.arange(60) // 2
        probabilities = rng.dirichlet(np.ones(3), 60)
        write_test_intervals(trial, interval_record(test_intervals(probabilities, labels, groups, B=200,
                                                                   seed=trial.number), seed=trial.number))
        study.tell(trial, evaluations["val"][1]["kappa"])
    elif state == TrialState.PRUNED:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        writer.failed("nan_loss")
        study.tell(trial, state=TrialState.FAIL)


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    StudyRecord(space_hash="h", objective="image_classifier", metric="kappa", dataset="synthetic-fundus").write(study)
    rng = np.random.default_rng(0)
    for state in [TrialState.COMPLETE] * 4 + [TrialState.PRUNED, TrialState.FAIL]:
        _write(study, rng, state)
    study.enqueue_trial({"lr": 0.01, "loss": "ce"})  # waiting: nothing to show yet, in no reader
    return study


def test_load_trials_shows_every_written_value(study: optuna.Study) -> None:
    frame = load_trials(study).set_index("number")
    assert list(frame.index) == [0, 1, 2, 3, 4, 5]
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        row, attrs = frame.loc[t.number], t.user_attrs
        assert (row.state, row.value, row.best_epoch, row.seconds) == ("COMPLETE", t.value, 2, 12.5 + t.number)
        assert row.lr == t.params["lr"] and row.loss == t.params["loss"]
        assert math.isnan(row.focal_gamma) if t.params["loss"] == "ce" else row.focal_gamma == t.params["focal_gamma"]
        for split in records.SPLITS:
            stored = attrs[records.metrics_key(split)]
            assert all(row[f"{split}_{m}"] == stored[m] for m in (*CONFUSION_METRICS, "loss"))
            assert [row[f"{split}_recall_{c}"] for c in NAMES] == stored["recall"]
        bounds = attrs[records.TEST_INTERVALS]["intervals"]
        for m in CONFUSION_METRICS:
            assert (row[f"test_{m}_low"], row[f"test_{m}_high"]) == tuple(bounds[m])
        assert (row["test_recall_Mild_low"], row["test_recall_Mild_high"]) == tuple(bounds["recall_1"])
    assert frame.loc[4].state == "PRUNED" and math.isnan(frame.loc[4].val_kappa) and math.isnan(frame.loc[4].value)
    assert frame.loc[5].fail_reason == "nan_loss" and frame.fail_reason.isna().sum() == 5


def test_the_report_frame_takes_the_same_values_from_the_same_flattener(study: optuna.Study) -> None:
    api = load_trials(study).set_index("number")
    report = trial_frame(study).set_index("number")
    assert list(report.index) == list(api.index)
    shared = [c for c in report.columns if c in api.columns and c not in ("value",)]
    expected = [f"{s}_{m}" for s in records.SPLITS for m in TABLE_METRICS]
    expected += [records.interval_key(m, e) for m in TABLE_METRICS for e in ("low", "high")]
    assert set(expected) <= set(shared)
    for column in shared:
        assert report[column].equals(api[column]) or (report[column].isna() == api[column].isna()).all() and \
            (report[column].dropna() == api[column].dropna()).all(), column
    assert (report.arch == "resnet18").all() and (report["sampled:lr"] == api.lr).all()


def test_the_notes_read_the_stored_record(study: optuna.Study) -> None:
    pruned = study.trials[4]
    text = heartbeat_note(pruned, StudyRecord.metric_of(study), retried=True)
    assert "after 2 epoch(s)" in text  # the curves' length, not the config's `epochs`
    assert "`epochs=3`" in text and "`arch=resnet18`" in text
    done = TrialRecord.from_trial(study.best_trial)
    page = Page("s", done.number, done.state.name, "kappa", done.params, done.config, done.best_epoch,
                done.val_metrics, done.test_metrics, None, done.curves, done.test_confusion, done.class_names,
                done.seconds, done.test_intervals, epochs=3)  # the trainer's: the objective's `ROLES.epochs`
    shown = note(page)
    low, high = done.interval("kappa")
    assert f"| test | {done.test_metrics['kappa']:.3f} [{low:.3f}, {high:.3f}] |" in shown
    assert "| split | kappa | accuracy | balanced accuracy | macro f1 | loss |" in shown
    assert "best epoch (on validation kappa): **2** of 3" in shown and "(200 resamples)" in shown


def test_an_ablation_reads_back_its_variants_and_retuned_values() -> None:
    study = optuna.create_study(direction="maximize")
    AblationRecord(parent="p", mode="one-at-a-time", factors=[], baseline="baseline",
                   variants={"baseline": {"loss": "ce"}, "focal": {"loss": "focal", "focal_gamma": 2.0}},
                   levels={}, seeds=[11, 12], retune={records.PARAM: "lr", records.CANDIDATES: [0.01, 0.1]},
                   metric="kappa").write(study)
    AblationRecord.write_retuned(study, {"baseline": 0.01, "focal": None})
    for variant in ("baseline", "focal"):
        for seed in (11, 12):
            trial = study.ask({records.VARIANT: optuna.distributions.CategoricalDistribution(["baseline", "focal"]),
                               records.SEED: optuna.distributions.CategoricalDistribution([11, 12])})
            assert trial.params  # asked with fixed distributions: sampled, then overwritten below
            study.tell(trial, 0.5)
    frame = load_ablation(study)
    assert {"variant", "seed", "loss", "focal_gamma", "lr"} <= set(frame.columns)
    for _, row in frame.iterrows():
        if row.variant == "baseline":
            assert row.loss == "ce" and row.lr == 0.01 and math.isnan(row.focal_gamma)
        else:
            assert row.loss == "focal" and row.focal_gamma == 2.0 and math.isnan(row.lr)  # inactive after retune


def test_garbage_in_a_storage_reads_as_missing_everywhere() -> None:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(records.METRIC, 3)
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params={}, distributions={},
        user_attrs={records.CONFIG: "x", records.CURVES: None, records.CLASS_NAMES: None,
                    records.metrics_key("val"): 3, records.TEST_INTERVALS: {"intervals": {"kappa": "bad"}}},
        system_attrs={records.RETRY_HISTORY: "x"}))
    trial = study.trials[0]
    row = load_trials(study).iloc[0]
    assert row.state == "FAIL" and "test_kappa_low" not in row
    assert trial_frame(study).iloc[0].epochs == 0
    assert StudyRecord.metric_of(study) == "value" and records.retry_attempts(trial) == 1
    assert "after 0 epoch(s)" in heartbeat_note(trial, StudyRecord.metric_of(study), retried=False)
