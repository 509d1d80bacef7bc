"""The catch-up rule (study.run.catchup): a trial stops only when its best so far plus the largest
gain a complete trial made from the same fine-tuning step stays below the best complete value."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from study.run.catchup import CatchUpPruner
from study.run.samplers import build_pruner, pruner_record
from study.spaces.space import StudySettings

from support.pruning import run_scripted

FLAT_THEN_JUMP = [0.05, 0.1, 0.1, 0.7, 0.75, 0.75]  # the from-scratch fundus shape: flat, then a late jump
SMOOTH = [0.5, 0.6, 0.65, 0.68, 0.7, 0.7]


def catchup(startup: int = 2, warmup: int = 1, direction: str = "maximize") -> optuna.Study:
    return optuna.create_study(direction=direction, pruner=CatchUpPruner(n_startup_trials=startup,
                                                                        n_warmup_steps=warmup))


def test_a_flat_start_is_kept_when_a_complete_trial_once_jumped_from_there():
    """Median would stop the flat trial at step 2 (0.1 against 0.6); a complete trial gained
    0.65 from step 2, so 0.12 + 0.65 can still beat the best (0.75): it is kept, and wins. (A jump
    later than any complete trial's is not foreseen: the rule learns catch-ups from the study.)"""
    study = catchup()
    trials = run_scripted(study, [(0, FLAT_THEN_JUMP), (0, SMOOTH), (0, [0.06, 0.12, 0.12, 0.72, 0.78, 0.8])],
                          returns=max)
    assert trials[-1].state == TrialState.COMPLETE and study.best_trial.number == 2
    median = optuna.create_study(direction="maximize",
                                 pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    late = run_scripted(median, [(0, FLAT_THEN_JUMP), (0, SMOOTH), (0, [0.06, 0.12, 0.12, 0.72, 0.78, 0.8])],
                        returns=max)
    assert late[-1].state == TrialState.PRUNED  # what the issue measured: median stops the late winner


def test_smooth_studies_stop_laggards_at_the_first_judged_step():
    """Complete trials that gained at most 0.2 after step 1: a trial at 0.2 there cannot reach 0.7."""
    study = catchup()
    trials = run_scripted(study, [(0, SMOOTH), (0, [0.4, 0.5, 0.55, 0.6, 0.6, 0.6]), (0, [0.2] * 6)], returns=max)
    assert trials[-1].state == TrialState.PRUNED and sorted(trials[-1].intermediate_values) == [1]


def test_startup_and_warmup_are_respected():
    never = run_scripted(catchup(startup=3), [(0, SMOOTH), (0, SMOOTH), (0, [0.0] * 6)], returns=max)
    assert never[-1].state == TrialState.COMPLETE  # only 2 complete trials: fewer than 3
    warm = run_scripted(catchup(warmup=3), [(0, SMOOTH), (0, SMOOTH), (0, [0.0] * 6)], returns=max)
    assert warm[-1].state == TrialState.PRUNED and sorted(warm[-1].intermediate_values) == [1, 2, 3]


def test_minimizing_mirrors_the_rule():
    losses = [1.0, 0.8, 0.7, 0.65, 0.6, 0.6]
    study = catchup(direction="minimize")
    trials = run_scripted(study, [(0, losses), (0, losses), (0, [2.0] * 6), (0, [0.9, 0.75, 0.7, 0.6, 0.55, 0.5])],
                          returns=min)
    assert [t.state for t in trials[2:]] == [TrialState.PRUNED, TrialState.COMPLETE]


def test_fe_epochs_are_not_steps_and_a_step_no_complete_trial_reached_prunes_nothing():
    """A trial with 4 FE epochs is judged at its FT steps; complete trials with 5 FE epochs
    (one FT step) tell nothing about step 2, so the rule does not stop it there."""
    study = catchup(warmup=1)
    short = [0.1] * 5 + [0.7]
    trials = run_scripted(study, [(5, short), (5, short), (4, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])], returns=max)
    assert trials[-1].state == TrialState.PRUNED  # at FT step 1: 0.0 + 0.0 gain < 0.7
    study = catchup(warmup=2)
    trials = run_scripted(study, [(5, short), (5, short), (3, [0.0] * 6)], returns=max)
    assert trials[-1].state == TrialState.COMPLETE


def test_the_toml_key_records_and_builds_it():
    record = pruner_record(StudySettings(pruner="catchup", startup_trials=3, warmup_epochs=2), epochs=9)
    assert record == {"class": "CatchUpPruner", "n_startup_trials": 3, "n_warmup_steps": 2}
    pruner = build_pruner(record)
    assert isinstance(pruner, CatchUpPruner) and (pruner.n_startup_trials, pruner.n_warmup_steps) == (3, 2)
    with pytest.raises(KeyError):
        build_pruner({"class": "os.system"})  # a record names one of the known classes, nothing else
    with pytest.raises(ValueError):
        CatchUpPruner(n_startup_trials=0)
