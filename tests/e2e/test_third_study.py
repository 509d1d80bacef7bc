"""A new study is a TOML file: a third study, written in a temporary folder next to its own data,
runs end to end through the CLI without a line of Python."""

from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from conftest import class_image, run_cli

pytestmark = pytest.mark.slow
CLASSES = ("ant", "bee", "cow")
STUDY = """
# Which loss, and which learning rate, for three kinds of small noisy pictures?
schema = 2

[study]
description = "a third study: three classes of generated pictures"
metric = "accuracy"
sampler = "grid"
pruner = "none"
trials = 4

[fixed]
arch = "convnet"
epochs = 2
batch_size = 16
image_size = 32
num_classes = 3
class_names = ["ant", "bee", "cow"]
hflip = true

[space]
loss = { choices = ["ce", "focal"] }
focal_gamma = { choices = [2.0], when = { loss = "focal" } }
lr = { choices = [0.05, 0.1] }

[report]
cells = ["loss", "lr"]
figures = ["loss"]
labels = { loss = { ce = "cross-entropy" } }
"""


def write_imagefolder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                class_image(label, 24, rng).save(folder / f"{name}_{i:03d}.png")
    return root


def test_a_third_study_is_a_toml_file(tmp_path: Path):
    data = write_imagefolder(tmp_path / "pictures", {"train": 30, "test": 8})
    (tmp_path / "three.toml").write_text(STUDY)
    result = run_cli("run", "three.toml", "--data", str(data), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(imagefolder layout)" in result.stdout
    study = optuna.load_study(study_name="three", storage=f"sqlite:///{tmp_path / 'results' / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    grid = {(loss, lr) for loss in ("ce", "focal") for lr in (0.05, 0.1)}
    assert {(t.params["loss"], t.params["lr"]) for t in study.trials} == grid
    assert study.user_attrs["objective"] == "image_classifier"
    assert study.user_attrs["report"] == {"cells": ["loss", "lr"], "figures": ["loss"],
                                          "labels": {"loss": {"ce": "cross-entropy"}}}
    for trial in study.trials:
        config = trial.user_attrs["config"]
        assert (config["arch"], config["epochs"], config["image_size"], config["num_classes"]) == ("convnet", 2, 32, 3)
        assert config["class_names"] == list(CLASSES) and trial.user_attrs["class_names"] == list(CLASSES)
        assert config["hflip"] and not config["vflip"] and config["weight_decay"] == 1e-4  # its own, then the defaults
        assert config["focal_gamma"] == (2.0 if config["loss"] == "focal" else 0.0)
        assert sum(map(sum, trial.user_attrs["test_confusion"])) == 3 * 8
    assert max(t.value for t in study.trials) > 0.5  # three learnable classes: better than chance (1/3)
    report = run_cli("report", "three", "--format", "csv,md", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    out = tmp_path / "results" / "three"
    figures = {p.name for p in out.glob("confusion_*.png")}
    assert figures == {"confusion_best.png", "confusion_cross-entropy.png", "confusion_focal.png"}
    cells = (out / "cells.csv").read_text().splitlines()
    assert cells[0].startswith("loss,lr,n,") and len(cells) == 1 + 4
