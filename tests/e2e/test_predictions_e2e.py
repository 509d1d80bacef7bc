"""`python -m study run` stores val and test predictions whose intervals are readable from the
storage alone (the unit half: tests/unit/test_predictions.py)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from support.predictions import grouped_dr


@pytest.mark.slow
def test_cli_run_stores_predictions_and_intervals_readable_from_the_storage_alone(tmp_path: Path,
                                                                                 torch_home: Path) -> None:
    """`python -m study run` on grouped data: every complete trial holds val and test predictions
    whose rows line up with split.csv, the recorded test accuracy from them, and its intervals,
    which `load_trials`, `report` and the trial note show."""
    import csv

    from study.api import load_trials
    from study.predictions import read_predictions
    from study.records import TEST_INTERVALS

    from conftest import run_cli

    data = grouped_dr(tmp_path / "dr", patients=40, seed=1)
    results = tmp_path / "results"
    run = run_cli("run", "dr_focal", "--data", str(data), "--trials", "2", "--set", "image_size=32", "--set",
                  "epochs=2", "--set", "arch=resnet18", "--set", "batch_size=16", "--results", str(results),
                  cwd=tmp_path, torch_home=torch_home)
    assert run.returncode == 0, run.stderr
    storage = f"sqlite:///{results / 'optuna.db'}"
    study = optuna.load_study(study_name="dr_focal", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    rows = list(csv.DictReader((results / "dr_focal" / "split.csv").open()))
    test_rows = [r for r in rows if r["split"] == "test"]
    for trial in complete:
        got = read_predictions(study._storage, trial, "test")  # the storage alone, no study object
        val = read_predictions(study, trial, "val")
        assert got is not None and val is not None
        assert got.labels.tolist() == [int(r["label"]) for r in test_rows]
        assert got.groups.max() + 1 == len({r["group"] for r in test_rows})
        assert len(val.labels) == sum(r["split"] == "val" for r in rows)
        accuracy = float((got.probabilities.argmax(1) == got.labels).mean())
        assert accuracy == pytest.approx(trial.user_attrs["test_metrics"]["accuracy"])
        record = trial.user_attrs[TEST_INTERVALS]
        assert record["resamples"] == 2000 and record["seed"] == trial.number
        low, high = record["intervals"]["accuracy"]
        assert low <= accuracy <= high
    frame = load_trials(study)
    assert {"test_kappa_low", "test_kappa_high", "test_accuracy_low"} <= set(frame.columns)
    report = run_cli("report", "dr_focal", "--results", str(results), "--format", "md", cwd=tmp_path,
                     torch_home=torch_home)
    assert report.returncode == 0, report.stderr
    text = (results / "dr_focal" / "report.md").read_text()
    assert "95 % interval from a bootstrap over test patients" in text and "missing (older run)" not in text
