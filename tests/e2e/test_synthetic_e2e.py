"""A ResNet18 learns the embedded synthetic grades beyond the majority class, at the default's 64 px
(trains for minutes; the unit half: tests/unit/test_synthetic.py)."""

from pathlib import Path

import pytest

from objectives import synthetic
from objectives.data import find_dataset, load_splits
from objectives.losses import build_loss
from objectives.models import build_model
from objectives.train import Runtime, fit

from conftest import fit_cfg


@pytest.mark.slow  # trains a ResNet18 for minutes
def test_a_resnet18_learns_the_synthetic_grades_beyond_the_majority_class(tmp_path: Path):
    """The embedded default must be learnable (kappa above the majority predictor's 0) by the
    model and loop the default run uses, at the default's 64 px."""
    root = synthetic.generate(tmp_path / "fundus", 800, 200, seed=0)  # the default run's size
    splits = load_splits(
        find_dataset(root, num_classes=5), image_size=64, val_fraction=0.2, split_seed=0, cache_dir=None
    )
    cfg = fit_cfg(epochs=6, fe_epochs=0, lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=32, seed=0)
    result = fit(
        build_model("resnet18", 5, pretrained=False, seed=0),
        build_loss("ce", class_counts=splits.train.class_counts(5)),
        splits,
        cfg,
        Runtime(),
        lambda e, r: None,
    )
    majority_accuracy = max(synthetic.grade_counts(200)) / 200
    assert result.test.metrics["kappa"] > 0.3, result.curves
    assert result.test.metrics["balanced_accuracy"] > 0.3  # the majority predictor scores 0.2
    assert result.test.metrics["accuracy"] < 0.99  # not trivial
    assert majority_accuracy == pytest.approx(0.73, abs=0.01)
