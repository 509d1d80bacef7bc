"""What every objective module provides and receives.

An objective module (``objectives/<name>.py``) defines ``Config`` (a frozen dataclass of
everything a trial may vary), ``EMBEDDED_DATASET`` (the data used when no ``--data`` is given),
``data_key(config)`` (what its decoded data depends on, so trials share one load),
``load_data(config, source)`` and ``run(config, data, context) -> TrialResult``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from objectives.data import Splits, find_dataset, load_splits
from objectives.progress import BarFactory, no_bar
from objectives.train import Checkpointing, FitResult, Report, Runtime

TrialResult = FitResult


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
    `group_by` groups, see `objectives.data.splits`).

    Classes come from the data; `num_classes` / `class_names` are what the study fixes, if it
    does (a mismatch is an InputError). `mean` / `std` fix the normalisation; None computes it
    from the training rows.
    """
    files = find_dataset(source.root, num_classes=num_classes, class_names=class_names, layout=source.layout, group_by=group_by)
    total = len(files.train) + len(files.test)
    with source.bar(total, f"decode {total} images at {image_size}px") as bar:
        return load_splits(files, image_size=image_size, val_fraction=val_fraction, split_seed=split_seed,
                           cache_dir=source.cache_dir, bar=bar, mean=mean, std=std)
