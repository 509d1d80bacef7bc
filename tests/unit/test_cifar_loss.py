"""The cifar_loss study: its space, the embedded real digits, CIFAR batches through the real CLI,
and every loss through the one training loop."""

import dataclasses
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from objectives import digits, image_classifier, train
from objectives.contract import DataSource, TrialContext
from objectives.losses import FocalLoss, OneHotL1Loss
from objectives.models import build_model
from objectives.train import Runtime
from study.spaces import registry
from study.spaces.space import build_config

from conftest import CIFAR_NAMES, run_cli, write_cifar


def load(results: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{results / 'optuna.db'}")


def test_space_is_the_labs_recipe_and_embedded_pins_the_convnet():
    space = registry.resolve("cifar_loss")
    space.check_config(image_classifier.Config)
    base = build_config(image_classifier.Config, {**space.fixed, **space.pinned})
    train_ = base.train
    assert (
        train_.epochs,
        train_.batch_size,
        train_.momentum,
        train_.step_size,
        train_.step_gamma,
        train_.crop_padding,
    ) == (30, 128, 0.9, 5, 0.5, 4)
    assert (
        train_.hflip and not train_.vflip and not train_.pretrained and base.data.norm_mean == (0.4914, 0.4822, 0.4465)
    )
    assert (base.data.image_size, base.data.val_fraction, base.data.num_classes) == (32, 0.1, 0)
    assert space.study.metric == "accuracy"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        config = build_config(image_classifier.Config, space.suggest(trial)).train
        assert config.arch in ("convnet", "resnet18_32") and 1e-3 <= config.lr <= 0.3
        assert ("focal_gamma" in trial.params) == (config.loss == "focal")
        study.tell(trial, 0.0)
    embedded = space.pin("epochs", 2).embedded_run()
    assert embedded.pinned["arch"] == "convnet" and embedded.fixed["epochs"] == 2  # a --set beats [embedded]
    assert embedded.fixed["norm_mean"] == [] and embedded.fixed["hflip"] is False


def test_resnet18_32_keeps_32px_resolution_into_layer1():
    model = build_model("resnet18_32", 10, pretrained=False)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    features = model.layer1(model.relu(model.bn1(model.conv1(torch.zeros(2, 3, 32, 32)))))
    assert features.shape == (2, 64, 32, 32) and model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.fixture(scope="module")
def digit_splits(tmp_path_factory: pytest.TempPathFactory):
    root = digits.export(tmp_path_factory.mktemp("digits") / "d", 600, 150, seed=0)
    config = build_config(
        image_classifier.Config,
        {
            **registry.resolve("cifar_loss").fixed,
            "arch": "convnet",
            "epochs": 2,
            "batch_size": 32,
            "hflip": False,
            "lr": 0.05,
            "val_fraction": 0.2,
            "norm_mean": [],
            "norm_std": [],
        },
    )
    return image_classifier.load_data(config.data, DataSource(root)), config


@pytest.mark.parametrize("loss, kind", [("l1", OneHotL1Loss), ("ce", torch.nn.CrossEntropyLoss), ("focal", FocalLoss)])
def test_every_loss_trains_through_the_one_loop(digit_splits, monkeypatch, loss, kind):
    splits, config = digit_splits
    calls = []
    real_epoch = train._train_epoch

    def spy(model, loss_fn, *args, **kwargs):
        calls.append(type(loss_fn))
        return real_epoch(model, loss_fn, *args, **kwargs)

    monkeypatch.setattr(train, "_train_epoch", spy)
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, loss=loss, focal_gamma=2.0 if loss == "focal" else 0.0)
    )
    rows = []
    result = image_classifier.run(
        config, splits, TrialContext(Runtime(), lambda e, row: rows.append(row), "accuracy", True)
    )
    assert calls == [kind, kind]  # the shared epoch function, once per epoch, with this loss
    assert [r["epoch"] for r in rows] == [1, 2] and len(result.curves["train_loss"]) == 2
    assert sum(map(sum, result.val.confusion)) == len(splits.val)
    if loss != "l1":  # L1 on one-hot stays near chance, as in the lab; CE and focal learn
        assert result.val.metrics["accuracy"] > 0.3


@pytest.mark.slow
def test_run_cifar_loss_on_embedded_digits_learns(tmp_path: Path):
    result = run_cli(
        "run", "cifar_loss", "--trials", "2", "--set", "epochs=2", "--set", "loss=ce", "--set", "lr=0.05", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "data: embedded dataset digits" in result.stdout
    root = next((tmp_path / "results" / "data").glob("digits-*"))
    assert len(list(root.glob("*/*/*.png"))) == 1797
    study = load(tmp_path / "results", "cifar_loss")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    assert study.best_value > 0.5, result.stdout  # real learning on real digits in 2 epochs
    for trial in complete:
        assert trial.user_attrs["class_names"] == [str(d) for d in range(10)]
        assert trial.user_attrs["config"]["epochs"] == 2 and trial.user_attrs["config"]["arch"] == "convnet"
        assert len(trial.user_attrs["curves"]["val_accuracy"]) == 2
        assert "macro_f1" in trial.user_attrs["val_metrics"]
        assert sum(map(sum, trial.user_attrs["test_confusion"])) == 360
        assert len(trial.user_attrs["val_confusion"]) == 10


@pytest.mark.slow
def test_run_cifar_loss_on_cifar_batches_names_the_classes(tmp_path: Path):
    write_cifar(tmp_path / "data", per_batch=40)
    result = run_cli("run", "cifar_loss", "--data", str(tmp_path / "data"), "--trials", "1", "--set", "epochs=1",
                     "--set", "arch=convnet", "--set", "batch_size=32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(cifar10 layout)" in result.stdout
    (trial,) = load(tmp_path / "results", "cifar_loss").trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["class_names"] == CIFAR_NAMES
    assert sum(map(sum, trial.user_attrs["test_confusion"])) == 40
    wrong = run_cli("run", "dr_focal", "--data", str(tmp_path / "data"), "--set", "pretrained=false", cwd=tmp_path)
    assert (
        wrong.returncode == 2
        and "the data has 10 classes" in wrong.stderr
        and len(wrong.stderr.strip().splitlines()) == 1
    )
