"""`run` on a journal:/// file, then `list` and `report` on it, through the CLI (the unit half:
tests/unit/test_storage_resolve.py)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from conftest import run_cli, tiny_space


def load_journal(log: Path, name: str) -> optuna.Study:
    store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(log)))
    return optuna.load_study(study_name=name, storage=store)


@pytest.mark.slow
def test_run_on_a_journal_file_then_list_and_report(tmp_path):
    log = tmp_path / "journal" / "optuna.log"
    space = tiny_space(tmp_path / "tiny.toml", trials=2)
    ran = run_cli("run", str(space), "--storage", f"journal:///{log}", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert f"results: {log} (study tiny)" in ran.stdout
    assert sum(t.state.is_finished() for t in load_journal(log, "tiny").trials) == 2
    assert not (tmp_path / "results" / "optuna.db").exists()
    again = run_cli("run", str(space), "--trials", "3", "--storage", f"journal:///{log}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(load_journal(log, "tiny").trials) == 3
    report = run_cli("report", "tiny", "--storage", f"journal:///{log}", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "results" / "tiny" / "report.md").is_file()
