"""The trial loop: ask for trials until the study holds its target, by the rules every worker
follows; and the re-queueing of interrupted trials."""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
import torch
from optuna.trial import TrialState

from study import records
from study.exits import CudaContextLost
from study.records import FINISHED, TrialRecord
from study.run.failures import CUDA_ERROR, failure_reason, first_line
from study.run.output import Output, describe

MAX_FAILURES_IN_A_ROW = 5
WAIT_S = 1.0  # how often a worker that waits for the last trials looks again


def optimize(study: optuna.Study, objective: Callable[[optuna.Trial], float], *, target: int, out: Output,
             metric: str, timeout: float | None = None, cuda: bool = False, wait_s: float = WAIT_S) -> None:
    """Run trials of `study` (its sampler and pruner as set) until it holds `target` finished ones,
    counting every worker's, or the timeout, five failures in a row, or a grid sampler's last
    point, printing one line per trial.

    A trial is asked for only while finished + running < target; a worker that sees the remaining
    trials already running waits (failing stale ones, whose retries it may then run). Workers that
    check at the same moment may each start one, so W workers end with at most target + W - 1
    finished trials, every one trained. After a trial that failed with a sticky CUDA error no
    other trial starts: `CudaContextLost` is raised."""
    failures: list[int] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    stopped = False
    context_lost: list[str] = []  # set by a sticky CUDA error: the process must end

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal stopped
        out.line(describe(trial, metric))
        if context_lost:
            stopped = True
            return
        if cuda:
            # The trial's model, optimizer and batches are gone by now (nothing keeps its frames);
            # give their memory back, so that other workers on this GPU can use it
            torch.cuda.empty_cache()
        if trial.state in FINISHED:
            bar.update(1)
            failures.clear()
        elif trial.state == TrialState.FAIL:
            failures.append(trial.number)
            if len(failures) >= MAX_FAILURES_IN_A_ROW:
                out.warn(
                    f"{len(failures)} trials failed in a row; stopping (last: "
                    f"{TrialRecord.from_trial(trial).fail_reason})"
                )
                stopped = True

    def guarded(trial: optuna.Trial) -> float:
        try:
            return objective(trial)
        except Exception as exc:
            if failure_reason(exc) == CUDA_ERROR:
                context_lost.append(f"trial {trial.number} failed with {CUDA_ERROR} ({first_line(exc)})")
            raise

    sampler = study.sampler
    with out.bar(target, f"trials of {study.study_name}", initial=records.count(study, FINISHED)) as bar:
        while not stopped and (deadline is None or time.monotonic() < deadline):
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            exhausted = isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)
            if finished >= target or exhausted:  # a grid runs each point once, failed ones too
                break
            if finished + running >= target:
                optuna.storages.fail_stale_trials(study)
                time.sleep(wait_s)
                continue
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            study.optimize(guarded, n_trials=1, timeout=left, callbacks=[after_trial], catch=(Exception,))
    if context_lost:
        raise CudaContextLost(context_lost[0])


def requeue_interrupted(study: optuna.Study, out: Output) -> None:
    """Queue again, with the same params, each trial stopped by Ctrl-C/SIGTERM that has not been
    re-run yet; the re-run resumes from its checkpoint."""
    trials = [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
    done = {t.resume_of for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and t.fail_reason == records.INTERRUPTED and t.number not in done:
            study.enqueue_trial(dict(t.params), user_attrs={records.RESUME_OF: t.number})
            out.line(f"re-running interrupted trial {t.number} (from its last checkpoint)")
