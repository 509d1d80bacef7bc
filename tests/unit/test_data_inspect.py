"""`study data inspect` on ImageFolder and CIFAR layouts, in process (the CLI runs with its planted problems:
tests/e2e/test_data_inspect_e2e.py)."""

import shutil
from pathlib import Path

from objectives.data.inspect import inspect_dataset, render
from objectives.progress import no_bar

from conftest import write_cifar, write_imagefolder


def test_duplicate_alone_is_a_warning_and_imagefolder_and_cifar_are_inspected(tmp_path: Path):
    root = write_imagefolder(tmp_path / "pets", {"cat": 8, "dog": 4})
    write_imagefolder(root, {"cat": 2, "dog": 2}, split="test", seed=5)
    shutil.copyfile(root / "train" / "dog" / "0.png", root / "test" / "dog" / "0.png")
    result = inspect_dataset(root, bar=no_bar)
    assert not result.fatal and [p.kind for p in result.problems] == ["duplicate"]
    rows = [line.split() for line in render(result)]
    assert ["train", "cat", "8", "66.7%"] in rows and ["test", "all", "4"] in rows
    cifar = inspect_dataset(write_cifar(tmp_path / "c"), bar=no_bar)
    assert cifar.files.layout == "cifar10" and not cifar.fatal
    assert any("min 32x32, median 32x32, max 32x32 (120 images read)" in line for line in render(cifar))
    assert 0.45 < cifar.mean[0] < 0.55  # uniform random pixels
