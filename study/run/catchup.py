"""The catch-up rule: stop a trial only when even the largest catch-up seen so far would not save it.

Median-style rules stop what is behind *now*; from-scratch ResNets on fundus data sit at kappa
0.0-0.2 for 5-8 epochs and then jump to 0.6-0.8, so "behind now" stops the eventual winner
(benchmarks/pruning.py). This rule extrapolates optimistically instead, without fitting a curve
shape: at fine-tuning step s it takes the largest gain any COMPLETE trial made from its value at
step s to its final value (the trial's value: its best epoch), adds it to this trial's best value so
far, and stops the trial only if that still falls short of the best complete trial. A study whose
complete trials jumped late keeps late-jumping trials alive; a study of smooth curves, whose gains
after step s are small, stops laggards early. What it cannot foresee is a jump later than every
complete trial's: it learns what catching up looks like from the study itself, so a study's first
late jumper survives only if a startup trial jumped as late.

It is a plain `optuna.pruners.BasePruner`: what it reads (intermediate values, complete trials'
values) is what Optuna's own pruners read, so `study.run.replay` replays it like them.
"""

from __future__ import annotations

import math

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


class CatchUpPruner(optuna.pruners.BasePruner):
    """Stop when best-so-far + the largest catch-up of a complete trial from this step < the best
    complete value (mirrored when minimizing); never before `n_startup_trials` trials completed or
    within the first `n_warmup_steps` steps."""

    def __init__(self, n_startup_trials: int = 4, n_warmup_steps: int = 0) -> None:
        if n_startup_trials < 1 or n_warmup_steps < 0:
            raise ValueError("CatchUpPruner needs n_startup_trials >= 1 and n_warmup_steps >= 0")
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        complete = [(t.value, t.intermediate_values) for t in trials if t.value is not None and _finite(t.value)]
        if len(complete) < self.n_startup_trials:
            return False
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        gains = [sign * (value - steps[step]) for value, steps in complete if _finite(steps.get(step))]
        own = [sign * v for s, v in trial.intermediate_values.items() if s <= step and _finite(v)]
        if not gains or not own:
            return False
        best = max(sign * value for value, _ in complete)
        return max(own) + max(gains) < best


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
