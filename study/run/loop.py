"""The trial loop: ask for trials until the study holds its target, by the rules every worker
follows; and the re-queueing of interrupted trials. Importing it imports no torch."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from study import records
from study.exits import CudaContextLost, EnvironmentFailed, TrialsFailing
from study.records import FINISHED, TrialRecord
from study.run.failures import CUDA_ERROR, environment_cause, failure_reason, first_line, is_environment
from study.run.output import Output, describe

MAX_FAILURES_IN_A_ROW = 5
WAIT_S = 1.0  # how often a worker that waits for the last trials looks again
NOTICE_S = 10.0  # a wait this long is said (the last trials of a healthy run end sooner; a dead worker's do not)


def optimize(study: optuna.Study, objective: Callable[[optuna.Trial], float], *, target: int, out: Output,
             metric: str, timeout: float | None = None, cuda: bool = False, wait_s: float = WAIT_S,
             max_failures: int | None = MAX_FAILURES_IN_A_ROW, stale_after_s: float | None = None,
             notice_s: float = NOTICE_S) -> None:
    """Run trials of `study` (its sampler and pruner as set) until it holds `target` finished ones,
    counting every worker's, or the timeout, or a grid sampler's last point, printing one line per
    trial.

    A trial is asked for only while finished + running < target; a worker that sees the remaining
    trials already running waits (failing stale ones, whose retries it may then run), and after
    `notice_s` says once why (`stale_after_s`: how long after its last heartbeat a dead worker's
    trial is failed).
    Workers that check at the same moment may each start one, so W workers end with at most
    target + W - 1 finished trials, every one trained.

    A trial's own failure (NaN loss, CUDA out of memory, an exception) is recorded and the study
    goes on, until `max_failures` fail in a row: then `TrialsFailing` (None: never, for a grid
    whose every cell is a result). An error of the environment (`failures.is_environment`: the
    results folder, the storage, the cache) stops the run at once with `EnvironmentFailed`, the
    trial failed in the storage where it can still be written. After a sticky CUDA error no other
    trial starts: `CudaContextLost`."""
    failures: list[TrialRecord] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    stopped = False
    context_lost: list[str] = []  # set by a sticky CUDA error: the process must end
    environment: list[tuple[int | None, str]] = []  # (trial, error) of the environment: the run must end
    current: list[int] = []  # the number of the trial this process runs, until it is recorded

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal stopped
        current.clear()
        out.line(describe(trial, metric))
        if context_lost or environment:
            stopped = True
            return
        if cuda:
            # The trial's model, optimizer and batches are gone by now (nothing keeps its frames);
            # give their memory back, so that other workers on this GPU can use it
            import torch  # loaded: the trial ran on the GPU

            torch.cuda.empty_cache()
        if trial.state in FINISHED:
            bar.update(1)
            failures.clear()
        elif trial.state == TrialState.FAIL:
            failures.append(TrialRecord.from_trial(trial))
            if max_failures is not None and len(failures) >= max_failures:
                stopped = True

    def guarded(trial: optuna.Trial) -> float:
        current[:] = [trial.number]
        try:
            return objective(trial)
        except Exception as exc:
            if failure_reason(exc) == CUDA_ERROR:
                context_lost.append(f"trial {trial.number} failed with {CUDA_ERROR} ({first_line(exc)})")
            elif is_environment(exc):
                environment.append((trial.number, failure_reason(exc)))
            raise

    sampler = study.sampler
    waiting: float | None = None  # when this wait began; inf once it has been said
    with out.bar(target, f"trials of {study.study_name}", initial=records.count(study, FINISHED)) as bar:
        while not stopped and (deadline is None or time.monotonic() < deadline):
            try:
                trials = study.get_trials(deepcopy=False)
                finished = sum(t.state in FINISHED for t in trials)
                running = [t.number for t in trials if t.state == TrialState.RUNNING]
                exhausted = isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)
                if finished >= target or exhausted:  # a grid runs each point once, failed ones too
                    break
                if finished + len(running) >= target:
                    waiting = time.monotonic() if waiting is None else waiting
                    if time.monotonic() - waiting >= notice_s:
                        out.line(waiting_line(finished, target, running, stale_after_s))
                        waiting = float("inf")
                    with warnings.catch_warnings():  # "experimental" in Optuna 5; what its own optimize calls
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        optuna.storages.fail_stale_trials(study)
                    time.sleep(wait_s)
                    continue
                waiting = None
                left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
                study.optimize(guarded, n_trials=1, timeout=left, callbacks=[after_trial], catch=(Exception,))
            except Exception as exc:
                cause = environment_cause(exc)
                if cause is None and current and failed_elsewhere(study, current[0]):
                    out.warn(f"trial {current[0]} was failed by another worker while it ran here: this process sent "
                             f"no heartbeat for longer than the grace period (an overloaded machine or a paused "
                             f"process); its retry runs in the next worker that asks")
                    current.clear()
                    continue
                if cause is None:
                    raise
                # the storage failed outside the objective (asking, telling, reading the trials)
                environment.append((current[0] if current else None, failure_reason(cause)))
                stopped = True
    if context_lost:
        raise CudaContextLost(context_lost[0])
    if environment:
        raise EnvironmentFailed(environment_line(study, *environment[0]))
    if max_failures is not None and len(failures) >= max_failures:
        raise TrialsFailing(failing_line(study, failures, target))


def failed_elsewhere(study: optuna.Study, number: int) -> bool:
    """Whether trial `number`, which this process was running and had not told, is finished in the
    storage: another worker's heartbeat check failed it (Optuna then refuses this process's tell)."""
    try:
        return any(t.number == number and t.state.is_finished() for t in study.get_trials(deepcopy=False))
    except Exception:  # noqa: BLE001 - the storage's own error is the one to report
        return False


def waiting_line(finished: int, target: int, running: list[int], stale_after_s: float | None) -> str:
    """Why a worker waits instead of starting a trial: the last trials run elsewhere, or ran in a
    worker that died, whose trials the heartbeat fails (and Optuna retries) only after the grace."""
    numbers = ", ".join(str(n) for n in running[:10]) + (", ..." if len(running) > 10 else "")
    grace = f"{stale_after_s:.0f} s" if stale_after_s is not None else "a grace period"
    return (f"waiting: {finished} of {target} trials finished and {len(running)} running (trial {numbers}) in other "
            f"workers or left by a worker that died; a dead worker's trial is failed {grace} after its last "
            f"heartbeat and retried")


def environment_line(study: optuna.Study, number: int | None, error: str) -> str:
    """The one line of an environment failure, and where the trial it hit stands: failed in the
    storage (now, if it still shows RUNNING), or, where the storage cannot be written, left for
    the heartbeat to fail on the next run."""
    fix = "fix it and run the same command again to resume the study"
    if number is None:
        return f"the run's environment failed between trials ({error}); stopped: {fix}"
    try:
        if any(t.number == number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
            study.tell(number, state=TrialState.FAIL)
        state = f"trial {number} is recorded as failed"
    except Exception:  # noqa: BLE001 - the storage is what failed: say so instead
        state = (f"trial {number} may still show as RUNNING: the storage cannot be written, and the heartbeat "
                 f"fails it on the next run")
    return (f"the run's environment failed in trial {number} ({error}): not the trial's fault, so the run "
            f"stopped; {state}; {fix}")


def failing_line(study: optuna.Study, failures: list[TrialRecord], target: int) -> str:
    """The one line of a run stopped by failures in a row: which trials, the last reason, the count."""
    finished = records.count(study, FINISHED)
    numbers = f"trials {failures[0].number}-{failures[-1].number}"
    return (f"{len(failures)} trials failed in a row ({numbers}; last: {failures[-1].shown_reason()}); stopped "
            f"with {finished} of {target} trials finished: `study list` shows each trial's reason")


def requeue_interrupted(study: optuna.Study, out: Output) -> None:
    """Queue again, with the same params, each trial stopped by Ctrl-C/SIGTERM that has not been
    re-run yet; the re-run resumes from its checkpoint."""
    trials = [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
    done = {t.resume_of for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and t.fail_reason == records.INTERRUPTED and t.number not in done:
            study.enqueue_trial(dict(t.params), user_attrs={records.RESUME_OF: t.number})
            out.line(f"re-running interrupted trial {t.number} (from its last checkpoint)")
