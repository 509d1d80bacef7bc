"""A value with which every trial would fail is refused before the first trial: the objective's
config checks its own settings, a search space is checked at every choice and both ends of every
range, `--timeout` must be a positive number of seconds, a one-class dataset is an error, and a
search-space path that is a folder is one line. No training: everything here stops before data."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from objectives import image_classifier
from objectives.data import find_dataset
from objectives.data.inspect import inspect_dataset
from objectives.errors import InputError
from study import cli
from study.spaces import registry
from study.spaces.space import SpaceError, build_config
from study.spaces.space_file import load_space

from conftest import ROOT, write_dr_lab
from support.values import stored_with_bad_range

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
        ({"lr": -0.01}, "lr must be a finite number > 0, got -0.01"),
        ({"lr": NAN}, "lr must be a finite number > 0, got nan"),
        ({"lr": INF}, "lr must be a finite number > 0, got inf"),
        ({"momentum": NAN}, "momentum must be in [0, 1), got nan"),
        ({"momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
        ({"momentum": -0.5}, "momentum must be in [0, 1), got -0.5"),
        ({"weight_decay": -1e-4}, "weight_decay must be a finite number >= 0, got -0.0001"),
        ({"weight_decay": INF}, "weight_decay must be a finite number >= 0, got inf"),
        ({"epochs": -3}, "epochs must be >= 1, got -3"),
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"pretrained": True, "epochs": 4, "fe_epochs": 5}, "fe_epochs must be in 0..epochs (4), got 5"),
        ({"step_size": -1}, "step_size must be >= 0"),
        ({"step_gamma": NAN}, "step_gamma must be a finite number > 0, got nan"),
        ({"focal_gamma": NAN}, "focal_gamma must be a finite number >= 0, got nan"),
        ({"crop_padding": -2}, "crop_padding must be >= 0, got -2"),
        ({"seed": -1}, "seed must be in 0..2**63 - 1, got -1"),
        ({"split_seed": -1}, "split_seed must be >= 0, got -1"),
        ({"norm_mean": [0.5, NAN, 0.5], "norm_std": [0.2] * 3}, "3 finite values each"),
        ({"num_classes": 1}, "a classifier needs at least 2 classes"),
        ({"class_names": ["only"]}, "a classifier needs at least 2 classes"),
        ({"class_names": ["a", "b", "a"]}, "name a class twice"),
    ],
)
def test_the_config_refuses_values_no_trial_can_train_with(settings, fragment):
    with pytest.raises(SpaceError) as raised:
        build_config(image_classifier.Config, settings)
    assert fragment in str(raised.value)
    assert "\n" not in str(raised.value)


def space_file(tmp_path: Path, space: str, fixed: str = "epochs = 15") -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(f'schema = 2\n[study]\nobjective = "image_classifier"\n[fixed]\n{fixed}\n[space]\n{space}\n')
    return path


@pytest.mark.parametrize(
    "space, fragment",
    [
        ("lr = { low = 0.0, high = 0.1 }", "[space].lr = 0.0 would fail every trial"),
        ("lr = { low = -0.001, high = 0.1 }", "[space].lr = -0.001"),
        ('loss = { choices = ["ce", "focal"] }\nfocal_gamma = { low = -1.0, high = 5.0, when = { loss = "focal" } }',
         "[space].focal_gamma = -1.0"),
        ('pretrained = { choices = [true, false] }\nfe_epochs = { low = 0, high = 20, when = { pretrained = true } }',
         "[space].fe_epochs = 20 would fail every trial that samples it: fe_epochs must be in 0..epochs (15)"),
        ("momentum = { low = 0.5, high = 1.0 }", "[space].momentum = 1.0"),
        ("batch_size = { choices = [0, 32] }", "[space].batch_size = 0"),
        ("weight_decay = { low = -1e-3, high = 1e-3 }", "[space].weight_decay = -0.001"),
        ("epochs = { low = -2, high = 4 }", "[space].epochs = -2"),
    ],
)
def test_a_range_with_an_invalid_end_is_refused_naming_file_and_parameter(tmp_path, space, fragment):
    path = space_file(tmp_path, space, fixed="" if space.startswith("epochs") else "epochs = 15")
    with pytest.raises(SpaceError) as raised:
        load_space(path).check_config(image_classifier.Config)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message, message


def test_every_value_of_the_shipped_spaces_is_accepted():
    for name in ("dr_focal", "cifar_loss"):
        space = registry.resolve(name)
        space.check_config(image_classifier.Config)
        space.embedded_run().check_config(image_classifier.Config)


@pytest.mark.parametrize(
    "space, fixed",
    [
        # fe_epochs > 0 needs pretrained = true, which needs an arch with weights: each value is
        # tried with what it depends on and the others where they allow it
        ('arch = { choices = ["convnet", "resnet18"] }\npretrained = { choices = [true, false] }\n'
         'fe_epochs = { low = 0, high = 8, when = { pretrained = true } }', "epochs = 10"),
        # the default arch is not a choice: pretrained = true is tried with the last one
        ('arch = { choices = ["convnet", "resnet50"] }\npretrained = { choices = [true, false] }', "epochs = 10"),
        # a range no trial can sample (its condition contradicts a fixed setting) is harmless
        ('focal_gamma = { low = -1.0, high = 5.0, when = { loss = "focal" } }', 'loss = "ce"'),
    ],
)
def test_values_are_tried_where_their_conditions_hold(tmp_path, space, fixed):
    load_space(space_file(tmp_path, space, fixed)).check_config(image_classifier.Config)


@pytest.mark.parametrize("low, high, bound", [("1e-4", "inf", "inf"), ("nan", "0.1", "nan"), ("-inf", "0.1", "-inf")])
def test_a_bound_that_is_not_finite_is_refused_before_trial_one(tmp_path, low, high, bound):
    path = space_file(tmp_path, f"lr = {{ low = {low}, high = {high} }}")
    with pytest.raises(SpaceError, match=rf"\[space\].lr: bound {bound} is not a finite number"):
        load_space(path).check_config(image_classifier.Config)


def test_a_stored_study_whose_range_is_now_refused_stays_readable(tmp_path, capsys):
    results = stored_with_bad_range(tmp_path)
    study = optuna.load_study(study_name="recipe2", storage=f"sqlite:///{results / 'optuna.db'}")
    space = registry.recorded_space(study)
    assert space is not None and space.param("lr").bounds({}) == (0.0, INF)
    assert cli.main(["list", "--results", str(results)]) == 0
    assert "recipe2" in capsys.readouterr().out


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def run_args(tmp_path: Path, *args: str) -> list[str]:
    return ["run", *args, "--results", str(tmp_path / "results"), "--device", "cpu"]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("dr_focal", "--set", "momentum=nan"), ("momentum must be in [0, 1), got nan",)),
        (("dr_focal", "--set", "weight_decay=-1"), ("weight_decay must be a finite number >= 0, got -1.0",)),
        (("dr_focal", "--set", "epochs=0"), ("epochs must be >= 1, got 0",)),
        (("dr_focal", "--set", "batch_size=0"), ("batch_size must be >= 1, got 0",)),
        (("dr_focal", "--timeout", "-5"), ("--timeout -5.0: must be a finite number of seconds > 0",)),
        (("dr_focal", "--timeout", "0"), ("--timeout 0.0: must be",)),
        (("dr_focal", "--timeout", "nan"), ("--timeout nan: must be",)),
        (("dr_focal", "--checkpoint-every", "nan"), ("--checkpoint-every nan: must be >= 0.0",)),
    ],
)
def test_run_refuses_bad_values_before_any_data_or_study(tmp_path, capsys, args, fragments):
    assert cli.main(run_args(tmp_path, *args)) == 2
    err = one_line(capsys)
    assert all(f in err for f in fragments), err
    results = tmp_path / "results"
    assert not (results / "optuna.db").exists() and not (results / "data").exists()


def test_run_refuses_a_toml_whose_range_holds_lr_0(tmp_path, capsys):
    path = space_file(tmp_path, "lr = { low = 0.0, high = 0.1 }")
    assert cli.main(run_args(tmp_path, str(path))) == 2
    err = one_line(capsys)
    assert f"{path}: [space].lr = 0.0 would fail every trial" in err
    assert not (tmp_path / "results" / "optuna.db").exists() and not (tmp_path / "results" / "data").exists()


def test_run_refuses_lr_0_of_a_fixed_setting(tmp_path, capsys):
    text = (ROOT / "search_spaces" / "cifar_loss.toml").read_text()
    text = text.replace("lr          = { low = 1e-3, high = 0.3, log = true }\n", "").replace(
        "[fixed]", "[fixed]\nlr = 0.01", 1)
    path = tmp_path / "fixed_lr.toml"
    path.write_text(text)
    assert cli.main(run_args(tmp_path, str(path), "--set", "lr=0")) == 2
    assert "lr must be a finite number > 0, got 0.0" in one_line(capsys)


def test_a_toml_path_that_is_a_folder_is_one_line(tmp_path, capsys):
    folder = tmp_path / "somedir.toml"
    folder.mkdir()
    assert cli.main(run_args(tmp_path, f"{folder}/")) == 2
    assert f"{folder}: a directory, not a search-space file" in one_line(capsys)


def test_a_one_class_dataset_is_an_error(tmp_path):
    root = write_dr_lab(tmp_path / "dr", [0] * 12, [0, 1, 0, 2], size=16)
    with pytest.raises(InputError, match=r"the dataset has one class \(No DR\) in its 12 training images"):
        find_dataset(root)
    problems = inspect_dataset(root).fatal
    assert [p.kind for p in problems] == ["classes"]


def test_two_classes_are_enough(tmp_path):
    root = write_dr_lab(tmp_path / "dr", [0] * 10 + [3] * 2, [0, 3], size=16)
    files = find_dataset(root)
    assert len(files.train) == 12 and math.isclose(float((files.train.labels == 3).mean()), 2 / 12)


def test_ablate_timeout_must_be_positive(tmp_path, capsys):
    assert cli.main(["ablate", "dr_focal", "--timeout", "-5", "--results", str(tmp_path / "results")]) == 2
    assert "--timeout -5.0: must be a finite number of seconds > 0" in one_line(capsys)
    assert not (tmp_path / "results").exists()
