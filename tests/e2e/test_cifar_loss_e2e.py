"""The cifar_loss study end to end: `run` trains on the embedded real digits and on CIFAR-10 batches
through the real CLI (the unit half: tests/unit/test_cifar_loss.py)."""

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import CIFAR_NAMES, run_cli, write_cifar


def load(results: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{results / 'optuna.db'}")


@pytest.mark.slow
def test_run_cifar_loss_on_embedded_digits_learns(tmp_path: Path):
    result = run_cli(
        "run", "cifar_loss", "--trials", "2", "--set", "epochs=2", "--set", "loss=ce", "--set", "lr=0.05", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "data: embedded dataset digits" in result.stdout
    root = next((tmp_path / "results" / "data").glob("digits-*"))
    assert len(list(root.glob("*/*/*.png"))) == 1797
    study = load(tmp_path / "results", "cifar_loss")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    assert study.best_value > 0.5, result.stdout  # real learning on real digits in 2 epochs
    for trial in complete:
        assert trial.user_attrs["class_names"] == [str(d) for d in range(10)]
        assert trial.user_attrs["config"]["epochs"] == 2 and trial.user_attrs["config"]["arch"] == "convnet"
        assert len(trial.user_attrs["curves"]["val_accuracy"]) == 2
        assert "macro_f1" in trial.user_attrs["val_metrics"]
        assert sum(map(sum, trial.user_attrs["test_confusion"])) == 360
        assert len(trial.user_attrs["val_confusion"]) == 10


@pytest.mark.slow
def test_run_cifar_loss_on_cifar_batches_names_the_classes(tmp_path: Path):
    write_cifar(tmp_path / "data", per_batch=40)
    result = run_cli("run", "cifar_loss", "--data", str(tmp_path / "data"), "--trials", "1", "--set", "epochs=1",
                     "--set", "arch=convnet", "--set", "batch_size=32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(cifar10 layout)" in result.stdout
    (trial,) = load(tmp_path / "results", "cifar_loss").trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["class_names"] == CIFAR_NAMES
    assert sum(map(sum, trial.user_attrs["test_confusion"])) == 40
    wrong = run_cli("run", "dr_focal", "--data", str(tmp_path / "data"), "--set", "pretrained=false", cwd=tmp_path)
    assert (
        wrong.returncode == 2
        and "the data has 10 classes" in wrong.stderr
        and len(wrong.stderr.strip().splitlines()) == 1
    )
