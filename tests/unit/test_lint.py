"""`ruff check .` is clean over the whole repository (its settings are in pyproject.toml)."""

import importlib.util
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


def ruff_command() -> list[str]:
    if importlib.util.find_spec("ruff") is not None:  # the `test` extra installs it into this environment
        return [sys.executable, "-m", "ruff"]
    found = shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    return [found]


def test_ruff_check_is_clean():
    command = [*ruff_command(), "check", "--no-cache", "."]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
