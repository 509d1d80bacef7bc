"""The embedded dataset "digits": scikit-learn's 1,797 real 8x8 handwritten digits, as PNG files.

Why it exists: a real-image default for the CIFAR loss study that needs no download (the digits
ship inside scikit-learn) and trains in seconds on a CPU. Why files: written once as an
ImageFolder tree (``train/<digit>/<n>.png``, ``test/<digit>/<n>.png``, 8-bit grayscale), they
take the path any user's folder takes: layout detection, decoding (grayscale to RGB), the
upscale to the model's input size, the decode cache, and so every trial shares one decode.

The test split is held out stratified and seeded, with exact per-class counts (largest
remainder), and the folder is built atomically (`objectives.folders.build_once`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from objectives.errors import InputError
from objectives.folders import build_once
from objectives.synthetic import grade_counts

DATASET_NAME = "digits"
TOTAL = 1797  # images in sklearn.datasets.load_digits
INK_LEVELS = 16  # the digits are 4-bit counts (0..16 set pixels of a 4x4 block)


def export(root: Path, train_images: int, test_images: int, seed: int = 0) -> Path:
    """Write (once) `train_images` + `test_images` digits under `root` and return root."""
    if train_images < 10 or test_images < 10 or train_images + test_images > TOTAL:
        raise InputError(f"embedded dataset digits: train_images ({train_images}) and test_images ({test_images}) "
                         f"must be "
                         f">= 10 each and together at most {TOTAL}")
    record = {"dataset": DATASET_NAME, "train_images": train_images, "test_images": test_images, "seed": seed}
    return build_once(root, record, lambda folder: _write(folder, train_images, test_images, seed))


def _write(folder: Path, train_images: int, test_images: int, seed: int) -> None:
    from sklearn.datasets import load_digits  # only runs that export the digits need scikit-learn

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / INK_LEVELS)).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    n_test = grade_counts(test_images, [len(m) for m in members])
    n_train = grade_counts(train_images, [len(m) - t for m, t in zip(members, n_test)])
    for cls, rows, t, k in zip(classes, members, n_test, n_train):
        for split, chosen in (("test", rows[:t]), ("train", rows[t : t + k])):
            target = folder / split / str(cls)
            target.mkdir(parents=True, exist_ok=True)
            for row in chosen.tolist():
                Image.fromarray(pixels[row]).save(target / f"{row:04d}.png")
