"""Every path built from a study name or a stored value stays under --results, one name per folder,
and a checkpoint is resumed only by the trial it names (fast: no training)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from objectives.errors import InputError
from objectives.train import CHECKPOINT_KEYS
from study import cli, paths
from study.records import RESUME_OF, TrialRecord, TrialWriter
from study.run.checkpoints import OWNER, checkpoint_file, checkpoint_owner, resume_state
from study.run.options import RunOptions
from study.run.output import Output
from study.run.prepare import prepare
from study.run.reporter import Reporter
from study.spaces.registry import resolve

NASTY = ["..", "../x", "/abs", "a/b", ".", "x" * 300, "étude→☃", "$(id)", "", "a b", "a_b", "a\\b", "..\\..\\x",
         "a\x00b", "~", "-", ".hidden/../../x"]


def test_every_name_maps_to_one_folder_inside_results(tmp_path: Path):
    folders = {name: paths.folder_name(name) for name in NASTY}
    assert len(set(folders.values())) == len(NASTY)  # one-to-one: a b, a_b and a/b differ
    for name, folder in folders.items():
        assert folder not in ("", ".", "..") and "/" not in folder and "\\" not in folder and "\x00" not in folder
        assert len(folder.encode()) <= 120, name
        assert paths.study_folder(tmp_path, name).parent == tmp_path.resolve()
        assert paths.study_folder(tmp_path, name, "checkpoints").parent == (tmp_path / "checkpoints").resolve()


def test_plain_names_keep_the_folder_they_had():
    for name in ("dr_focal", "dr_focal.ablation", "dr_focal.ablation.retune.baseline", "a_b", "run-2", "étude"):
        assert paths.folder_name(name) == name


def test_under_refuses_what_leads_outside(tmp_path: Path):
    with pytest.raises(InputError, match="outside"):
        paths.under(tmp_path, "..", "x")
    assert paths.figure_file(tmp_path, "confusion_resnet18+pretrained") == (
        tmp_path.resolve() / "confusion_resnet18+pretrained.png")
    assert paths.figure_file(tmp_path, "confusion_../../x").parent == tmp_path.resolve()


@pytest.mark.parametrize("name", NASTY)
def test_run_and_ablate_folders_of_any_name_stay_under_results(tmp_path: Path, name: str):
    """`run --study-name` and `ablate --study-name` both name their folders through `Prepared.folder`
    (manifests, checkpoints), which `prepare` builds before any data is generated or decoded."""
    results = tmp_path / "results"
    prep = prepare(RunOptions(space=resolve("dr_focal").pin("pretrained", False), study_name=name or None,
                              results_dir=results), Output())
    for kind in (None, "checkpoints"):
        folder = prep.folder(kind)
        assert results.resolve() in folder.parents
    assert not (results / "data").exists()  # nothing generated yet


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_report_of_a_nasty_name_writes_only_under_results(tmp_path: Path, capsys):
    inner = tmp_path / "a" / "b"
    results = inner / "results"
    results.mkdir(parents=True)
    url = f"sqlite:///{results / 'optuna.db'}"
    names = ["../../escape", "a/b", "..", ".", "$(id)", "x" * 300]
    for name in names:
        study = optuna.create_study(study_name=name, storage=url, direction="maximize")
        study.set_user_attr("space_hash", "h")
        study.set_user_attr("report", {"cells": [], "figures": ["lr"], "labels": {"lr": {"0.01": "../../../up"}}})
        study.add_trial(create_trial(params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-3, 1e-1)},
                                     value=0.5, user_attrs={"config": {"lr": 0.01}, "best_epoch": 1,
                                                            "test_confusion": [[1, 0], [0, 1]]}))
    def outside() -> set[str]:
        return {p for p in listing(tmp_path) if not p.startswith("a/b/results")}

    before = outside()
    for name in names:
        assert cli.main(["report", name, "--results", str(results), "--format", "md"]) == 0, capsys.readouterr().err
    assert outside() == before
    assert len([p for p in results.iterdir() if p.is_dir()]) == len(names)


def trial_resuming(study: optuna.Study, origin: int) -> tuple[TrialRecord, TrialWriter, Reporter]:
    trial = study.ask()
    trial.set_user_attr(RESUME_OF, origin)
    frozen = study._storage.get_trial(trial._trial_id)
    return TrialRecord.from_trial(frozen), TrialWriter(trial), Reporter(trial, "kappa")


@pytest.mark.parametrize("owner, words", [
    ({"study": "other", "trial": 0}, "belongs to study 'other' trial 0"),
    ({"study": "mine", "trial": 5}, "belongs to study 'mine' trial 5"),
    (None, "does not say which study and trial"),
])
def test_a_checkpoint_of_another_study_or_trial_is_not_resumed(tmp_path: Path, capsys, owner, words):
    state = {key: 0 for key in CHECKPOINT_KEYS} | {"epoch": 1, "curves": {"epoch": [1], "val_kappa": [0.3]}}
    if owner is not None:
        state[OWNER] = owner
    torch.save(state, checkpoint_file(tmp_path, 0))
    record, writer, reporter = trial_resuming(optuna.create_study(study_name="mine"), 0)
    assert resume_state(record, tmp_path, writer, reporter, "mine", CHECKPOINT_KEYS) is None
    err = capsys.readouterr().err
    assert words in err and "restarts from epoch 1" in err
    assert checkpoint_file(tmp_path, 0).exists()  # not ours to delete


def test_the_checkpoint_of_the_trial_itself_is_resumed(tmp_path: Path):
    state = {key: 0 for key in CHECKPOINT_KEYS} | {"epoch": 1, "curves": {"epoch": [1], "val_kappa": [0.3]}}
    torch.save({**state, OWNER: checkpoint_owner("mine", 0)}, checkpoint_file(tmp_path, 0))
    record, writer, reporter = trial_resuming(optuna.create_study(study_name="mine"), 0)
    resumed = resume_state(record, tmp_path, writer, reporter, "mine", CHECKPOINT_KEYS)
    assert resumed is not None and resumed["epoch"] == 1 and reporter.curves["val_kappa"] == [0.3]
