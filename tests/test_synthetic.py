from pathlib import Path

import numpy as np
import pytest

from objectives import synthetic
from objectives.data import find_dataset, load_splits
from objectives.losses import build_loss
from objectives.models import build_model
from objectives.train import FitConfig, Runtime, fit


def test_grade_counts_follow_the_dr_mix():
    assert synthetic.grade_counts(1000) == [730, 70, 150, 25, 25]
    for total in (5, 37, 200, 801):
        counts = synthetic.grade_counts(total)
        assert sum(counts) == total and min(counts) >= 1


def test_generate_writes_the_dr_lab_layout_deterministically_and_once(tmp_path: Path):
    a = synthetic.generate(tmp_path / "a", 40, 10, size=64, seed=5)
    b = synthetic.generate(tmp_path / "b", 40, 10, size=64, seed=5)
    files = find_dataset(a, num_classes=5)
    assert files.layout == "dr_lab" and len(files.train.paths) == 40 and len(files.test.paths) == 10
    assert np.bincount(files.train.labels, minlength=5).tolist() == synthetic.grade_counts(40)
    assert files.train.labels.tolist() != sorted(files.train.labels.tolist())  # shuffled
    for name in ("train_img.csv", "train_label.csv", "train_00003.jpeg", "test_00007.jpeg"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    stamp = (a / "train_00003.jpeg").stat().st_mtime_ns
    assert synthetic.generate(tmp_path / "a", 40, 10, size=64, seed=5) == a
    assert (a / "train_00003.jpeg").stat().st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(FileExistsError):
        synthetic.generate(tmp_path / "a", 41, 10, size=64, seed=5)
    other = synthetic.generate(tmp_path / "c", 40, 10, size=64, seed=6)
    assert (other / "train_00003.jpeg").read_bytes() != (a / "train_00003.jpeg").read_bytes()


def test_a_resnet18_learns_the_synthetic_grades_beyond_the_majority_class(tmp_path: Path):
    """The embedded default must be learnable (kappa above the majority predictor's 0) by the
    model and loop the default run uses, at the default's 64 px."""
    root = synthetic.generate(tmp_path / "fundus", 800, 200, seed=0)  # the default run's size
    splits = load_splits(find_dataset(root, num_classes=5), image_size=64, val_fraction=0.2, split_seed=0, cache_dir=None)
    cfg = FitConfig(epochs=6, fe_epochs=0, lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=32, seed=0)
    result = fit(build_model("resnet18", 5, pretrained=False), build_loss("ce", class_counts=splits.train.class_counts(5)),
                 splits, cfg, Runtime(), lambda e, r: None)
    majority_accuracy = max(synthetic.grade_counts(200)) / 200
    assert result.test.metrics["kappa"] > 0.3, result.curves
    assert result.test.metrics["balanced_accuracy"] > 0.3  # the majority predictor scores 0.2
    assert result.test.metrics["accuracy"] < 0.99  # not trivial
    assert majority_accuracy == pytest.approx(0.73, abs=0.01)
