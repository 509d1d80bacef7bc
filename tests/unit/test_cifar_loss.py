"""The cifar_loss study: its space, the embedded real digits and every loss through the one training
loop (`run` on the digits and on CIFAR batches: tests/e2e/test_cifar_loss_e2e.py)."""

import dataclasses

import optuna
import pytest
import torch

from objectives import digits, image_classifier, train
from objectives.contract import DataSource, TrialContext
from objectives.losses import FocalLoss, OneHotL1Loss
from objectives.models import build_model
from objectives.train import Runtime
from study.spaces import registry
from study.spaces.space import build_config


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
