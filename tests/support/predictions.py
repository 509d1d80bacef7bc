"""Grouped DR data written for the prediction records' unit tests and the CLI run that stores them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import class_image


def grouped_dr(root: Path, patients: int, seed: int) -> Path:
    """A DR-lab folder whose names are <patient>_left|right: one or two eyes per patient, the
    eyes of a patient one grade apart at most."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for split, first in (("train", 0), ("test", 1000)):
        names, labels = [], []
        for p in range(first, first + patients):
            grade = int(rng.choice(5, p=[0.5, 0.15, 0.2, 0.1, 0.05]))
            for eye in ("left", "right")[: int(rng.integers(1, 3))]:
                names.append(f"{p}_{eye}")
                labels.append(grade)
        for name, label in zip(names, labels):
            class_image(label, 32, rng).save(root / f"{name}.jpeg", quality=92)
        (root / f"{split}_img.csv").write_text("image\n" + "".join(f"{n}\n" for n in names))
        (root / f"{split}_label.csv").write_text("level\n" + "".join(f"{x}\n" for x in labels))
    return root
