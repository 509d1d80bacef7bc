"""Storages written by earlier versions of the tool still list and report: tests/fixtures/old_study
(commit 8a456c0, an earlier recipe: `run` refuses to add trials to it) and
tests/fixtures/recipe2_study (commit 0795b6c, when dr_focal was an objective module of its own:
`run` goes on adding trials to it from its file converted by `study migrate`, or by name from
schema-1 text a study recorded)."""

import shutil
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study import cli

from conftest import ROOT, dr_labels, run_cli, write_dr_lab

FIXTURES = ROOT / "tests" / "fixtures"
pytestmark = pytest.mark.slow


def copied(tmp_path: Path, fixture: str, space_file: str) -> Path:
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(FIXTURES / fixture / "optuna.db", results / "optuna.db")
    shutil.copy(FIXTURES / fixture / space_file, tmp_path / space_file)
    return results


def migrated(space_file: Path) -> Path:
    """`space_file` (schema 1, refused by `run`) rewritten as schema 2 by `study migrate`."""
    assert cli.main(["migrate", str(space_file)]) == 0
    return space_file


@pytest.fixture
def old_results(tmp_path: Path) -> Path:
    return copied(tmp_path, "old_study", "old.toml")


@pytest.fixture
def recipe2_results(tmp_path: Path) -> Path:
    return copied(tmp_path, "recipe2_study", "recipe2.toml")


def test_an_old_study_lists_and_reports(tmp_path: Path, old_results: Path):
    listing = run_cli("list", "--results", str(old_results), cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("old "))
    assert row.split()[1:5] == ["2", "0", "0", "0"]
    report = run_cli("report", "old", "--results", str(old_results), "--format", "csv,md", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (old_results / "old" / "report.md").is_file()


def test_run_refuses_to_add_new_recipe_trials_to_an_old_study(tmp_path: Path, old_results: Path):
    data = write_dr_lab(tmp_path / "dr", dr_labels(40), dr_labels(20, seed=1), size=32)
    study = optuna.load_study(study_name="old", storage=f"sqlite:///{old_results / 'optuna.db'}")
    study.set_user_attr("dataset", str(data.resolve()))  # the same data: only the recipe differs
    result = run_cli("run", str(migrated(tmp_path / "old.toml")), "--data", str(data), "--results", str(old_results),
                     "--trials", "3", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "created with another search space" in line and "--study-name" in line


def test_a_recipe2_study_and_its_ablation_list_and_report(tmp_path: Path, recipe2_results: Path):
    listing = run_cli("list", "--results", str(recipe2_results), cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split()[1:5] for line in listing.stdout.splitlines()[2:]}
    assert rows["recipe2"] == ["3", "0", "0", "0"] and rows["recipe2.ablation"] == ["6", "0", "0", "0"]
    report = run_cli("report", "recipe2", "--results", str(recipe2_results), "--format", "csv,md", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    out = recipe2_results / "recipe2"
    text = (out / "report.md").read_text()
    assert "## Ablation study" in text and "baseline" in text and "objective: `dr_focal`" in text
    assert {"report.md", "factors.csv", "ablation_study.csv", "confusion_best.png"} <= {p.name for p in out.iterdir()}


def test_run_goes_on_adding_trials_to_a_recipe2_study(tmp_path: Path, recipe2_results: Path):
    """Its schema-1 file (objective = "dr_focal") is refused with the command that converts it;
    the converted file has the fingerprint the study recorded, and so has schema-1 text a study
    recorded, which `run recipe2` resumes from by name."""
    data = write_dr_lab(tmp_path / "dr", dr_labels(40), dr_labels(20, seed=1), size=32)
    storage = f"sqlite:///{recipe2_results / 'optuna.db'}"
    optuna.load_study(study_name="recipe2", storage=storage).set_user_attr("dataset", str(data.resolve()))
    args = ("--data", str(data), "--results", str(recipe2_results))
    refused = run_cli("run", str(tmp_path / "recipe2.toml"), *args, "--trials", "4", cwd=tmp_path)
    assert refused.returncode == 2 and "study migrate" in refused.stderr and refused.stderr.count("\n") == 1
    result = run_cli("run", str(migrated(tmp_path / "recipe2.toml")), *args, "--trials", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # a study made from a schema-1 file after studies recorded their TOML (this one predates that)
    optuna.load_study(study_name="recipe2", storage=storage).set_user_attr(
        "space_text", (FIXTURES / "recipe2_study" / "recipe2.toml").read_text())
    by_name = run_cli("run", "recipe2", *args, "--trials", "5", cwd=tmp_path)
    assert by_name.returncode == 0, by_name.stdout + by_name.stderr
    study = optuna.load_study(study_name="recipe2", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    old = study.trials[0].user_attrs["config"]
    for added in (t.user_attrs["config"] for t in study.trials[3:]):
        assert {k: v for k, v in added.items() if k in old and k not in ("lr", "loss", "seed")} == \
            {k: v for k, v in old.items() if k not in ("lr", "loss", "seed")}  # the same recipe
        assert (added["num_classes"], added["hflip"], added["vflip"]) == (5, True, True)  # what dr_focal implied
