"""The record schema read back from hand-made trials (no training): a trial of any age, the line
per trial, the summary that `list`, the run and the report share, and the factor table."""

import datetime

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from objectives.metrics import TABLE_METRICS
from study import records
from study.records import StudyRecord, Summary, TrialRecord
from study.report.frames import cell_table, factor_table
from study.run.output import describe

START = datetime.datetime(2025, 1, 1, 12, 0, 0)
DISTS = {"lr": FloatDistribution(1e-3, 1e-1, log=True), "loss": CategoricalDistribution(["ce", "focal"])}


def trial(state=TrialState.COMPLETE, value=0.5, **attrs):
    return create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={"lr": 0.01, "loss": "ce"},
        distributions=DISTS,
        user_attrs=attrs,
    )


def test_a_trial_record_reads_every_key_and_defaults_what_an_old_trial_lacks():
    full = trial(config={"lr": 0.01, "seed": 3}, curves={"epoch": [1, 2], "val_kappa": [0.4, 0.5]}, best_epoch=2,
                 val_metrics={"kappa": 0.5, "loss": 1.0}, test_metrics={"kappa": 0.45}, test_confusion=[[1, 0], [0, 1]],
                 class_names=["a", "b"], seconds=3.5, split_hash="abc", resume_of=7)
    record = TrialRecord.from_trial(full)
    assert (record.epochs, record.best_epoch, record.config["seed"], record.metrics("test")["kappa"]) == (2, 2, 3, 0.45)
    assert record.origin == 7 and record.retry_of is None and record.split_hash == "abc"
    old = TrialRecord.from_trial(trial(state=TrialState.FAIL))
    assert (old.epochs, old.config, old.test_metrics, old.class_names, old.origin) == (0, {}, {}, [], None)
    assert old.shown_reason() == records.STALE


def test_the_line_per_trial_says_state_metric_and_params():
    done = create_trial(value=0.61234, params={"lr": 0.012345}, distributions={"lr": DISTS["lr"]},
                        user_attrs={"curves": {"epoch": [1, 2, 3]}, "best_epoch": 2})
    line = describe(done, "kappa")
    assert line.endswith("COMPLETE val kappa=0.6123 (best epoch 2/3) | lr=0.01235 [0s]")
    pruned = create_trial(state=TrialState.PRUNED, params={}, distributions={},
                          user_attrs={"curves": {"epoch": [1], "val_kappa": [0.2]}})
    assert "PRUNED   after epoch 1, val kappa=0.2000" in describe(pruned, "kappa")
    failed = create_trial(state=TrialState.FAIL, params={}, distributions={}, user_attrs={"fail_reason": "nan_loss"})
    assert "FAIL     nan_loss |" in describe(failed, "kappa")


def test_the_summary_counts_states_reasons_and_the_best_trial():
    study = optuna.create_study(direction="maximize")
    for t in [
        trial(value=0.3),
        trial(value=0.7, test_metrics={"kappa": 0.6}),
        trial(TrialState.PRUNED),
        trial(TrialState.FAIL, fail_reason="cuda_oom"),
        trial(TrialState.FAIL, fail_reason="cuda_oom"),
        trial(TrialState.FAIL),
    ]:
        study.add_trial(t)
    summary = Summary.of(study)
    assert (summary.complete, summary.pruned, summary.failed, summary.running, summary.finished) == (2, 1, 3, 0, 3)
    assert summary.reasons == [("cuda_oom", 2), ("stale worker", 1)]
    assert summary.best.number == 1 and summary.best.test_metrics == {"kappa": 0.6}


def test_a_study_record_round_trips_and_an_old_study_reads_with_defaults():
    study = optuna.create_study()
    StudyRecord(space_hash="h", space_file="f.toml", space_text="schema = 2", objective="image_classifier",
                metric="kappa", dataset="d",
                fixed={"epochs": 2}, pinned={}, sampler={"class": "RandomSampler"}, pruner={"class": "NopPruner"},
                split_hash="s", shared_test_groups=0).write(study)
    assert set(study.user_attrs) == {"space_hash", "space_file", "space_text", "objective", "metric", "dataset",
                                     "fixed", "pinned", "sampler", "pruner", "report", "split_hash",
                                     "shared_test_groups"}
    back = StudyRecord.from_study(study)
    assert (
        back.fixed == {"epochs": 2} and back.report.cells == () and back.split_hash == "s"
        and back.space_text == "schema = 2"
    )
    old = StudyRecord.from_study(optuna.create_study())
    assert (old.metric, old.space_hash, old.fixed) == ("value", None, {})
    assert old.report.cells == ("arch", "pretrained", "loss")  # made before [report] was recorded: the classifier's


def frame(rows):
    """A hand-built trial frame, as `trial_frame` makes it."""
    base = {f"{split}_{name}": np.nan for split in records.SPLITS for name in TABLE_METRICS}
    return pd.DataFrame([{**base, **row} for row in rows])


def test_factor_and_cell_tables_on_a_hand_built_frame():
    rows = [
        {
            "number": 0,
            "state": "COMPLETE",
            "value": 0.5,
            "arch": "r18",
            "loss": "ce",
            "sampled:arch": "r18",
            "sampled:loss": "ce",
        },
        {
            "number": 1,
            "state": "COMPLETE",
            "value": 0.7,
            "arch": "r18",
            "loss": "focal",
            "sampled:arch": "r18",
            "sampled:loss": "focal",
            "sampled:focal_gamma": 2.0,
        },
        {
            "number": 2,
            "state": "PRUNED",
            "value": np.nan,
            "arch": "r50",
            "loss": "ce",
            "sampled:arch": "r50",
            "sampled:loss": "ce",
        },
        {
            "number": 3,
            "state": "COMPLETE",
            "value": 0.6,
            "arch": "r50",
            "loss": "ce",
            "sampled:arch": "r50",
            "sampled:loss": "ce",
        },
        {
            "number": 4,
            "state": "FAIL",
            "value": np.nan,
            "arch": "r50",
            "loss": "focal",
            "sampled:arch": "r50",
            "sampled:loss": "focal",
            "sampled:focal_gamma": 1.0,
        },
    ]
    table = factor_table(frame(rows), {"arch": True, "loss": True, "focal_gamma": False}, maximize=True).set_index(
        ["factor", "level"]
    )
    assert table.loc[("arch", "r18"), ["n", "pruned", "failed", "best", "best_trial"]].tolist() == [2, 0, 0, 0.7, 1]
    assert table.loc[("arch", "r50"), ["n", "pruned", "failed", "best"]].tolist() == [1, 1, 1, 0.6]
    assert table.loc[("arch", "r50"), "mean"] == pytest.approx(0.6) and np.isnan(table.loc[("arch", "r50"), "std"])
    assert table.loc[("loss", "ce"), "mean"] == pytest.approx(0.55)
    assert list(table.loc["focal_gamma"].index) == ["1", "2"]  # counted only where sampled
    cells = cell_table(
        frame(rows), maximize=True, cells=("arch", "loss", "pretrained")
    )  # pretrained never varies: left out
    assert list(cells.columns[:2]) == ["arch", "loss"] and len(cells) == 4
    assert cells.set_index(["arch", "loss"]).loc[("r18", "focal"), "best"] == 0.7
