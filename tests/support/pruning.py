"""`run_scripted`: scripted validation curves through the real reporter (and, `live`, the runner's own
loop), shared by the pruning, catch-up and replay tests."""

import functools
import io
from collections.abc import Callable

import optuna

from study.run.loop import optimize
from study.run.output import Output
from study.run.reporter import RAW, Feed, Reporter


def run_scripted(study: optuna.Study, curves: list[tuple[int, list[float]]], *, live: bool = False, feed: Feed = RAW,
                 returns: Callable[[list[float]], float] = lambda values: values[-1]) -> list[optuna.trial.FrozenTrial]:
    """One trial per (fe_epochs, values): each epoch's validation kappa goes through the real
    reporter (fed `feed`); the trial returns `returns(values)` (its last value by default).

    `live`: the trials run through the runner's own loop (`study.run.loop.optimize`, with the
    study's pruner and a quiet output) instead of one `study.optimize` per curve; trial n (counted
    from the study's first new trial) emits ``curves[n]``."""
    def objective(trial: optuna.Trial, fe_epochs: int, values: list[float]) -> float:
        reporter = Reporter(trial, "kappa", fe_epochs=fe_epochs, epochs=len(values), feed=feed)
        for epoch, value in enumerate(values, start=1):
            reporter(epoch, {"epoch": epoch, "phase": "fe" if epoch <= fe_epochs else "ft", "val_kappa": value})
        return returns(values)

    first = len(study.trials)
    if live:
        quiet = Output(io.StringIO(), io.StringIO())
        optimize(study, lambda trial: objective(trial, *curves[trial.number - first]), target=first + len(curves),
                 out=quiet, metric="kappa")
        return study.get_trials(deepcopy=False)
    for fe_epochs, values in curves:
        study.optimize(functools.partial(objective, fe_epochs=fe_epochs, values=values), n_trials=1)
    return study.get_trials(deepcopy=False)
