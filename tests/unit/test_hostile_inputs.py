"""Bad input, as a hostile or careless user gives it, through every command in-process: each one
ends with exit code 2 and one line on stderr, no traceback, no password, and leaves the storage
and the folder around it as they were. (The refusals that need a trained study are in the slow
tests; the rest of each rule is tested in its own module.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from study import cli

from conftest import write_dr_lab

SECRET = "hunter2-secret"
GOOD_SPACE = """schema = 2
[study]
metric = "kappa"
trials = 2
[fixed]
epochs = 2
image_size = 16
[space]
lr = { low = 1e-3, high = 1e-1, log = true }
"""


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a results/ storage holding an Optuna study, and files for the cases to name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    url = f"sqlite:///{tmp_path / 'results' / 'optuna.db'}"
    study = optuna.create_study(study_name="foreign", storage=url, direction="minimize")
    study.add_trial(create_trial(params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-3, 1e-1)}, value=1))
    stored = optuna.create_study(study_name="stored", storage=url, direction="maximize")
    for key, value in {"space_hash": "h", "space_text": GOOD_SPACE.replace('metric = "kappa"',
                       'metric = "kappa"\nobjective = "somepkg.evil"'), "metric": "kappa"}.items():
        stored.set_user_attr(key, value)
    stored.add_trial(create_trial(params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-3, 1e-1)}, value=1))
    (tmp_path / "folder.toml").mkdir()
    (tmp_path / "syntax.toml").write_text("schema = 2\n[study\n")
    (tmp_path / "schema.toml").write_text("schema = 99\n")
    (tmp_path / "key.toml").write_text(GOOD_SPACE.replace("trials = 2", "trials = 2\ntrails = 3"))
    (tmp_path / "zero_lr.toml").write_text(GOOD_SPACE.replace("low = 1e-3", "low = 0.0").replace(", log = true", ""))
    (tmp_path / "string_param.toml").write_text(GOOD_SPACE + 'loss = "ce"\n')
    (tmp_path / "bad_when.toml").write_text(GOOD_SPACE + 'momentum = { low = 0.1, high = 0.9, when = { nope = 1 } }\n')
    (tmp_path / "empty").mkdir()
    write_dr_lab(tmp_path / "oneclass", [0] * 12, [0] * 4, size=16)
    with sqlite3.connect(tmp_path / "notoptuna.db") as db:
        db.execute("create table notes (text)")
    (tmp_path / "junk.db").write_bytes(b"\x00garbage" * 512)
    return tmp_path


CASES = {
    "unknown study": ["run", "dr_focul"],
    "missing toml": ["run", "missing.toml"],
    "toml is a folder": ["run", "folder.toml"],
    "toml syntax, storage exists": ["run", "syntax.toml"],
    "schema 99": ["run", "schema.toml"],
    "misspelt key": ["run", "key.toml"],
    "range includes lr 0": ["run", "zero_lr.toml"],
    "bare string parameter": ["run", "string_param.toml"],
    "when names unknown": ["run", "bad_when.toml"],
    "--set lr=0": ["run", "dr_focal", "--set", "lr=0"],
    "--set lr=-1e-3": ["run", "dr_focal", "--set", "lr=-1e-3"],
    "--set momentum=nan": ["run", "dr_focal", "--set", "momentum=nan"],
    "--set epochs=0": ["run", "dr_focal", "--set", "epochs=0"],
    "--set batch_size=0": ["run", "dr_focal", "--set", "batch_size=0"],
    "--set fe_epochs=99": ["run", "dr_focal", "--set", "pretrained=true", "--set", "fe_epochs=99"],
    "--set without =": ["run", "dr_focal", "--set", "lr"],
    "--set unknown": ["run", "dr_focal", "--set", "dropout=0.1"],
    "--timeout -5": ["run", "dr_focal", "--timeout", "-5"],
    "--timeout nan": ["run", "dr_focal", "--timeout", "nan"],
    "--trials 0": ["run", "dr_focal", "--trials", "0"],
    "--trials many": ["run", "dr_focal", "--trials", "many"],
    "--workers 0": ["run", "dr_focal", "--workers", "0"],
    "--heartbeat 0": ["run", "dr_focal", "--heartbeat", "0"],
    "--checkpoint-every -1": ["run", "dr_focal", "--checkpoint-every", "-1"],
    "--device tpu": ["run", "dr_focal", "--device", "tpu"],
    "--pruner bogus": ["run", "dr_focal", "--pruner", "bogus"],
    "--data missing": ["run", "dr_focal", "--data", "/nonexistent/dr"],
    "--data empty": ["run", "dr_focal", "--data", "empty", "--set", "pretrained=false"],
    "--data one class": ["run", "dr_focal", "--data", "oneclass", "--set", "pretrained=false"],
    "--layout without --data": ["run", "dr_focal", "--layout", "kaggle"],
    "unknown scheme": ["run", "dr_focal", "--storage", "nosuchdb://x/y"],
    "port not a number": ["run", "dr_focal", "--storage", f"postgresql://u:{SECRET}@h:abc/db"],
    "raw @ in password": ["run", "dr_focal", "--storage", f"postgresql://u:{SECRET}@x@h/db"],
    "stored objective": ["run", "stored"],
    "foreign study": ["run", "dr_focal", "--study-name", "foreign", "--set", "pretrained=false"],
    "ablate unknown": ["ablate", "nope"],
    "ablate --seeds 2": ["ablate", "foreign", "--seeds", "2"],
    "ablate --pruner median": ["ablate", "foreign", "--pruner", "median"],
    "ablate --retune-trials alone": ["ablate", "foreign", "--retune-trials", "3"],
    "ablate --timeout 0": ["ablate", "foreign", "--timeout", "0"],
    "ablate stored objective": ["ablate", "stored"],
    "report unknown": ["report", "nope"],
    "report --format pdf": ["report", "foreign", "--format", "pdf"],
    "report no storage": ["report", "foreign", "--results", "nowhere"],
    "list junk file": ["list", "--storage", "sqlite:///junk.db"],
    "list not optuna": ["list", "--storage", "sqlite:///notoptuna.db"],
    "dashboard --port 99999": ["dashboard", "foreign", "--port", "99999"],
    "dashboard --port 0": ["dashboard", "foreign", "--port", "0"],
    "dashboard unknown": ["dashboard", "nope"],
    "data inspect missing": ["data", "inspect", "/nonexistent"],
    "data inspect empty": ["data", "inspect", "empty"],
}


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(place, capsys, args):
    before = listing(place)
    code = cli.main(args)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if not line.startswith("study: warning:")]
    assert code == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert SECRET not in captured.out + captured.err
    after = listing(place)
    assert after == before, sorted(set(after) ^ set(before)) or "a file changed"
