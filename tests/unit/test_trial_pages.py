"""Trial pages on the dashboard: every finished trial gets its drawn figures (attached while it ran,
drawn after) and a Markdown note with its config, best epoch, metrics and fail or prune reason."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta
from optuna.storages import RDBStorage

from study.dashboard import trial_pages
from study.dashboard.trial_pages import Page, TrialPages

CURVES = {"epoch": [1, 2, 3], "phase": ["fe", "ft", "ft"], "train_accuracy": [0.3, 0.5, 0.6],
          "val_kappa": [0.1, 0.2, 0.4]}
NAMES = ["No DR", "Mild", "Severe"]


def _page(trial: optuna.Trial, state: str, reason: str | None = None) -> Page:
    complete = state == "COMPLETE"
    return Page("s", trial.number, state, "kappa", params=dict(trial.params),
                config={**trial.params, "epochs": 3, "arch": "resnet18"}, best_epoch=3 if complete else None,
                val={"kappa": 0.4, "accuracy": 0.7, "loss": 0.81} if complete else {},
                test={"kappa": 0.35, "accuracy": 0.65, "loss": 0.9} if complete else {},
                reason=reason, curves=CURVES, confusion=[[5, 1, 0], [1, 2, 1], [0, 0, 0]] if complete else None,
                class_names=NAMES, seconds=9.25, epochs=3)


@pytest.mark.parametrize("enabled", [True, False])
def test_every_finished_trial_gets_drawn_figures_and_a_note(tmp_path: Path, enabled: bool):
    storage = RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    store = FileSystemArtifactStore(str(tmp_path / "artifacts"))
    (tmp_path / "artifacts").mkdir()
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    pages = TrialPages(store, enabled=enabled)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        if trial.number == 1:
            pages.attach(trial, _page(trial, "PRUNED", "validation kappa 0.100 below the median at FT epoch 2"))
            raise optuna.TrialPruned()
        if trial.number == 2:
            pages.attach(trial, _page(trial, "FAIL", "nan_loss"))
            raise FloatingPointError("nan")
        pages.attach(trial, _page(trial, "COMPLETE"))
        return lr

    study.optimize(objective, n_trials=3, catch=(FloatingPointError,))
    pages.close()
    assert pages.errors == []
    kinds = {0: {"curves", "confusion"}, 1: {"curves"}, 2: {"curves"}}
    for trial in study.get_trials():
        metas = get_all_artifact_meta(trial, storage=storage)
        text = trial_pages.read_note(study, storage, trial.number)
        if not enabled:
            assert metas == [] and text == ""
            continue
        assert {m.filename.split("_")[0] for m in metas} == kinds[trial.number]
        for meta in metas:  # the drawn figure replaced the 1x1 placeholder under the same id
            drawn = (tmp_path / "artifacts" / meta.artifact_id).read_bytes()
            assert drawn.startswith(b"\x89PNG") and len(drawn) > 5000 and drawn != trial_pages.PLACEHOLDER
        assert text.startswith(f"## Trial {trial.number}: ")
        assert "`lr=" in text and "`arch=resnet18`" in text
    if enabled:
        complete = trial_pages.read_note(study, storage, 0)
        assert "| validation | 0.400 | 0.700 | 0.81 |" in complete and "| test | 0.350 |" in complete
        assert "best epoch (on validation kappa): **3** of 3" in complete
        assert "**Pruned:** validation kappa 0.100 below the median" in trial_pages.read_note(study, storage, 1)
        assert "**Failed:** nan_loss" in trial_pages.read_note(study, storage, 2)


def test_a_page_that_cannot_be_drawn_warns_and_never_fails_the_trial(tmp_path: Path, capfd):
    storage = RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")

    class Broken:
        def write(self, artifact_id, content_body):
            raise OSError("disk full")

    pages = TrialPages(Broken())
    study.optimize(lambda t: (pages.attach(t, _page(t, "COMPLETE")), 1.0)[1], n_trials=1)
    pages.close()
    assert study.trials[0].state.name == "COMPLETE"
    err = capfd.readouterr().err
    assert len(pages.errors) == 1 and "disk full" in pages.errors[0]
    assert "study: warning: trial 0's dashboard page" in err


def test_heartbeat_note_says_what_happened():
    trial = optuna.trial.create_trial(params={"lr": 0.01},
                                      distributions={"lr": optuna.distributions.FloatDistribution(1e-3, 1.0)},
                                      user_attrs={"config": {"lr": 0.01, "epochs": 5}, "curves": CURVES},
                                      state=optuna.trial.TrialState.FAIL)
    text = trial_pages.heartbeat_note(trial, "kappa", retried=True)
    assert "stopped sending heartbeats after 3 epoch(s)" in text and "resumes from its checkpoint" in text
    assert "`lr=0.01`" in text
    assert "retries are used up" in trial_pages.heartbeat_note(trial, "kappa", retried=False)
