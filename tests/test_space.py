import dataclasses
import textwrap
from pathlib import Path

import optuna
import pytest

from objectives.image_classifier import Config
from study import registry
from study.space import SpaceError, build_config, parse_value
from study.space_file import load_space


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
    ],
)
def test_malformed_space_files_name_file_parameter_problem(tmp_path: Path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


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
