"""A trial whose worker died (no heartbeat for the grace period), on a real SQLite storage with
a 1 s heartbeat: its reason, its checkpoint, and what a worker that waits for it says."""

import contextlib
import io
import time
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from study import records, storage
from study.run import trainer
from study.run.checkpoints import checkpoint_file
from study.run.loop import optimize
from study.run.output import Output


def heartbeat_storage(tmp_path: Path, max_retry: int) -> tuple[optuna.storages.RDBStorage, list[tuple[str, int]]]:
    """As `storage.open_storage` makes it, with a 1 s grace; and the trials whose checkpoint it abandoned."""
    retry = storage.RetryAndNote(max_retry=max_retry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        store = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1,
                                           grace_period=1, heartbeat_stale_trial_callback=retry)
    retry.storage = store
    abandoned: list[tuple[str, int]] = []
    retry.abandon = lambda name, number: abandoned.append((name, number))
    return store, abandoned


def dead_trial(store: optuna.storages.RDBStorage) -> optuna.Study:
    """A study whose trial 0 ran 2 epochs in a worker that then died (its last heartbeat now)."""
    study = optuna.create_study(study_name="hb", storage=store, direction="maximize")
    with warnings.catch_warnings():  # "heartbeats are meant for optimize": the worker that died ran it
        warnings.simplefilter("ignore", UserWarning)
        trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr(records.CURVES, {"epoch": [1, 2]})
    store.record_heartbeat(trial._trial_id)
    return study


@pytest.mark.parametrize("max_retry", [1, 0])
def test_a_trial_failed_by_the_heartbeat_records_heartbeat_and_a_used_up_one_abandons_its_checkpoint(
        tmp_path, max_retry):
    store, abandoned = heartbeat_storage(tmp_path, max_retry)
    study = dead_trial(store)
    time.sleep(2.1)  # SQLite's clock counts whole seconds: 1 s of grace passes within 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for seen in (study, optuna.load_study(study_name="hb", storage=f"sqlite:///{tmp_path / 'optuna.db'}")):
        dead = records.TrialRecord.from_trial(seen.trials[0])
        assert dead.state == TrialState.FAIL and dead.fail_reason == records.HEARTBEAT == "heartbeat"
        assert records.Summary.of(seen).reasons == [("heartbeat", 1)]
    retried = [t for t in study.trials if t.state == TrialState.WAITING]
    if max_retry:
        assert len(retried) == 1 and abandoned == []  # the retry resumes from (and then deletes) it
    else:
        assert retried == [] and abandoned == [("hb", 0)]  # nothing will resume it


def test_a_worker_waiting_for_a_dead_workers_trial_says_why_once_then_runs_its_retry(tmp_path, recwarn):
    store, _ = heartbeat_storage(tmp_path, max_retry=1)
    study = dead_trial(store)
    out, err = io.StringIO(), io.StringIO()
    warnings.simplefilter("always")
    with contextlib.redirect_stderr(err):  # the warnings: the `study` logger writes to sys.stderr
        optimize(study, lambda trial: trial.suggest_float("x", 0.0, 1.0), target=1, out=Output(out, err),
                 metric="kappa", wait_s=0.05, stale_after_s=1, notice_s=0.2)
    waiting = [line for line in out.getvalue().splitlines() if line.startswith("waiting:")]
    assert waiting == ["waiting: 0 of 1 trials finished and 1 running (trial 0) in other workers or left by a worker "
                       "that died; a dead worker's trial is failed 1 s after its last heartbeat and retried"]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert not [w for w in recwarn if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
    assert err.getvalue() == ""


def test_an_attempt_that_resumed_a_checkpoint_deletes_it_once_it_saves_its_own(tmp_path):
    """A retry resumes its dead origin's checkpoint (~300 MB for a ResNet50); once the retry has
    saved its own, nothing will load the origin's again."""
    origin, own = checkpoint_file(tmp_path, 3), checkpoint_file(tmp_path, 7)
    torch.save({"epoch": 2}, origin)
    trainer._save(own, [own, origin], {"study": "s", "trial": 7}, {"epoch": 3})
    assert not origin.exists()
    assert torch.load(own, weights_only=True) == {"epoch": 3, "owner": {"study": "s", "trial": 7}}
