"""Search spaces (`study.spaces`): TOML to typed frozen configs, pins and fixed overrides,
fingerprints, one-line errors for malformed files, and the report layout a study records."""

import dataclasses
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from objectives import contract, image_classifier
from objectives.errors import InputError
from objectives.image_classifier import Config
from study.report import frames
from study.spaces import registry
from study.spaces.report_layout import ReportLayout
from study.spaces.space import SpaceError, build_config, parse_value
from study.spaces.space_file import load_space

from support.spaces import write


def sample(space, n=30, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(build_config(Config, space.suggest(trial)))
        study.tell(trial, 0.0)
    return configs, study


def test_dr_focal_space_suggests_typed_frozen_configs_with_conditions():
    space = registry.resolve("dr_focal")
    space.check_config(Config)
    configs, study = sample(space, 40)
    for config, trial in zip(configs, study.trials):
        assert isinstance(config, Config)
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.train.lr = 1.0
        train = config.train
        assert train.arch in ("resnet18", "resnet50")
        assert 1e-4 <= train.lr <= 1e-1 and isinstance(train.lr, float)
        assert train.epochs == 15 and config.data.image_size == 512 and train.momentum == 0.9
        assert config.data.num_classes == 5 and train.hflip and train.vflip and train.weight_decay == 5e-4
        if train.pretrained:
            assert 0 <= train.fe_epochs <= train.epochs - 1 and "fe_epochs" in trial.params
        else:
            assert train.fe_epochs == 0 and "fe_epochs" not in trial.params
        if train.loss == "focal":
            assert "focal_gamma" in trial.params and 0.0 <= train.focal_gamma <= 5.0
        else:
            assert "focal_gamma" not in trial.params and "focal_alpha" not in trial.params
            assert train.focal_gamma == 0.0 and train.focal_alpha == "none"
    assert {c.train.pretrained for c in configs} == {True, False}
    assert {c.train.loss for c in configs} == {"ce", "focal"}


def test_pinned_parameter_is_not_sampled_and_fixed_can_be_overridden():
    space = registry.resolve("dr_focal").pin("lr", 1e-3).pin("epochs", 4).pin("arch", "resnet50")
    configs, study = sample(space, 10)
    assert all(c.train.lr == 1e-3 and c.train.epochs == 4 and c.train.arch == "resnet50" for c in configs)
    assert all("lr" not in t.params and "arch" not in t.params for t in study.trials)
    assert all(c.train.fe_epochs <= 3 for c in configs)  # high = "epochs - 1" follows the pin


def test_embedded_overrides_fixed_trials_and_pruner_warmup():
    full = registry.resolve("dr_focal")
    space = full.embedded_run()
    assert space.fixed["epochs"] == space.embedded["epochs"] < 15
    assert space.study.trials == space.embedded["trials"]
    assert space.study.warmup_epochs == space.embedded["warmup_epochs"] != full.study.warmup_epochs
    assert space.study.startup_trials == space.embedded["startup_trials"] != full.study.startup_trials
    assert space.study.seed == full.study.seed  # not overridden: kept


def test_parse_value():
    assert parse_value("1e-3") == 1e-3 and parse_value("true") is True
    assert parse_value("4") == 4 and parse_value("resnet18") == "resnet18"


def test_fingerprint_changes_with_space_and_pins_not_trials():
    space = registry.resolve("dr_focal")
    assert space.fingerprint() == registry.resolve("dr_focal").fingerprint()
    assert space.pin("lr", 1e-3).fingerprint() != space.fingerprint()
    bigger = dataclasses.replace(space, study=dataclasses.replace(space.study, trials=99))
    assert bigger.fingerprint() == space.fingerprint()


GOOD = """schema = 2
[study]
objective = "image_classifier"
[fixed]
epochs = 3
[space]
lr = { low = 1e-3, high = 1e-1, log = true }
loss = { choices = ["ce", "focal"] }
"""


@pytest.mark.parametrize(
    "text, message",
    [
        ("[study\nobjective=1", "not valid TOML"),
        (GOOD.replace("[fixed]", "[fixd]"), "unknown top-level table 'fixd'"),
        (
            GOOD.replace('objective = "image_classifier"', 'objective = "image_classifier"\nsampeler = "tpe"'),
            "unknown [study] key 'sampeler'",
        ),
        (GOOD.replace("low = 1e-3, high = 1e-1", "low = 1e-1, high = 1e-3"), "lr: low 0.1 > high 0.001"),
        (
            GOOD + 'gamma = { low = 0.0, high = 1.0, when = { los = "focal" } }\n',
            "gamma: when names unknown parameter 'los'",
        ),
        (GOOD + 'gamma = { low = 0.0, high = 1.0, when = { loss = "facal" } }\n', "gamma: when loss = 'facal'"),
        (GOOD + "x = { low = 0, hgh = 1 }\n", "x: unknown key 'hgh'"),
        (GOOD + "x = { choices = [] }\n", "x: choices must be a non-empty list"),
        (GOOD + 'x = { low = 0, high = "epoch - 1" }\n', "bound 'epoch - 1'"),
        (GOOD + "x = { low = 0.0, high = 1.0, log = true }\n", "log range needs low > 0"),
        (
            GOOD.replace('objective = "image_classifier"', 'objective = "image_classifier"\nsampler = "bayes"'),
            "[study].sampler = 'bayes'",
        ),
        (GOOD + '[embedded]\nwarmup_epochs = "two"\n', "[embedded].warmup_epochs must be a non-negative integer"),
        (GOOD.replace("schema = 2", "schema = 3"), "schema = 3 is unknown; this version reads schema 2"),
        (GOOD.replace("schema = 2", 'schema = "2"'), "schema = '2' is unknown"),
        (GOOD.replace('"image_classifier"', '"dr_focal"'), "'dr_focal' is a schema-1 objective"),
        (GOOD + '[report]\ncells = ["loss", "optimizer"]\n', "[report].cells: 'optimizer' is not a setting in [fixed]"),
        (GOOD + '[report]\nfigures = ["loss", "loss"]\n', "[report].figures must be a list of distinct setting names"),
        (GOOD + '[report]\ncolumns = ["loss"]\n', "[report]: unknown key 'columns'"),
        (GOOD + '[report]\nlabels = { loss = { l1 = "v" } }\n', "[report].labels.loss: 'l1' is not a value of loss"),
        (GOOD + '[report]\nlabels = { loss = { ce = "c/e" } }\n', "[report].labels.loss.ce: 'c/e' must be"),
    ],
)
def test_malformed_space_files_name_file_parameter_problem(tmp_path: Path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_schema2_defaults_to_the_image_classifier(tmp_path: Path):
    space = load_space(write(tmp_path, GOOD.replace('objective = "image_classifier"\n', "")))
    assert space.schema == 2 and space.study.objective == "image_classifier" and not space.defaults
    assert registry.objective_module(space) is image_classifier
    assert space.report == ReportLayout()
    assert load_space(write(tmp_path, GOOD)).fingerprint() == space.fingerprint()


def test_space_name_not_a_config_field(tmp_path: Path):
    path = tmp_path / "s.toml"
    path.write_text(GOOD + "dropout = { low = 0.0, high = 0.5 }\n")
    with pytest.raises(SpaceError, match="dropout: not a setting of objective image_classifier"):
        load_space(path).check_config(Config)


def test_wrong_type_in_space(tmp_path: Path):
    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace("epochs = 3", 'epochs = "three"'))
    with pytest.raises(SpaceError, match="epochs: 'three' is not of type int"):
        load_space(path).check_config(Config)


def test_bad_pins():
    space = registry.resolve("dr_focal")
    with pytest.raises(SpaceError, match="--set dropout: unknown parameter"):
        space.pin("dropout", 0.1)
    with pytest.raises(SpaceError, match="--set lr=5: outside"):
        space.pin("lr", 5)
    with pytest.raises(SpaceError, match="--set arch='vgg'"):
        space.pin("arch", "vgg")


def test_report_names_must_be_settings_of_the_objective(tmp_path: Path):
    path = write(tmp_path, GOOD.replace("[fixed]", "[fixed]\nwidth = 3") + '[report]\ncells = ["loss", "width"]\n')
    with pytest.raises(SpaceError, match="width: not a setting of objective image_classifier"):
        load_space(path).check_config(Config)


def test_an_objective_module_of_ones_own(tmp_path: Path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "__init__.py").write_text("")
    (tmp_path / "mine" / "partial.py").write_text("Config = None\n")
    (tmp_path / "mine" / "classifier.py").write_text(
        "from objectives.image_classifier import EMBEDDED_DATASET, Config, load_data, run\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for objective, message in (
        ("mine.nothere", "no module mine.nothere"),
        ("nothere", "no module objectives.nothere"),
        ("mine.partial", "mine.partial is not an objective module: it lacks EMBEDDED_DATASET, load_data, run"),
        ("synthetic", "objectives.synthetic is not an objective module"),
    ):
        path = write(tmp_path, GOOD.replace('"image_classifier"', f'"{objective}"'))
        with pytest.raises(InputError) as err:
            registry.objective_module(load_space(path))
        assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    path = write(tmp_path, GOOD.replace('"image_classifier"', '"mine.classifier"'))
    assert registry.objective_module(load_space(path)).Config is Config


def trial(number, value, **config):
    return create_trial(
        params={"arch": config["arch"]},
        distributions={"arch": CategoricalDistribution(["convnet", "resnet18"])},
        value=value,
        user_attrs={"config": config, "test_confusion": [[1, 0], [0, 1]], "class_names": ["a", "b"]},
    )


def layout_study(report=None):
    study = optuna.create_study(direction="maximize")
    for i, (arch, pretrained, loss) in enumerate(
        [("convnet", False, "ce"), ("resnet18", True, "ce"), ("resnet18", False, "focal"), ("resnet18", True, "focal")]
    ):
        study.add_trial(trial(i, 0.1 * i, arch=arch, pretrained=pretrained, loss=loss))
    if report is not None:
        study.set_user_attr("report", report)
    return study


def test_report_cells_and_figures_come_from_the_recorded_layout_or_the_dr_defaults():
    old = layout_study()  # a study made before studies recorded [report]
    frame = frames.trial_frame(old)
    assert set(frames.best_trials_per_cell(old, frame, True)) == {
        "best",
        "convnet_scratch",
        "resnet18_pretrained",
        "resnet18_scratch",
    }
    assert {"arch", "pretrained", "loss"} <= set(frames.cell_table(frame, True, frames.recorded_layout(old).cells))
    layout = ReportLayout(cells=("loss",), figures=("loss", "pretrained"), labels={"loss": {"focal": "fl"}})
    new = layout_study(layout.record())
    assert frames.recorded_layout(new) == ReportLayout.from_record(layout.record())
    picked = frames.best_trials_per_cell(new, frames.trial_frame(new), True)
    assert set(picked) == {"best", "ce_False", "ce_True", "fl_False", "fl_True"}
    cells = frames.cell_table(frames.trial_frame(new), True, frames.recorded_layout(new).cells)
    assert list(cells.loss) == ["ce", "focal"] and "arch" not in cells
    recordless = ReportLayout.from_record(None)
    assert (
        recordless.label("pretrained", True) == "pretrained"
        and recordless.label("arch", "convnet") == "convnet"
    )
    assert (
        recordless.label("pretrained", np.False_) == "scratch"
        and recordless.label("pretrained", "True") == "pretrained"
    )


def test_a_file_without_report_groups_takes_its_objectives_when_recorded(tmp_path: Path):
    """study/ names no objective's settings: a [report] that leaves cells, figures or labels out
    is filled from the objective's REPORT_GROUPS when the run records it; what the file gives
    stays, and an objective without REPORT_GROUPS gets none."""
    space = load_space(write(tmp_path, GOOD))
    assert space.report.cells == () and space.report.given == frozenset()
    filled = space.report.filled(contract.report_groups(image_classifier))
    assert filled.record() == ReportLayout.from_record(None).record() == {
        "cells": ["arch", "pretrained", "loss"], "figures": ["arch", "pretrained"],
        "labels": {"pretrained": {"true": "pretrained", "false": "scratch"}}}
    partial = load_space(write(tmp_path, GOOD + '\n[report]\ncells = ["lr"]\n'))
    assert partial.report.given == {"cells"}
    kept = partial.report.filled(contract.report_groups(image_classifier))
    assert kept.cells == ("lr",) and kept.figures == ("arch", "pretrained")
    assert space.report.filled(contract.report_groups(object())).record() == {"cells": [], "figures": [], "labels": {}}
