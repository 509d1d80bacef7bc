"""Grouped DR data (patients with two eyes), copies and replaced images: the data identity's unit tests
and its CLI run both write them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from conftest import class_image

SPACE = """schema = 2
[study]
metric = "kappa"
trials = 1
[fixed]
epochs = 1
image_size = 16
batch_size = 8
split_seed = 0
[space]
lr = { low = 1e-3, high = 1e-1, log = true }
"""

# patients 0..12 with both eyes in train; 13 and 14 have their left eye in train and their right
# eye in the data's own test CSVs (shared patients); 15..19 are test only
TRAIN_EYES = [(f"{p}_{eye}", grade) for p in range(13)
              for eye, grade in (("left", p % 5), ("right", (p + 1) % 5 if p % 3 == 0 else p % 5))]


TEST_EYES = [("13_right", 0), ("14_right", 4), ("15_left", 0), ("15_right", 1), ("16_left", 2), ("16_right", 2),
             ("17_left", 3), ("17_right", 0), ("18_left", 4), ("18_right", 1), ("19_left", 1), ("19_right", 1)]


# test patients by worse eye: 13 -> 0, 14 -> 4, 15 -> 1, 16 -> 2, 17 -> 3, 18 -> 4, 19 -> 1
TEST_PATIENTS_PER_GRADE = [1, 2, 1, 1, 2]


def write_grouped(root: Path, size: int = 24) -> Path:
    """The DR lab layout with `<patient>_left|right` names (grouped by patient); the data's own
    test CSVs share patients 13 and 14 with train."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split, eyes in (("train", TRAIN_EYES), ("test", TEST_EYES)):
        for name, grade in eyes:
            class_image(grade, size, rng).save(root / f"{name}.jpeg", quality=92)
        (root / f"{split}_img.csv").write_text("image\n" + "".join(f"{n}\n" for n, _ in eyes))
        (root / f"{split}_label.csv").write_text("level\n" + "".join(f"{g}\n" for _, g in eyes))
    return root


def replace_image(path: Path, seed: int = 7) -> None:
    """Another picture under the same name (new bytes, new mtime), as a user replacing images would."""
    class_image(1, 24, np.random.default_rng(seed)).save(path)


def copy_folder(src: Path, dst: Path) -> Path:
    """A copy with new mtimes (no `cp -p`): what another machine's copy looks like."""
    return Path(shutil.copytree(src, dst, copy_function=shutil.copyfile))
