"""What every objective module provides and receives, and the embedded-dataset registry.

An objective module (``objectives/<name>.py``) defines ``Config`` (a frozen dataclass of
everything a trial may vary), ``EMBEDDED_DATASET`` (the data used when no ``--data`` is given),
``data_key(config)`` (what its decoded data depends on, so trials share one load),
``load_data(config, source)`` and ``run(config, data, context) -> TrialResult``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from objectives.data import Splits, find_dataset, load_splits
from objectives.errors import InputError
from objectives.train import Checkpointing, FitResult, Report, Runtime

TrialResult = FitResult


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...


BarFactory = Callable[[int, str], contextlib.AbstractContextManager[Bar]]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def no_bar(total: int, desc: str) -> contextlib.AbstractContextManager[Bar]:
    return contextlib.nullcontext(_NoBar())


@dataclass(frozen=True)
class DataSource:
    """Where a trial's data lives: a folder in a known layout and the decoded-image cache."""

    root: Path
    cache_dir: Path | None = None
    bar: BarFactory = field(default=no_bar)
    layout: str | None = None  # forced layout (`--layout`); None detects it


@dataclass(frozen=True)
class TrialContext:
    """What the runner gives a trial besides its config: how to train and whom to report to."""

    runtime: Runtime
    report: Report
    metric: str
    maximize: bool
    checkpoint: Checkpointing | None = None  # per-epoch state, and where to resume from


def load_image_splits(
    source: DataSource,
    *,
    image_size: int,
    val_fraction: float,
    split_seed: int,
    group_by: str = "auto",
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Splits:
    """Find the dataset under `source.root`, check it, decode it once (cached) and split it (by
    `group_by` groups, see `objectives.splits`).

    Classes come from the data; `num_classes` / `class_names` are what the study fixes, if it
    does (a mismatch is an InputError). `mean` / `std` fix the normalisation; None computes it
    from the training rows.
    """
    files = find_dataset(source.root, num_classes=num_classes, class_names=class_names, layout=source.layout, group_by=group_by)
    total = len(files.train) + len(files.test)
    with source.bar(total, f"decode {total} images at {image_size}px") as bar:
        return load_splits(files, image_size=image_size, val_fraction=val_fraction, split_seed=split_seed,
                           cache_dir=source.cache_dir, progress=bar.update, mean=mean, std=std)


def ensure_embedded(name: str, data_dir: Path, *, train_images: int, test_images: int, seed: int = 0) -> Path:
    """Generate (once) the embedded dataset `name` under `data_dir` and return its folder,
    ``<stem>-<train_images>-<test_images>-seed<seed>``."""
    if name not in EMBEDDED:
        raise InputError(f"unknown embedded dataset {name!r}; known: {', '.join(EMBEDDED)}")
    embedded = EMBEDDED[name]
    root = data_dir / f"{embedded.stem}-{train_images}-{test_images}-seed{seed}"
    return embedded.build(root, train_images, test_images, seed)


def _synthetic_fundus(root: Path, train_images: int, test_images: int, seed: int) -> Path:
    from objectives import synthetic  # only runs that use the embedded data need the generator

    return synthetic.generate(root, train_images, test_images, seed=seed)


def _digits(root: Path, train_images: int, test_images: int, seed: int) -> Path:
    from objectives import digits

    return digits.export(root, train_images, test_images, seed)


@dataclass(frozen=True)
class Embedded:
    """An embedded dataset: the stem of its folder under the data folder and how it is built.

    The stem changes whenever the generator's layout does, so that a folder an older generator
    wrote keeps its name and is never reused (nor overwritten) for the new data: synthetic-fundus
    became eye pairs (``synthetic-fundus-pairs-...``; before, ``synthetic-fundus-...``).
    """

    stem: str
    build: Callable[[Path, int, int, int], Path]


EMBEDDED: dict[str, Embedded] = {
    "synthetic-fundus": Embedded("synthetic-fundus-pairs", _synthetic_fundus),
    "digits": Embedded("digits", _digits),
}
