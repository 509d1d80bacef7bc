"""A run through the real trainer with `--pruner asha` over a TOML's feed: Optuna stores the
best-so-far loss, the curves keep the raw losses (the unit half: tests/unit/test_replay.py)."""

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study import records


@pytest.mark.slow
def test_a_run_feeds_the_best_so_far_and_keeps_the_raw_curves(tmp_path: Path, dr_dir: Path):
    """Through the real trainer: `--pruner asha` over a TOML's feed records both, Optuna stores
    the best-so-far loss as the intermediate values, and the curves keep the raw losses."""
    from conftest import run_cli

    space = tmp_path / "feed.toml"
    space.write_text(
        'schema = 2\n[study]\ndirection = "minimize"\nmetric = "loss"\nsampler = "random"\n'
        'pruner = "median"\npruner_feed = "best"\ntrials = 4\nseed = 1\n'
        '[fixed]\nnum_classes = 5\nhflip = true\nvflip = true\n'
        'epochs = 4\nbatch_size = 16\nimage_size = 32\narch = "resnet18"\npretrained = false\n'
        '[space]\nlr = { choices = [1e-7, 0.05] }\n'
    )
    result = run_cli("run", str(space), "--data", str(dr_dir), "--pruner", "asha", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="feed", storage=f"sqlite:///{tmp_path / 'results' / 'optuna.db'}")
    assert study.user_attrs["pruner"] == {"class": "SuccessiveHalvingPruner", "min_resource": 1,
                                          "min_early_stopping_rate": 0, "reduction_factor": 3, "feed": "best"}
    assert len(study.trials) == 4
    for trial in study.trials:
        raw = trial.user_attrs[records.CURVES]["val_loss"]
        fed = [min(raw[:step]) for step in range(1, len(raw) + 1)]
        assert [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)] == pytest.approx(fed)
        if trial.state == TrialState.PRUNED:
            assert trial.value == pytest.approx(fed[-1])
