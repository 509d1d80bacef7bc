"""The notebook API: `from study import load_trials, load_ablation` gives flat frames that match
the storage, inactive parameters are NaN (not the config's default), and importing `study` loads
none of the heavy libraries."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

import study
from objectives.errors import InputError

from conftest import FIXTURES, ROOT


def _record(kappa: float, state: TrialState = TrialState.COMPLETE, **extra) -> dict:
    return {"config": {"loss": "ce", "focal_gamma": 0.0, "lr": 0.01}, "best_epoch": 3, "seconds": 9.5,
            "fail_reason": None, "class_names": ["a", "b"],
            "val_metrics": {"kappa": kappa, "accuracy": 0.7, "recall": [0.5, 1.0]},
            "test_metrics": {"kappa": kappa - 0.1, "accuracy": 0.6, "recall": [0.25, 0.75]}, **extra}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results folder whose SQLite storage holds a study with a conditional parameter: trial 0 is
    cross entropy (no focal_gamma sampled, though its config records the default 0.0)."""
    folder = tmp_path / "results"
    folder.mkdir()
    made = optuna.create_study(study_name="s", storage=f"sqlite:///{folder / 'optuna.db'}", direction="maximize")
    loss = CategoricalDistribution(["ce", "focal"])
    gamma = FloatDistribution(0.0, 5.0)
    lr = FloatDistribution(1e-4, 1e-1, log=True)
    made.add_trial(create_trial(params={"loss": "ce", "lr": 0.01}, distributions={"loss": loss, "lr": lr},
                                value=0.5, user_attrs=_record(0.5)))
    made.add_trial(create_trial(params={"loss": "focal", "focal_gamma": 2.0, "lr": 0.02},
                                distributions={"loss": loss, "focal_gamma": gamma, "lr": lr}, value=0.6,
                                user_attrs=_record(0.6)))
    made.add_trial(create_trial(params={"loss": "ce", "lr": 0.03}, distributions={"loss": loss, "lr": lr},
                                state=TrialState.FAIL, user_attrs={"fail_reason": "cuda_oom", "seconds": 1.0}))
    made.add_trial(create_trial(params={"loss": "ce", "lr": 0.04}, distributions={"loss": loss, "lr": lr},
                                state=TrialState.RUNNING))
    return folder


def test_load_trials_is_flat_and_inactive_parameters_are_nan(results: Path):
    frame = study.load_trials("s", results=results)
    assert list(frame.columns[:8]) == ["number", "state", "value", "loss", "lr", "focal_gamma", "best_epoch", "seconds"]
    assert frame.number.tolist() == [0, 1, 2]  # the running trial has nothing to show yet
    assert frame.state.tolist() == ["COMPLETE", "COMPLETE", "FAIL"]
    assert math.isnan(frame.focal_gamma[0]) and frame.focal_gamma[1] == 2.0  # not the config's 0.0
    assert frame.val_kappa.tolist()[:2] == [0.5, 0.6] and frame.test_kappa.tolist()[:2] == pytest.approx([0.4, 0.5])
    assert frame.val_recall_b[0] == 1.0 and frame.test_recall_a[1] == 0.25  # per-class lists by class name
    assert frame.fail_reason[2] == "cuda_oom" and math.isnan(frame.value[2]) and math.isnan(frame.val_kappa[2])
    assert frame.columns.get_loc("val_kappa") < frame.columns.get_loc("test_kappa")


def test_load_trials_matches_a_real_storage_and_the_report_tables_take_a_study(tmp_path: Path):
    folder = tmp_path / "results"
    folder.mkdir()
    shutil.copy(FIXTURES / "recipe2_study" / "optuna.db", folder / "optuna.db")
    frame = study.load_trials("recipe2", storage=f"sqlite:///{folder / 'optuna.db'}")
    stored = optuna.load_study(study_name="recipe2", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert len(frame) == len(stored.trials)
    for row, trial in zip(frame.itertuples(), stored.trials):
        assert (row.number, row.state, row.value) == (trial.number, trial.state.name, trial.value)
        assert {k: getattr(row, k) for k in trial.params} == trial.params
        assert row.test_kappa == trial.user_attrs["test_metrics"]["kappa"]
        assert row.val_balanced_accuracy == trial.user_attrs["val_metrics"]["balanced_accuracy"]
        assert row.best_epoch == trial.user_attrs["best_epoch"] and row.seconds == trial.user_attrs["seconds"]
    ablation = study.load_ablation("recipe2", results=folder)  # the parent's name finds recipe2.ablation
    assert set(ablation.variant) == {"baseline", "loss=ce"} and sorted(set(ablation.seed)) == [1000, 1001, 1002]
    assert set(ablation[ablation.variant == "loss=ce"].loss) == {"ce"}
    assert set(ablation[ablation.variant == "baseline"].loss) == {"focal"}
    table = study.ablation_table("recipe2.ablation", results=folder)
    assert {"variant", "metric", "delta", "ci_low", "ci_high", "p_holm"} <= set(table.columns)
    assert set(study.factor_table(stored).factor) == {"lr", "loss"}
    assert study.cell_table(stored).loss.tolist() == ["ce", "focal"]


def test_bad_names_are_one_line_input_errors(results: Path, tmp_path: Path):
    with pytest.raises(InputError, match="no study 'nope'"):
        study.load_trials("nope", results=results)
    with pytest.raises(InputError, match="not an ablation study"):
        study.load_ablation("s", results=results)
    with pytest.raises(InputError, match="no storage at"):
        study.load_trials("s", results=tmp_path / "elsewhere")


def test_importing_study_loads_no_heavy_library():
    code = ("import sys, study; heavy = {'pandas', 'optuna', 'torch', 'scipy', 'matplotlib'} & set(sys.modules); "
            "print(sorted(heavy)); assert callable(study.load_trials)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
