"""`storage.resolve`, the one place that decides which storage a command or call means: --storage
before $STUDY_STORAGE before results/optuna.db, an Optuna storage object passed through, errors
that name where the URL came from and never show its password; journal:/// files; `run` leaves
another program's SQLite file alone."""

from __future__ import annotations

import hashlib
import sqlite3

import optuna
import pytest

from objectives.errors import InputError
from study import api, cli, storage

from conftest import tiny_space

SECRET = "s3cr3t-pw"
BAD_PORT = f"postgresql://u:{SECRET}@host:x/db"  # refused by check_url before anything connects


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_precedence_flag_then_environment_then_the_results_file(tmp_path):
    env = {storage.STORAGE_ENV: "sqlite:///from_env.db"}
    assert storage.resolve("sqlite:///flag.db", environ=env) == storage.Resolved("sqlite:///flag.db", storage.FLAG)
    assert storage.resolve(None, environ=env) == storage.Resolved("sqlite:///from_env.db", storage.ENVIRONMENT)
    for unset in ({}, {storage.STORAGE_ENV: ""}):
        default = storage.resolve("", results=tmp_path / "r", environ=unset)
        assert default.origin == storage.DEFAULT and default.file == (tmp_path / "r" / "optuna.db").resolve()
    api_url = storage.resolve("sqlite:///a.db", origin=storage.ARGUMENT, environ=env)
    assert api_url.label == "storage=sqlite:///a.db"
    assert storage.resolve(api_url) is api_url


def test_the_label_names_the_source_and_masks_the_password():
    url = f"postgresql://u:{SECRET}@host/db"
    flag = storage.resolve(url, environ={})
    env = storage.resolve(None, environ={storage.STORAGE_ENV: url})
    assert flag.label == "--storage postgresql://u:***@host/db"
    assert env.label == "$STUDY_STORAGE postgresql://u:***@host/db"
    assert all(SECRET not in w.label + w.shown for w in (flag, env))
    with pytest.raises(InputError) as caught:
        storage.check_url(storage.resolve(None, environ={storage.STORAGE_ENV: BAD_PORT}))
    assert str(caught.value).startswith("$STUDY_STORAGE ") and SECRET not in str(caught.value)


def test_a_storage_object_is_passed_through_unchanged(tmp_path):
    store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    where = storage.resolve(store, environ={storage.STORAGE_ENV: BAD_PORT})
    assert where.given is store and where.file is None and where.shown == "JournalStorage object"
    assert storage.check_url(where) == "" and storage.check_for_writing(store) == ""
    for kwargs in ({}, {"read_only": True}, {"existing": True}):
        assert storage.open_storage(where, **kwargs) is store
    study = optuna.create_study(study_name="j", storage=store, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert api.open_study("j", storage=store)._storage is store
    assert len(api.load_trials("j", storage=store, results=tmp_path / "none")) == 2
    assert not (tmp_path / "none").exists()


def test_the_api_reads_the_environment_as_the_cli_does(tmp_path, monkeypatch):
    db = tmp_path / "env.db"
    optuna.create_study(study_name="e", storage=f"sqlite:///{db}")
    monkeypatch.setenv(storage.STORAGE_ENV, f"sqlite:///{db}")
    assert api.open_study("e", results=tmp_path / "elsewhere").study_name == "e"


def test_an_error_says_whether_the_url_came_from_the_flag_or_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(storage.STORAGE_ENV, BAD_PORT)
    code, _, err = call(capsys, "list", "--results", str(tmp_path))
    assert code == 2 and "$STUDY_STORAGE postgresql://" in err and "--storage" not in err and SECRET not in err
    monkeypatch.delenv(storage.STORAGE_ENV)
    code, _, err = call(capsys, "list", "--storage", BAD_PORT, "--results", str(tmp_path))
    assert code == 2 and "--storage postgresql://" in err and "STUDY_STORAGE" not in err and SECRET not in err
    monkeypatch.setenv(storage.STORAGE_ENV, BAD_PORT)  # the flag wins over the environment
    code, out, _ = call(capsys, "list", "--storage", f"sqlite:///{tmp_path}/none.db", "--results", str(tmp_path))
    assert code == 0 and "none.db" in out


def test_a_journal_file_is_a_storage(tmp_path, capsys):
    log = tmp_path / "sub" / "optuna.log"
    url = f"journal:///{log}"  # four slashes: an absolute path, as in sqlite URLs
    assert storage.check_url(url) == storage.JOURNAL and storage.resolve(url).file == log
    with pytest.raises(InputError, match="no storage at"):
        storage.open_storage(url, read_only=True)
    assert not log.parent.exists()  # reading creates nothing
    store = storage.open_storage(url)
    assert isinstance(store, optuna.storages.JournalStorage) and log.is_file()
    optuna.create_study(study_name="jour", storage=store).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    before = log.read_bytes()
    code, out, _ = call(capsys, "list", "--storage", url)
    assert code == 0 and "\njour " in out and f"storage: {url}" in out
    assert log.read_bytes() == before
    with pytest.raises(InputError, match="names a file"):
        storage.check_url("journal://")


def test_a_line_that_is_not_a_journal_is_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not json\nat all\n")
    with pytest.raises(InputError, match=r"--storage journal:.*cannot open storage"):
        storage.open_storage(f"journal:///{text}", existing=True)


def test_run_refuses_another_programs_sqlite_file_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as db:
        db.execute("create table notes (text)")
    before = hashlib.sha256(foreign.read_bytes()).hexdigest()
    space = tiny_space(tmp_path / "tiny.toml", trials=1)
    code, _, err = call(capsys, "run", str(space), "--storage", f"sqlite:///{foreign}", "--device", "cpu")
    assert code == 2 and "not an Optuna storage (it holds other tables: notes)" in err
    assert len(err.strip().splitlines()) == 1
    assert hashlib.sha256(foreign.read_bytes()).hexdigest() == before and not (tmp_path / "results").exists()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # a SQLite file with no tables yet is Optuna's to set up
    assert storage.check_for_writing(f"sqlite:///{empty}") == "sqlite"
