"""The trial loop's rules with a lambda objective on Optuna's in-memory storage (no training): the
exact target, the timeout, five failures in a row, a grid's last point, and a worker that waits
while the last trials run elsewhere."""

import contextlib
import errno
import io
import os
import sqlite3
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from objectives.train import Diverged
from study.exits import ENVIRONMENT_EXIT, EnvironmentFailed, TrialsFailing
from study.records import FINISHED
from study.run.loop import MAX_FAILURES_IN_A_ROW, optimize
from study.run.output import Output


def memory_study(sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize",
                               sampler=sampler or optuna.samplers.RandomSampler(seed=0))


def run(study: optuna.Study, objective, target: int, **kwargs) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):  # the warnings: the `study` logger writes to sys.stderr
        optimize(study, objective, target=target, out=Output(out, err), metric="kappa", **kwargs)
    return out.getvalue() + err.getvalue()


def states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


def suggest(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def test_the_study_stops_at_exactly_its_target_and_a_larger_target_adds_the_difference():
    study = memory_study()
    printed = run(study, suggest, 4)
    assert states(study) == [TrialState.COMPLETE] * 4
    assert printed.count("COMPLETE") == 4 and "val kappa=" in printed
    run(study, suggest, 4)
    assert len(study.trials) == 4  # a study that holds its target runs nothing
    run(study, suggest, 6)
    assert states(study) == [TrialState.COMPLETE] * 6


def test_pruned_trials_count_toward_the_target_and_failed_ones_do_not():
    study = memory_study()
    script = iter(["prune", "fail", "ok", "fail", "ok"])

    def objective(trial: optuna.Trial) -> float:
        step = next(script)
        if step == "prune":
            raise optuna.TrialPruned()
        if step == "fail":
            raise ValueError("boom")
        return suggest(trial)

    run(study, objective, 3)
    assert states(study) == [
        TrialState.PRUNED,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]


def test_five_failures_in_a_row_stop_the_run_with_a_non_zero_exit_and_a_summary_line():
    study = memory_study()
    with pytest.raises(TrialsFailing) as stopped:
        run(study, lambda trial: 1 / 0, 20)
    assert states(study) == [TrialState.FAIL] * MAX_FAILURES_IN_A_ROW
    assert stopped.value.code != 0
    line = stopped.value.line()
    assert "5 trials failed in a row (trials 0-4; last: " in line and "0 of 20 trials finished" in line
    assert "\n" not in line


def test_a_grid_without_a_failure_limit_runs_every_cell_even_when_all_fail():
    """`ablate`'s grids: a cell that fails (nan_loss) is a result, not a reason to stop."""
    study = memory_study(optuna.samplers.GridSampler({"x": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]}, seed=0))

    def diverges(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0.0, 1.0)
        raise Diverged("nan_loss")

    run(study, diverges, 7, max_failures=None)
    assert states(study) == [TrialState.FAIL] * 7


def failing_with(error: BaseException, after: int = 1):
    """An objective whose trial number `after` raises `error` (the first ones complete)."""

    def objective(trial: optuna.Trial) -> float:
        if trial.number >= after:
            raise error
        return suggest(trial)

    return objective


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EIO])
@pytest.mark.parametrize("max_failures", [MAX_FAILURES_IN_A_ROW, None])
def test_an_error_of_the_results_folder_stops_the_run_at_once_with_its_own_exit_code(tmp_path, code, max_failures):
    """A full or read-only results folder would fail every later trial too: one trial fails
    (recorded, nothing left RUNNING), then the run ends with one line and exit code 74, in a
    search and in an ablation grid alike."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    error = OSError(code, os.strerror(code), str(tmp_path / "checkpoints" / "trial1.pt"))
    with pytest.raises(EnvironmentFailed) as stopped:
        run(study, failing_with(error), 20, max_failures=max_failures)
    assert states(study) == [TrialState.COMPLETE, TrialState.FAIL]
    assert stopped.value.code == ENVIRONMENT_EXIT == 74
    line = stopped.value.line()
    assert line.startswith("study: error: the run's environment failed in trial 1 (") and f"[Errno {code}]" in line
    assert "trial 1 is recorded as failed" in line and "run the same command again" in line and "\n" not in line


def test_an_error_of_the_storage_inside_a_trial_stops_the_run():
    study = memory_study()
    with pytest.raises(EnvironmentFailed, match="StorageInternalError"):
        run(study, failing_with(optuna.exceptions.StorageInternalError("commit failed"), after=0), 20)
    assert states(study) == [TrialState.FAIL]


@pytest.mark.parametrize("error", [ValueError("boom"), OSError(errno.ENOMEM, "Cannot allocate memory"),
                                   Diverged("nan_loss")])
def test_a_trial_of_its_own_failing_does_not_stop_the_run(error):
    """The trial's own errors (a NaN loss, memory its size needs) are recorded and the study goes on."""
    study = memory_study()
    failed_once = failing_with(error)

    def objective(trial: optuna.Trial) -> float:
        return failed_once(trial) if trial.number <= 1 else suggest(trial)

    run(study, objective, 3)
    assert states(study) == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]


def test_a_storage_that_cannot_be_written_leaves_the_trial_to_the_heartbeat_and_says_so(tmp_path):
    """The storage locked by another connection when the trial ends: Optuna cannot record it, the
    run stops with one line saying the trial still shows RUNNING until the heartbeat fails it."""
    path = tmp_path / "optuna.db"
    store = optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 0.2}})
    study = optuna.create_study(storage=store, direction="maximize")
    locker = sqlite3.connect(path, timeout=0.2, isolation_level=None)

    def objective(trial: optuna.Trial) -> float:
        locker.execute("BEGIN EXCLUSIVE")  # e.g. a backup, or a colleague's migration
        return 1.0

    try:
        with pytest.raises(EnvironmentFailed) as stopped:
            run(study, objective, 3)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    line = stopped.value.line()
    assert "trial 0 may still show as RUNNING" in line and "the heartbeat fails it on the next run" in line
    assert states(optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{path}")) == [TrialState.RUNNING]


def test_the_timeout_stops_starting_trials():
    study = memory_study()

    def slow(trial: optuna.Trial) -> float:
        time.sleep(0.3)
        return suggest(trial)

    started = time.monotonic()
    run(study, slow, 100, timeout=0.5)
    assert 1 <= len(study.trials) <= 3 and time.monotonic() - started < 5
    assert all(state == TrialState.COMPLETE for state in states(study))


def test_a_grid_stops_at_its_last_point_even_below_the_target():
    study = memory_study(optuna.samplers.GridSampler({"x": [0.1, 0.2, 0.3]}, seed=0))
    run(study, lambda trial: trial.suggest_float("x", 0.0, 1.0), 10)
    assert sorted(t.params["x"] for t in study.trials) == [0.1, 0.2, 0.3]


def test_a_worker_waits_while_the_last_trials_run_elsewhere_and_starts_none():
    """Target 3: two trials finished, the third running in another worker. This worker must not
    start a fourth; it waits until the other one finishes, then stops."""
    study = memory_study()
    for value in (0.1, 0.2):
        study.tell(study.ask(), value)
    elsewhere = study.ask()

    finisher = threading.Timer(0.5, lambda: study.tell(elsewhere, 0.3))
    started = time.monotonic()
    finisher.start()
    try:
        run(study, suggest, 3, wait_s=0.05)
    finally:
        finisher.join()
    assert time.monotonic() - started >= 0.5
    assert states(study) == [TrialState.COMPLETE] * 3


def test_a_worker_runs_the_trial_that_a_failed_one_leaves_to_do():
    """Target 3 with 2 finished and 1 running elsewhere: when that one fails, this worker runs
    the remaining trial (a FAIL never counts)."""
    study = memory_study()
    for value in (0.1, 0.2):
        study.tell(study.ask(), value)
    elsewhere = study.ask()
    finisher = threading.Timer(0.3, lambda: study.tell(elsewhere, state=TrialState.FAIL))
    finisher.start()
    try:
        run(study, suggest, 3, wait_s=0.05)
    finally:
        finisher.join()
    assert states(study) == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert sum(state in FINISHED for state in states(study)) == 3


def test_two_workers_on_one_study_overshoot_by_at_most_one_and_never_fail_a_trial():
    """Two loops in threads on one study: each asks only while finished + running < target, so
    the study ends with target or target + 1 finished trials, none failed for bookkeeping."""
    study = memory_study()

    def objective(trial: optuna.Trial) -> float:
        time.sleep(0.02)
        return suggest(trial)

    workers = [threading.Thread(target=run, args=(study, objective, 7), kwargs={"wait_s": 0.01}) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert 7 <= len(study.trials) <= 8
    assert set(states(study)) == {TrialState.COMPLETE}


@pytest.mark.parametrize("bad", ["--trials=0", "--workers=0", "--heartbeat=0", "--checkpoint-every=-1"])
def test_run_flags_are_checked_by_argparse_validators(tmp_path, capsys, bad):
    from study import cli

    assert cli.main(["run", "dr_focal", bad, "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("study run: error: ") and "must be >=" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_every_command_takes_the_shared_flags(tmp_path):
    from study.cli import build_parser

    parser = build_parser()
    ablate = parser.parse_args(["ablate", "abl", "--data", str(tmp_path), "--layout", "kaggle", "--device", "cpu",
                                "--storage", "sqlite:///x.db", "--results", "r"])
    assert (ablate.data, ablate.layout, ablate.device, ablate.storage, str(ablate.results)) == (
        tmp_path,
        "kaggle",
        "cpu",
        "sqlite:///x.db",
        "r",
    )
    for command in (["list"], ["report", "s"], ["dashboard", "s"], ["run", "dr_focal"]):
        args = parser.parse_args([*command, "--storage", "sqlite:///y.db", "--results", "q"])
        assert args.storage == "sqlite:///y.db" and str(args.results) == "q"


def test_a_trial_failed_by_another_workers_heartbeat_check_while_it_ran_here_is_one_warning():
    """This worker stalled past the grace period (an overloaded machine): another worker failed
    its trial and queued the retry; Optuna then refuses this worker's result. One warning, and
    the loop goes on to the target."""
    study = memory_study()

    def stalled(trial: optuna.Trial) -> float:
        if trial.number == 1:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # what the other worker does
        return suggest(trial)

    printed = run(study, stalled, 3)
    assert states(study) == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert printed.count("study: warning: trial 1 was failed by another worker while it ran here") == 1
