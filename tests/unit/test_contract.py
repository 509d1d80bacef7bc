"""The objective contract (`objectives.contract.Objective`): the image classifier and a toy
objective satisfy it, a module of its first form is adapted with the old defaults, `FitConfig`
takes its defaults from `TrainConfig` only. The toy (tests/toy_objective.py, settings named unlike
the image classifier's) through `run`, `ablate` and `report`: tests/e2e/test_contract_e2e.py."""

from __future__ import annotations

import dataclasses
import types

import pytest

from objectives import contract, image_classifier
from objectives.errors import InputError
from objectives.train import CHECKPOINT_KEYS, FitConfig
from study.spaces import registry
from study.spaces.space_file import load_space_text
from tests import toy_objective

from conftest import ROOT
from support.contract import TOY_TOML


def part(name: str, **defaults: object) -> type:
    """A frozen dataclass `name` of `defaults` (int settings, or a nested part)."""
    return dataclasses.make_dataclass(name, [(k, type(v), dataclasses.field(default=v)) for k, v in defaults.items()],
                                      frozen=True)


Data = part("Data", image_size=32)
Config = part("Config", data=Data(), train=part("Train", epochs=2, seed=0)())  # the first form: no fe_epochs
DataOnly = part("DataOnly", data=Data())


def test_the_image_classifier_and_the_toy_are_objectives_as_they_stand():
    for module in (image_classifier, toy_objective):
        assert isinstance(module, contract.Objective) and contract.objective(module) is module
        assert contract.missing(module) == []
        assert module.ROLES.problems(contract.settings(module.Config)) == []
    assert image_classifier.CHECKPOINT_KEYS is CHECKPOINT_KEYS and contract.RESUMES_FROM <= CHECKPOINT_KEYS
    config = contract.build_config(toy_objective.Config, {"rounds": 7, "warmup": 2, "shuffle": 5})
    roles = toy_objective.ROLES
    assert (roles.epoch_count(config), roles.fe_epoch_count(config), roles.split_seed_of(config)) == (7, 2, 5)
    assert roles.seeded({"rate": 0.1}, 9, split=True) == {"rate": 0.1, "rng": 9, "shuffle": 9}
    assert roles.seeded({"rate": 0.1}, 9, split=False) == {"rate": 0.1, "rng": 9}


def test_a_module_of_the_first_form_gets_the_old_defaults():
    """Config, EMBEDDED_DATASET, load_data and run only: the roles its Config has, fit's keys."""
    old = types.SimpleNamespace(Config=Config, EMBEDDED_DATASET="digits", load_data=len, run=print)
    assert not isinstance(old, contract.Objective)
    adapted = contract.objective(old)
    assert isinstance(adapted, contract.Objective) and adapted.run is print and adapted.Config is Config
    assert adapted.ROLES == contract.Roles(epochs="epochs", fe_epochs=None, seed="seed", split_seed=None)
    assert adapted.CHECKPOINT_KEYS == CHECKPOINT_KEYS and "kappa" in adapted.METRICS
    assert adapted.ROLES.fe_epoch_count(contract.build_config(Config, {})) == 0
    assert adapted.REPORT_GROUPS == contract.CLASSIFIER_GROUPS
    lossy_config = part("Config", data=Data(), train=part("Train", epochs=2, seed=0, loss="ce", lr=0.1)())
    lossy = contract.objective(types.SimpleNamespace(**{**vars(old), "Config": lossy_config}))
    assert (lossy.ROLES.loss, lossy.ROLES.step_size) == (("loss",), "lr")  # the classifier's, where it has them
    no_epochs = types.SimpleNamespace(**{**vars(old), "Config": DataOnly})
    with pytest.raises(TypeError, match="a Config of dataclass parts"):
        contract.objective(no_epochs)
    wrong = types.SimpleNamespace(**{**vars(toy_objective), "ROLES": contract.Roles()})  # the default names
    with pytest.raises(TypeError, match="ROLES.epochs = 'epochs', which is not a setting"):
        contract.objective(wrong)
    lossy = types.SimpleNamespace(**{**vars(toy_objective), "ROLES": contract.Roles(epochs="rounds", loss=("gamma",))})
    with pytest.raises(TypeError, match="ROLES.loss = 'gamma', which is not a setting"):
        contract.objective(lossy)
    rounds = types.SimpleNamespace(**{**vars(toy_objective), "ROLES": None})
    del rounds.ROLES  # the first form, with a Config that has no `epochs`
    with pytest.raises(TypeError, match="a setting 'epochs' \\(or ROLES naming its epoch count\\)"):
        contract.objective(rounds)


def test_fit_config_copies_train_config_and_has_no_defaults_of_its_own():
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(FitConfig))
    train = image_classifier.TrainConfig(lr=0.3, epochs=4, batch_size=7, step_size=2, step_gamma=0.5, seed=11,
                                         hflip=True, crop_padding=3)
    fit = image_classifier.fit_config(train, metric="loss", maximize=False)
    shared = {f.name for f in dataclasses.fields(FitConfig)} - {"metric", "maximize", "augment"}
    assert {name: getattr(fit, name) for name in shared} == {name: getattr(train, name) for name in shared}
    assert (fit.augment.hflip, fit.augment.vflip, fit.augment.crop_padding) == (True, False, 3)
    assert (fit.metric, fit.maximize) == ("loss", False)


def test_a_metric_the_objective_does_not_report_is_one_line(monkeypatch):
    space = load_space_text(TOY_TOML, ROOT / "toy.toml")
    assert registry.objective_module(space) is toy_objective
    monkeypatch.setattr(toy_objective, "METRICS", ("loss", "accuracy"))
    narrow = load_space_text(TOY_TOML.replace('metric = "accuracy"', 'metric = "kappa"'), ROOT / "toy.toml")
    with pytest.raises(InputError, match="does not report metric 'kappa' \\(it reports loss, accuracy\\)"):
        registry.objective_module(narrow)
