"""`ruff check .` is clean over the whole repository, and `mypy` over study/ and objectives/ (the
settings of both are in pyproject.toml), and every module opens with a docstring."""

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_mypy_is_clean(tmp_path):
    if importlib.util.find_spec("mypy") is None:  # the `test` extra installs it
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    # ~15 s from an empty cache on two cores; a cache of its own, so a stale one cannot hide an error
    command = [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy_cache")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def undocumented_modules(root: Path) -> list[str]:
    """The Python files under `root`'s own folders whose first statement is not a docstring."""
    folders = ("study", "objectives", "search_spaces", "benchmarks", "tests", "docs")
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))):
                found.append(str(path.relative_to(root)))
    return found


def test_every_module_opens_with_what_it_is_for(tmp_path):
    """Every module says what it holds (DESIGN.md's style): a file without an opening docstring is named."""
    assert undocumented_modules(ROOT) == []
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_bare.py").write_text("import os\n")
    (tmp_path / "tests" / "test_told.py").write_text('"""Why this exists."""\n')
    assert undocumented_modules(tmp_path) == ["tests/test_bare.py"]
