"""What a stored study may make the tool do, in-process and without training: it never imports a
module the user did not name, a same-named study this tool did not make is never adopted, a
refused run writes nothing (not even the split manifest), and a file's own error is shown."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from objectives.errors import InputError
from study import cli
from study.records import StudyRecord
from study.run.session import check_adoptable

from conftest import dr_labels, write_dr_lab

EVIL = "evil_pkg_for_trust_test.objective"

STORED_SPACE = f"""schema = 2
[study]
objective = "{EVIL}"
metric = "kappa"
[space]
lr = {{ low = 1e-3, high = 1e-1, log = true }}
"""


@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module in the current folder (which is on the import path) that leaves a marker when imported."""
    marker = tmp_path / "imported.marker"
    package = tmp_path / EVIL.split(".")[0]
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "objective.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    for name in (EVIL, EVIL.split(".")[0]):
        sys.modules.pop(name, None)


def storage_with(tmp_path: Path, name: str, *, space_text: str | None = STORED_SPACE, direction: str = "maximize",
                 record: bool = True, trials: int = 1) -> str:
    """A SQLite storage under tmp_path/results holding study `name` as someone else may have written it."""
    (tmp_path / "results").mkdir(exist_ok=True)
    url = f"sqlite:///{tmp_path / 'results' / 'optuna.db'}"
    study = optuna.create_study(study_name=name, storage=url, direction=direction)
    if record:
        StudyRecord(space_hash="forged", space_file="search_spaces/cifar_loss.toml", space_text=space_text,
                    objective=EVIL, metric="kappa").write(study)
    for i in range(trials):
        study.add_trial(create_trial(params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-3, 1e-1, log=True)},
                                     value=0.5 + i / 10))
    return url


def call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", [["run", "shared"], ["ablate", "shared", "--seeds", "3"]])
def test_a_stored_study_never_makes_the_tool_import_its_objective(tmp_path, capsys, evil_module, command):
    storage_with(tmp_path, "shared")
    code, err = call(capsys, *command, "--results", str(tmp_path / "results"))
    assert code == 2 and not evil_module.exists(), err
    line = err.strip()
    assert "\n" not in line and "study shared" in line and EVIL in line and f"--objective {EVIL}" in line
    assert "cifar_loss.toml" not in line  # the stored file path is the storage's word, never blamed


def test_antigravity_is_not_imported_either(tmp_path, capsys, monkeypatch):
    text = STORED_SPACE.replace(EVIL, "antigravity")
    storage_with(tmp_path, "shared", space_text=text)
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("antigravity", None)
    code, err = call(capsys, "run", "shared", "--results", str(tmp_path / "results"))
    assert code == 2 and "antigravity" not in sys.modules and "'antigravity' is not a built-in objective" in err


def test_the_objective_the_user_names_is_imported_and_then_checked(tmp_path, capsys, evil_module):
    storage_with(tmp_path, "shared")
    code, err = call(capsys, "run", "shared", "--objective", EVIL, "--results", str(tmp_path / "results"))
    assert evil_module.exists(), err  # allowed: the user named it
    assert code == 2 and "is not an objective module" in err and len(err.strip().splitlines()) == 1
    other, err = call(capsys, "run", "shared", "--objective", "pkg.other", "--results", str(tmp_path / "results"))
    assert other == 2 and "--objective pkg.other is another module" in err


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


@pytest.mark.parametrize("kind, fragment", [
    ("minimize", "is set to minimize its objective, this study would maximize it"),
    ("no record", "holds trials that this tool did not record"),
])
def test_a_same_named_study_this_tool_did_not_make_is_refused_before_any_file(tmp_path, capsys, kind, fragment):
    url = storage_with(tmp_path, "dr_focal", direction="minimize" if kind == "minimize" else "maximize",
                       record=False)
    before = files_under(tmp_path)
    code, err = call(capsys, "run", "dr_focal", "--results", str(tmp_path / "results"), "--device", "cpu",
                     "--set", "pretrained=false")
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert files_under(tmp_path) == before  # no embedded data generated, no manifest, no cache
    study = optuna.load_study(study_name="dr_focal", storage=url)
    assert study.user_attrs == {} and len(study.trials) == 1  # not adopted: nothing overwritten


def test_the_direction_is_checked_under_allow_space_change_too(tmp_path, capsys):
    storage_with(tmp_path, "dr_focal", direction="minimize", record=False, trials=0)
    code, err = call(capsys, "run", "dr_focal", "--allow-space-change", "--results", str(tmp_path / "results"))
    assert code == 2 and "is set to minimize" in err


def test_an_empty_study_without_records_is_adopted_and_a_foreign_one_is_not():
    empty = optuna.create_study(direction="maximize")  # a crash between create_study and the record
    check_adoptable(empty, "maximize", StudyRecord.is_ours, "url")
    empty.add_trial(create_trial(params={}, distributions={}, value=1.0))
    with pytest.raises(InputError, match="did not record"):
        check_adoptable(empty, "maximize", StudyRecord.is_ours, "url")
    empty.set_user_attr("space_hash", "h")
    check_adoptable(empty, "maximize", StudyRecord.is_ours, "url")
    with pytest.raises(InputError, match="is set to maximize its objective, this study would minimize"):
        check_adoptable(empty, "minimize", StudyRecord.is_ours, "url")


def test_a_refused_run_leaves_the_study_manifest_as_it_was(tmp_path, capsys):
    """The study is ours and of this space, but the data is not its data: the split manifest that
    documents the study's split must not be overwritten by the refused run's."""
    from study.run.options import RunOptions
    from study.run.output import Output
    from study.run.prepare import prepare
    from study.spaces.space import config_defaults
    from study.spaces.space_file import load_space

    data = write_dr_lab(tmp_path / "dr", dr_labels(30), dr_labels(12, seed=1), size=24)
    space_path = tmp_path / "mine.toml"
    space_path.write_text(STORED_SPACE.replace(EVIL, "image_classifier") + "[fixed]\nimage_size = 16\n")
    results = tmp_path / "results"
    prep = prepare(RunOptions(space=load_space(space_path), results_dir=results, data=data), Output())
    url = storage_with(tmp_path, "mine", record=False)
    fingerprint = prep.space.fingerprint(config_defaults(prep.module.Config))
    StudyRecord(space_hash=fingerprint, space_text=space_path.read_text(), objective="image_classifier",
                metric="kappa", split_hash="0" * 64).write(optuna.load_study(study_name="mine", storage=url))
    manifest = results / "mine" / "split.csv"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("the study's own manifest\n")
    code, err = call(capsys, "run", str(space_path), "--data", str(data), "--results", str(results), "--no-cache")
    assert code == 2 and "created with another search space, settings or dataset" in err
    assert manifest.read_text() == "the study's own manifest\n"
    assert not list(results.glob("mine/split-*.csv"))


@pytest.mark.parametrize("text, fragment", [
    ("schema = 2\n[study\n", "not valid TOML"),
    ("schema = 99\n", "schema = 99 is unknown"),
    ("schema = 2\n[study]\nnope = 1\n", "nope"),
])
def test_a_files_own_error_comes_first_once_a_storage_exists(tmp_path, capsys, text, fragment):
    storage_with(tmp_path, "other")
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    code, err = call(capsys, "run", str(bad), "--results", str(tmp_path / "results"))
    assert code == 2 and fragment in err and "unknown study" not in err, err
