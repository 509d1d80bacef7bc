"""Four torchvision families train end to end from scratch through the real runner, and the runner
records the weights a trial started from (the unit half: tests/unit/test_models.py)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from study import records

from conftest import dr_labels, run_cli, storage_of, write_dr_lab
from support.models import FAMILIES

ARCHS_STUDY = f"""
schema = 2
[study]
objective = "image_classifier"
metric = "accuracy"
sampler = "grid"
pruner = "none"
trials = {len(FAMILIES)}
[fixed]
epochs = 1
batch_size = 16
image_size = 32
lr = 0.01
[space]
arch = {{ choices = {list(FAMILIES)!r} }}
""".replace("'", '"')


@pytest.mark.slow
def test_four_families_train_end_to_end_from_scratch(tmp_path):
    data = write_dr_lab(tmp_path / "dr", dr_labels(40), dr_labels(12, seed=1), size=32)
    (tmp_path / "archs.toml").write_text(ARCHS_STUDY)
    result = run_cli("run", str(tmp_path / "archs.toml"), "--data", str(data), "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="archs", storage=storage_of(tmp_path))
    done = [records.TrialRecord.from_trial(t) for t in study.trials]
    assert [t.state for t in done] == [TrialState.COMPLETE] * len(FAMILIES)
    assert sorted(t.config["arch"] for t in done) == sorted(FAMILIES)
    for trial in done:
        assert trial.best_epoch == 1 and len(trial.test_confusion) == 5 and trial.weights is None


@pytest.mark.slow
def test_the_runner_records_the_weights_a_complete_trial_started_from(made):
    root, _, _ = made
    study = optuna.load_study(study_name="abl", storage=storage_of(root))
    complete = [records.TrialRecord.from_trial(t) for t in study.trials if t.state == TrialState.COMPLETE]
    expected = {"resnet18": "ResNet18_Weights.IMAGENET1K_V1", "resnet50": "ResNet50_Weights.IMAGENET1K_V1"}
    assert any(t.config["pretrained"] for t in complete) and any(not t.config["pretrained"] for t in complete)
    assert all(t.weights == (expected[t.config["arch"]] if t.config["pretrained"] else None) for t in complete)
