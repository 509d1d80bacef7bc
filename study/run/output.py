"""Console output of a run: bars on a terminal, plain lines otherwise; the line per trial, the
study's state before it runs and its summary after."""

from __future__ import annotations

import sys
from typing import Any, TextIO

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from study import records, storage
from study.log import get_logger

_log = get_logger(__name__)


class Output:
    """Where progress goes: bars on a terminal, plain lines otherwise. Lines are results (stdout);
    warnings are logs (the `study` logger, `study.log`), which ``-q`` silences."""

    def __init__(self, stream: TextIO | None = None, err: TextIO | None = None) -> None:
        # the streams of the call, not of the import: the CLI called in-process after sys.stderr
        # was replaced (a test's capture, a notebook) must not write to a stream since closed
        self.stream = stream or sys.stdout
        self.err = err or sys.stderr
        self.bars = self.err.isatty()

    def line(self, text: str) -> None:
        tqdm.write(text, file=self.stream) if self.bars else print(text, file=self.stream, flush=True)

    def warn(self, text: str) -> None:
        _log.warning("%s", text)

    def bar(self, total: int, desc: str, **kwargs: Any) -> tqdm:
        """A bar on a terminal (an `objectives.progress.BarFactory`, with tqdm's options)."""
        return tqdm(total=total, desc=desc, disable=not self.bars, file=self.err, dynamic_ncols=True, **kwargs)


def describe(trial: optuna.trial.FrozenTrial, metric: str) -> str:
    """One line per finished trial: number, state, validation metric, params."""
    record = records.TrialRecord.from_trial(trial)
    params = " ".join(f"{k}={fmt(v)}" for k, v in trial.params.items())
    if trial.state == TrialState.COMPLETE:
        status = f"val {metric}={trial.value:.4f} (best epoch {record.best_epoch}/{record.epochs})"
    elif trial.state == TrialState.PRUNED:
        last = record.curves.get(f"val_{metric}", [float("nan")])[-1]
        status = f"after epoch {record.epochs}, val {metric}={last:.4f}"
    else:
        status = record.fail_reason or ""
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else 0.0
    )
    return f"trial {trial.number:>3} {trial.state.name:<8} {status} | {params} [{seconds:.0f}s]"


def announce(study: optuna.Study, target: int, device: str, where: str | storage.Resolved, out: Output) -> bool:
    """Say where the study stands; False when it already holds its target."""
    done = records.count(study, records.FINISHED)
    url = storage.resolve(where).shown
    if done >= target:
        out.line(f"study {study.study_name} already has {done} finished trials (target {target}); "
                 f"raise --trials to add more. Storage: {url}")
        return False
    out.line(f"study {study.study_name}: {done} finished trials, running to {target} on {device} (storage {url})")
    return True


def print_summary(study: optuna.Study, metric: str, where: str | storage.Resolved, out: Output) -> None:
    summary = records.Summary.of(study)
    out.line(f"trials: {summary.complete} complete, {summary.pruned} pruned, {summary.failed} fail")
    if summary.best is not None:
        best = summary.best
        test = best.test_metrics.get(metric, float("nan"))
        bounds = best.interval(metric)
        interval = f" [{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else ""
        out.line(f"best: trial {best.number} val {metric}={best.value:.4f}, test {metric}={test:.4f}{interval} "
                 f"| {' '.join(f'{k}={fmt(v)}' for k, v in best.params.items())}")
    where = storage.resolve(where)
    out.line(f"results: {where.file or where.shown} (study {study.study_name})")


def fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
