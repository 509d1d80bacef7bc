"""The data's types: image tables as found on disk, decoded image sets and the splits a trial trains on.

An `ImageTable` lists a dataset's images and labels (files, or rows of an array); `DatasetFiles` is
a dataset found in a layout (`objectives.data.layouts`); an `ImageSet` is rows of a decoded uint8
array (`objectives.data.decode`); `Splits` are the train, validation and test sets a trial uses
(`objectives.data.splits.load_splits`). `Problem` is one thing wrong with a dataset.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AUTO = "auto"  # group_by: group <id>_left / <id>_right names when every name has that form
NO_GROUPS = "none"  # group_by: never group


@dataclass(frozen=True)
class ImageTable:
    """Images and their integer labels, in a fixed order: files to decode (`paths`), or the rows
    of an already decoded uint8 NHWC array (`pixels`, e.g. CIFAR's batches; `paths` is empty).

    `ids` name each image as the split manifest does (its path relative to the data folder, or
    ``batch#row``); `groups` is each image's group id (a patient), None where ungrouped.
    """

    paths: tuple[Path, ...]
    labels: np.ndarray
    ids: tuple[str, ...]
    pixels: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        """How messages name image `i`: its file name, or its row for an array table."""
        return self.paths[i].name if self.pixels is None else f"image #{i}"

    def stems(self) -> list[str]:
        """The names `group_by` is matched against: file names without extension (``10_left``)."""
        return [i if self.pixels is not None else Path(i).stem for i in self.ids]

    def subset(self, rows: np.ndarray) -> ImageTable:
        paths = tuple(self.paths[i] for i in rows) if self.paths else ()
        return ImageTable(paths, self.labels[rows], tuple(self.ids[i] for i in rows),
                          None if self.pixels is None else self.pixels[rows],
                          None if self.groups is None else self.groups[rows])


def file_table(root: Path, paths: Sequence[Path], labels: np.ndarray) -> ImageTable:
    """A table of image files under `root`, named in the manifest by their relative paths."""
    return ImageTable(tuple(paths), labels, tuple(p.relative_to(root).as_posix() for p in paths))


@dataclass(frozen=True)
class DatasetFiles:
    """A dataset found on disk: its layout name, train and test tables and class names."""

    layout: str
    root: Path
    train: ImageTable
    test: ImageTable
    class_names: tuple[str, ...]
    test_held_out: float = 0.0  # the fraction of train held out as test where the data has no test split
    group_by: str = AUTO  # how images were grouped (train.groups is None where they were not)

    def tables(self) -> tuple[tuple[str, ImageTable], ...]:
        return (("train", self.train), ("test", self.test))

    def shared_test_groups(self) -> list[str]:
        """Groups (patients) the data's own test split shares with train, sorted: a leak the data made."""
        if self.test_held_out or self.train.groups is None or self.test.groups is None:
            return []
        return sorted(set(self.train.groups.astype(str).tolist()) & set(self.test.groups.astype(str).tolist()))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset; `fatal` when a run would stop on it (a duplicate between
    train and test does not stop a run, it only makes the test figure optimistic)."""

    kind: str
    message: str
    fatal: bool = True


@dataclass(frozen=True)
class ImageSet:
    """Rows `index` of a decoded uint8 NHWC array (possibly memory-mapped) with their labels."""

    images: np.ndarray
    labels: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def class_counts(self, num_classes: int) -> list[int]:
        return np.bincount(self.labels[self.index], minlength=num_classes).tolist()


@dataclass(frozen=True)
class Splits:
    """Train / validation (carved from train) / test sets plus the normalisation statistics."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]
    manifest: Manifest | None = None  # every image's split decision (split.csv)
    content_hash: str | None = None  # the bytes of the images (files) or pixels (arrays): `decode.content_hash`

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Manifest:
    """Every image's split decision: the rows of ``split.csv`` (``image,split,group,label``).

    `image` is the path relative to the data folder (``train/3/x.png``) or an array row
    (``data_batch_1#123``); `group` is empty where the data is not grouped. `shared_test_groups`
    lists groups that a layout's own test split shares with train (the data's choice, not ours).
    """

    image: tuple[str, ...]
    split: tuple[str, ...]
    group: tuple[str, ...]
    label: tuple[int, ...]
    shared_test_groups: tuple[str, ...] = ()

    def csv_text(self) -> str:
        out = io.StringIO()
        out.write("image,split,group,label\n")
        for row in zip(self.image, self.split, self.group, self.label):
            out.write(",".join(_csv_field(str(v)) for v in row) + "\n")
        return out.getvalue()

    def digest(self) -> str:
        """sha256 of the CSV text: what identifies the data and its split in a study."""
        return hashlib.sha256(self.csv_text().encode()).hexdigest()

    def counts(self) -> dict[str, int]:
        return {name: self.split.count(name) for name in ("train", "val", "test")}


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
