"""The toy objective (tests/toy_objective.py, settings named unlike the image classifier's) through
`run`, `ablate` and `report` as subprocesses (the unit half: tests/unit/test_contract.py)."""

from __future__ import annotations

import optuna
import pytest

from conftest import run_cli
from support.contract import TOY_TOML


@pytest.mark.slow
def test_a_toy_objective_runs_through_run_ablate_and_report(tmp_path):
    """Nothing of the image classifier by name: the seed is ``rng``, the split seed ``shuffle``,
    the epochs ``rounds``; the pruner's largest resource, the trial seeds and the ablation's
    seeds all come from ROLES."""
    (tmp_path / "toy.toml").write_text(TOY_TOML)
    results = tmp_path / "results"
    run = run_cli("run", "toy.toml", "--results", str(results), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "warning" not in run.stderr  # dashboard pages drawn without train_accuracy curves
    storage = f"sqlite:///{results / 'optuna.db'}"
    parent = optuna.load_study(study_name="toy", storage=storage)
    assert parent.user_attrs["pruner"]["max_resource"] == 3  # `rounds`
    assert parent.user_attrs["report"] == {"cells": ["spread"], "figures": ["spread"], "labels": {}}  # REPORT_GROUPS
    for trial in parent.trials:
        assert trial.user_attrs["config"]["rng"] == 3 + trial.number and trial.user_attrs["config"]["shuffle"] == 0
    ablate = run_cli("ablate", "toy", "--objective", "tests.toy_objective", "--seeds", "3", "--results", str(results),
                     cwd=tmp_path)
    assert ablate.returncode == 0, ablate.stderr
    cells = optuna.load_study(study_name="toy.ablation", storage=storage).trials
    assert len(cells) == 6 and {t.params["variant"] for t in cells} == {"baseline", "spread=1.5"}
    used = {3 + t.number for t in parent.trials} | {0}
    for t in cells:
        config = t.user_attrs["config"]
        assert config["rng"] == config["shuffle"] == t.params["seed"] and t.params["seed"] not in used
        assert len(t.user_attrs["curves"]["epoch"]) == 3
    report = run_cli("report", "toy", "--results", str(results), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    text = (results / "toy" / "report.md").read_text()
    assert "## Ablation study" in text and "| spread=1.5 |   3 |" in text
    assert {"confusion_0.5.png", "confusion_1.5.png"} <= {p.name for p in (results / "toy").iterdir()}
