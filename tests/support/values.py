"""A stored recipe2 study whose recorded TOML now has a range the current parser refuses (unit and e2e
both report it)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import optuna

from conftest import ROOT


def stored_with_bad_range(tmp_path: Path) -> Path:
    """A study of tests/fixtures/recipe2_study whose recorded TOML now has lr in [0, inf]."""
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(ROOT / "tests" / "fixtures" / "recipe2_study" / "optuna.db", results / "optuna.db")
    text = (ROOT / "tests" / "fixtures" / "recipe2_study" / "recipe2.toml").read_text()
    text = re.sub(r"^lr *=.*$", "lr = { low = 0.0, high = inf }", text, flags=re.M)
    study = optuna.load_study(study_name="recipe2", storage=f"sqlite:///{results / 'optuna.db'}")
    study.set_user_attr("space_text", text)
    return results
