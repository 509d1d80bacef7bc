"""A storage written by an earlier version of the tool (tests/fixtures/old_study, commit 8a456c0)
still lists and reports, and `run` refuses to add trials of the current recipe to its study."""

import shutil
from pathlib import Path

import optuna
import pytest

from conftest import ROOT, dr_labels, run_cli, write_dr_lab

FIXTURE = ROOT / "tests" / "fixtures" / "old_study"
pytestmark = pytest.mark.slow


@pytest.fixture
def old_results(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(FIXTURE / "optuna.db", results / "optuna.db")
    shutil.copy(FIXTURE / "old.toml", tmp_path / "old.toml")
    return results


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
    result = run_cli("run", str(tmp_path / "old.toml"), "--data", str(data), "--results", str(old_results),
                     "--trials", "3", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "created with another search space" in line and "--study-name" in line
