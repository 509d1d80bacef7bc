"""The pruning rule, driven with scripted curves on Optuna's in-memory storage: the pruner sees
fine-tuning epochs only (numbered from the first FT epoch) and never stops a trial at its last epoch."""


import optuna
import pytest
from optuna.trial import TrialState

from study.run.reporter import Reporter, may_prune, pruning_step

from support.pruning import run_scripted


def test_steps_are_fine_tuning_epochs_and_the_last_epoch_is_never_judged():
    assert [pruning_step(e, 0) for e in (1, 2, 3)] == [1, 2, 3]
    assert [pruning_step(e, 2) for e in (1, 2, 3, 4)] == [None, None, 1, 2]
    assert [may_prune(e, 2, 4) for e in (1, 2, 3, 4)] == [False, False, True, False]
    assert not may_prune(5, 0, 5)


def test_a_long_fe_phase_with_a_late_rising_curve_is_kept():
    """Four FT-only trials climb to 0.6. A trial with 4 FE epochs sits at 0.1 while its head
    trains, then fine-tunes to 0.35 and 0.7. Compared at the same total epoch (5) with trials
    that had 5 FT epochs it would be pruned; compared after 1 FT epoch it is above their median."""
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    )
    rising = [0.3, 0.4, 0.5, 0.55, 0.6, 0.6]
    trials = run_scripted(study, [(0, rising)] * 4 + [(4, [0.1, 0.1, 0.1, 0.1, 0.35, 0.7])])
    late = trials[-1]
    assert late.state == TrialState.COMPLETE and late.value == 0.7
    assert sorted(late.intermediate_values) == [1, 2]  # FE values never reach the pruner's medians
    assert late.intermediate_values[1] == 0.35


def test_a_trial_below_the_median_at_every_epoch_completes_at_its_last_epoch():
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3)
    )
    trials = run_scripted(study, [(0, [0.3, 0.4, 0.5])] * 2 + [(0, [0.1, 0.1, 0.1])])
    assert trials[-1].state == TrialState.COMPLETE  # judged at step 3 = its last epoch: never asked
    more = run_scripted(study, [(0, [0.1, 0.1, 0.1, 0.1])])  # a 4-epoch trial is judged at step 3, and pruned
    assert more[-1].state == TrialState.PRUNED and sorted(more[-1].intermediate_values) == [1, 2, 3]


@pytest.mark.parametrize("fe_epochs", [0, 3])
def test_hyperband_rungs_start_at_the_first_fine_tuning_epoch(fe_epochs):
    """Hyperband records a value for every rung a trial passes; FE epochs must not count as rungs."""
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=6, reduction_factor=3)
    )
    trial = run_scripted(study, [(fe_epochs, [0.1] * fe_epochs + [0.2, 0.3, 0.4])])[-1]
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    assert trial.state == TrialState.COMPLETE


def test_no_pruning_during_the_frozen_backbone_phase(tmp_path):
    """A trial far below the median is kept while in FE and pruned at its first FT epoch."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}", direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    leader = study.ask()
    for epoch in (1, 2, 3):
        leader.report(0.9, step=epoch)
    study.tell(leader, 0.9)
    reporter = Reporter(study.ask(), "kappa", fe_epochs=2, epochs=4)
    reporter(1, {"epoch": 1, "phase": "fe", "val_kappa": 0.1})
    reporter(2, {"epoch": 2, "phase": "fe", "val_kappa": 0.1})
    with pytest.raises(optuna.TrialPruned):
        reporter(3, {"epoch": 3, "phase": "ft", "val_kappa": 0.1})
    assert reporter.curves["phase"] == ["fe", "fe", "ft"]
