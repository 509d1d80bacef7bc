"""Storages read as untrusted, in-process and without training: a damaged or foreign file, an
Optuna schema of another version and a malformed URL are one line each; no password is printed;
`list` leaves any file it reads byte for byte; the dashboard checks before it prints or creates."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import sqlite3
from pathlib import Path

import optuna
import pytest

from study import cli, storage
from study.dashboard import server as dashboard
from study.exits import ENVIRONMENT_EXIT, exit_code

SECRET = "s3cr3t-pw"


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def good_db(tmp_path: Path) -> Path:
    path = tmp_path / "good.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{path}").set_user_attr("space_hash", "h")
    return path


@pytest.mark.parametrize("url", [
    f"postgresql://u:{SECRET}@host:abc/db",
    f"postgresql://u:{SECRET[:3]}@{SECRET[3:]}@host/db",
    f"postgresql://u@host/db?password={SECRET}&sslmode=require",
    f"postgresql://u@host/db?PWD={SECRET}",
    f"postgresql://u:{SECRET}@host/db",
    f"mysql+pymysql://u:{SECRET}@host:99x/db",
    f"{SECRET}",
])
def test_mask_never_raises_and_never_shows_a_password(url):
    shown = storage.mask(url)
    assert SECRET not in shown and SECRET[3:] not in shown


@pytest.mark.parametrize("url, fragment", [
    (f"postgresql://u:{SECRET}@host:abc/db", "the port is not a number"),
    (f"postgresql://u:{SECRET[:3]}@{SECRET[3:]}@host/db", "more than one '@' before the host"),
])
def test_a_malformed_url_is_one_line_that_does_not_echo_it(tmp_path, capsys, url, fragment):
    code, _, err = call(capsys, "list", "--storage", url, "--results", str(tmp_path))
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert SECRET not in err and SECRET[3:] not in err


def test_a_password_in_the_query_is_masked_in_errors(tmp_path, capsys):
    code, _, err = call(capsys, "list", "--storage", f"sqlite:///{tmp_path}/x.db?password={SECRET}")
    assert SECRET not in err


def damaged(good: Path, target: Path, start: int, seed: int) -> Path:
    data = bytearray(good.read_bytes())
    rng = random.Random(seed)
    for i in range(start, len(data)):
        data[i] = rng.randrange(256)
    target.write_bytes(bytes(data))
    return target


def with_schema(good: Path, target: Path, version: str) -> Path:
    target.write_bytes(good.read_bytes())
    with sqlite3.connect(target) as db:
        db.execute("update alembic_version set version_num = ?", (version,))
    return target


@pytest.mark.parametrize("make, fragment", [
    (lambda good, tmp: damaged(good, tmp / "pages.db", 4096, 0), "cannot open storage"),
    (lambda good, tmp: damaged(good, tmp / "header.db", 100, 1), "cannot open storage"),
    (lambda good, tmp: (tmp / "junk.db").write_bytes(os.urandom(8192)) and tmp / "junk.db", "cannot open storage"),
    (lambda good, tmp: with_schema(good, tmp / "old.db", "v1.2.0.a"), "optuna storage upgrade"),
    (lambda good, tmp: with_schema(good, tmp / "new.db", "v99.0.0"), "newer Optuna"),
])
@pytest.mark.parametrize("command", ["list", "report"])
def test_a_damaged_storage_is_one_line_naming_the_file(tmp_path, capsys, good_db, make, fragment, command):
    path = make(good_db, tmp_path)
    before = digest(path)
    args = ["report", "s"] if command == "report" else ["list"]
    code, _, err = call(capsys, *args, "--storage", f"sqlite:///{path}")
    assert code == 2 and fragment in err and path.name in err, err
    assert len(err.strip().splitlines()) == 1
    assert digest(path) == before


def test_old_schema_message_warns_about_colleagues(tmp_path, capsys, good_db):
    path = with_schema(good_db, tmp_path / "old.db", "v1.2.0.a")
    _, _, err = call(capsys, "list", "--storage", f"sqlite:///{path}")
    assert "breaks colleagues" in err


def test_list_is_read_only(tmp_path, capsys, good_db):
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("create table notes (text)")
    before = digest(foreign), digest(good_db)
    code, _, err = call(capsys, "list", "--storage", f"sqlite:///{foreign}")
    assert code == 2 and "not an Optuna storage" in err
    code, out, _ = call(capsys, "list", "--storage", f"sqlite:///{good_db}")
    assert code == 0 and "\ns " in out
    assert (digest(foreign), digest(good_db)) == before
    with sqlite3.connect(foreign) as db:
        assert [r[0] for r in db.execute("select name from sqlite_master")] == ["notes"]
    code, _, _ = call(capsys, "list", "--storage", f"sqlite:///{tmp_path}/none/optuna.db")
    assert code == 0 and not (tmp_path / "none").exists()


def test_the_storage_url_comes_from_the_environment(tmp_path, capsys, good_db, monkeypatch):
    monkeypatch.setenv("STUDY_STORAGE", f"sqlite:///{good_db}")
    code, out, _ = call(capsys, "list", "--results", str(tmp_path / "elsewhere"))
    assert code == 0 and str(good_db) in out and "\ns " in out
    monkeypatch.setenv("STUDY_STORAGE", f"postgresql://u:{SECRET}@host:x/db")
    code, out, err = call(capsys, "list")
    assert code == 2 and SECRET not in out + err


def test_a_storage_error_escaping_a_command_is_one_line():
    def body() -> int:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.")

    assert exit_code(body) == ENVIRONMENT_EXIT


def test_dashboard_port_out_of_range_is_one_line(tmp_path, capsys, good_db):
    code, _, err = call(capsys, "dashboard", "s", "--port", "99999", "--storage", f"sqlite:///{good_db}")
    assert code == 2 and "--port 99999: must be 1..65535" in err


def test_dashboard_checks_storage_and_port_before_it_prints_or_creates(tmp_path, capsys, good_db, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = call(capsys, "dashboard", "nope", "--storage", f"sqlite:///{good_db}")
    assert code == 2 and "no study 'nope'" in err and not (tmp_path / "results").exists() and out == ""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = call(capsys, "dashboard", "s", "--port", str(port), "--storage", f"sqlite:///{good_db}")
    assert code == 2 and f"cannot serve on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1
    assert out == "" and not (tmp_path / "results").exists()


def test_loopback_addresses():
    assert all(dashboard.is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.3.4.5"))
    assert not any(dashboard.is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "example.org", "::"))
