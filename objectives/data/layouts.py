"""Dataset layouts: what a ``--data`` folder may look like, how each is recognised and read, and the checks.

Four layouts are recognised (`LAYOUTS`): the DR lab's CSVs, Kaggle's ``trainLabels.csv``,
torchvision's ``cifar-10-batches-py`` pickles and an ImageFolder tree. Each reader only lists
images and labels; the checks (`table_problems`, `check_classes`) are separate, so that data
inspection can list every problem where a run stops at the first. The number of classes and
their names come from the data.
"""

from __future__ import annotations

import csv
import dataclasses
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from objectives.data.splits import TEST_SPLIT_SEED, group_ids, grouped_split
from objectives.data.types import AUTO, DatasetFiles, ImageTable, Problem, file_table
from objectives.errors import InputError

DR_CLASS_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")
DR_LAB_FILES = ("train_img.csv", "train_label.csv", "test_img.csv", "test_label.csv")
KAGGLE_LABELS = "trainLabels.csv"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CIFAR_META = "batches.meta"



@dataclass(frozen=True)
class Layout:
    """One dataset layout: what it looks like on disk, how to recognise it, how to list it.

    `detect(dir)` returns the dataset's root when `dir` holds this layout (CIFAR's may be the
    ``cifar-10-batches-py`` folder inside `dir`), else None. `read(root)` lists images and labels
    without checking them (see `table_problems`) as (train, test, class names); test is None for
    a layout without test labels, and `read_dataset` holds one out.
    """

    description: str
    detect: Callable[[Path], Path | None]
    read: Callable[[Path], tuple[ImageTable, ImageTable | None, tuple[str, ...]]]


def find_dataset(
    root: Path,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    layout: str | None = None,
    group_by: str = AUTO,
    test_fraction: float = 0.2,
) -> DatasetFiles:
    """Detect the layout of `root` (or use `layout`), read its tables and check every file and
    label; the first problem is an InputError. `num_classes` / `class_names`, where a study fixes
    them, must match what the data says."""
    files = read_dataset(root, layout=layout, group_by=group_by, test_fraction=test_fraction)
    fatal = [p for p in table_problems(files) if p.fatal]
    if fatal:
        raise InputError(fatal[0].message)
    check_classes(files, num_classes=num_classes, class_names=class_names)
    return files


def read_dataset(root: Path, *, layout: str | None = None, group_by: str = AUTO,
                 test_fraction: float = 0.2) -> DatasetFiles:
    """The tables of `root` in its detected (or the forced) layout, unchecked, with every image's
    group (see `objectives.data.splits.group_ids`, matched over train and test names together). A
    layout without test labels gets a stratified `test_fraction` held out of train, by group, with
    the fixed `TEST_SPLIT_SEED`, so that no study setting moves the test set."""
    name, found = detect_layout(root, layout)
    train, test, class_names = LAYOUTS[name].read(found)
    stems = train.stems() + (test.stems() if test is not None else [])
    groups = group_ids(stems, group_by)
    if groups is not None:
        train = dataclasses.replace(train, groups=groups[: len(train)])
        if test is not None:
            test = dataclasses.replace(test, groups=groups[len(train) :])
    if test is not None:
        return DatasetFiles(name, found, train, test, class_names, group_by=group_by)
    keep, held = grouped_split(train.labels, train.groups, test_fraction, TEST_SPLIT_SEED)
    return DatasetFiles(name, found, train.subset(keep), train.subset(held), class_names,
                        test_held_out=test_fraction, group_by=group_by)


def detect_layout(root: Path, layout: str | None = None) -> tuple[str, Path]:
    """(layout name, dataset root) of `root`: the first layout that recognises it, or `layout`."""
    if not root.is_dir():
        raise InputError(f"--data {root}: no such directory")
    if layout is not None:
        if layout not in LAYOUTS:
            raise InputError(f"--layout {layout}: unknown layout; known: {', '.join(LAYOUTS)}")
        return layout, LAYOUTS[layout].detect(root) or root
    for name, spec in LAYOUTS.items():
        found = spec.detect(root)
        if found is not None:
            return name, found
    expected = "; ".join(f"{name}: {spec.description}" for name, spec in LAYOUTS.items())
    raise InputError(f"--data {root}: no known layout (expected {expected})")


def table_problems(files: DatasetFiles) -> list[Problem]:
    """Labels outside the classes, missing files, split by split, and training images of fewer
    than two classes (a classifier of one class scores 1.0 and learns nothing); cheap: no image is read."""
    problems = []
    k = len(files.class_names)
    present = np.unique(files.train.labels).tolist()
    if len(present) < 2:
        names = [files.class_names[c] if 0 <= c < k else str(c) for c in present]
        found = f"one class ({_names(names)})" if names else "no class"
        problems.append(Problem("classes", f"{files.root}: the dataset has {found} in its {len(files.train)} training "
                                           f"images; a classifier needs at least two"))
    for split, table in files.tables():
        bad = np.flatnonzero((table.labels < 0) | (table.labels >= k))
        if bad.size:
            i = int(bad[0])
            problems.append(Problem("label", f"{files.root}: {split} label {int(table.labels[i])} of {table.name(i)} "
                                             f"is outside "
                                             f"0..{k - 1} ({bad.size} such labels)"))
        missing = [p for p in table.paths if not p.is_file()]
        if missing:
            shown = ", ".join(p.name for p in missing[:3])
            problems.append(Problem("missing", f"{files.root}: {len(missing)} {split} image(s) missing, e.g. {shown}"))
    return problems


def check_classes(files: DatasetFiles, *, num_classes: int | None, class_names: Sequence[str] | None) -> None:
    """The classes a study fixes (count or names) must be the data's."""
    found = files.class_names
    if num_classes is not None and num_classes != len(found):
        raise InputError(f"--data {files.root}: the data has {len(found)} classes ({_names(found)}), "
                         f"the study expects {num_classes}")
    if class_names is not None and tuple(class_names) != found:
        raise InputError(f"--data {files.root}: the data's classes are {_names(found)}, "
                         f"the study expects {_names(class_names)}")


def _names(names: Sequence[str], shown: int = 10) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def _detect_dr_lab(root: Path) -> Path | None:
    return root if any((root / name).exists() for name in DR_LAB_FILES) else None


def _read_dr_lab(root: Path) -> tuple[ImageTable, ImageTable | None, tuple[str, ...]]:
    """The source lab's layout: four one-column CSVs (with header) and DIR/<name>.jpeg."""
    missing = [name for name in DR_LAB_FILES if not (root / name).is_file()]
    if missing:
        raise InputError(f"--data {root}: DR lab layout incomplete, missing {', '.join(missing)}")
    tables = []
    for split in ("train", "test"):
        names = _read_column(root / f"{split}_img.csv")
        labels = _read_column(root / f"{split}_label.csv")
        if len(names) != len(labels):
            raise InputError(
                f"{root / f'{split}_img.csv'} has {len(names)} rows but "
                f"{split}_label.csv has {len(labels)}"
            )
        paths = [root / f"{name}.jpeg" for name in names]
        tables.append(file_table(root, paths, _parse_labels(labels, root / f"{split}_label.csv")))
    return tables[0], tables[1], DR_CLASS_NAMES


def _detect_kaggle(root: Path) -> Path | None:
    return root if (root / KAGGLE_LABELS).is_file() else None


def _read_kaggle(root: Path) -> tuple[ImageTable, ImageTable | None, tuple[str, ...]]:
    """Kaggle's ``trainLabels.csv`` (image,level) with ``train/<image>.jpeg``.

    Kaggle published no labels with its test images, so `read_dataset` holds a test split out of
    train (by patient, with a fixed seed, so every run of every study holds out the same images).
    """
    try:
        with open(root / KAGGLE_LABELS, newline="") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise InputError(f"--data {root}: Kaggle layout needs {KAGGLE_LABELS}") from None
    header = [h.strip() for h in rows[0]] if rows else []
    if header[:2] != ["image", "level"]:
        raise InputError(f"{root / KAGGLE_LABELS}: expected header 'image,level', found {','.join(header)!r}")
    body = [r for r in rows[1:] if r]
    if not body:
        raise InputError(f"{root / KAGGLE_LABELS}: no rows")
    paths = [root / "train" / f"{r[0].strip()}.jpeg" for r in body]
    labels = _parse_labels([r[1] if len(r) > 1 else "" for r in body], root / KAGGLE_LABELS)
    return file_table(root, paths, labels), None, DR_CLASS_NAMES


def _detect_cifar(root: Path) -> Path | None:
    for candidate in (root, root / CIFAR_FOLDER):
        if (candidate / CIFAR_META).is_file() or (candidate / CIFAR_TRAIN[0]).is_file():
            return candidate
    return None


def _read_cifar(root: Path) -> tuple[ImageTable, ImageTable | None, tuple[str, ...]]:
    """torchvision's ``cifar-10-batches-py``: five training batches, a test batch and
    ``batches.meta`` (the class names), each a pickled dict of a (N, 3072) uint8 array in
    channel-major order and a list of labels. Read here, never downloaded."""
    missing = [name for name in (*CIFAR_TRAIN, CIFAR_TEST, CIFAR_META) if not (root / name).is_file()]
    if missing:
        raise InputError(f"--data {root}: CIFAR-10 batches incomplete, missing {', '.join(missing)}")
    meta = _unpickle(root / CIFAR_META)
    names = _field(meta, "label_names", root / CIFAR_META)
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return _cifar_table([root / name for name in CIFAR_TRAIN]), _cifar_table([root / CIFAR_TEST]), class_names


def _cifar_table(paths: Sequence[Path]) -> ImageTable:
    arrays, labels, ids = [], [], []
    for path in paths:
        batch = _unpickle(path)
        data = np.asarray(_field(batch, "data", path))
        rows = np.asarray(_field(batch, "labels", path))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(rows) != len(data):
            raise InputError(f"{path}: expected a (N, 3072) uint8 'data' array and N labels, "
                             f"found {data.dtype} {data.shape} "
                             f"and {len(rows)} labels")
        arrays.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(rows.astype(np.int64))
        ids += [f"{path.name}#{row}" for row in range(len(rows))]
    return ImageTable((), np.concatenate(labels), tuple(ids), pixels=np.ascontiguousarray(np.concatenate(arrays)))


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches and nothing else: a pickle may name any callable, so only the
    few numpy and codec functions that rebuild an array are allowed (torchvision's loader
    allows everything)."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[Any, Any]:
    try:
        with open(path, "rb") as handle:
            loaded = _BatchUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, OSError) as exc:
        raise InputError(f"{path}: not a CIFAR-10 python batch ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: not a CIFAR-10 python batch (a {type(loaded).__name__}, not a dict)")
    return loaded


def _field(batch: dict[Any, Any], key: str, path: Path) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise InputError(f"{path}: no {key!r} entry in this CIFAR-10 batch")


def _detect_imagefolder(root: Path) -> Path | None:
    train = root / "train"
    return root if train.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in train.iterdir()) else None


def _read_imagefolder(root: Path) -> tuple[ImageTable, ImageTable | None, tuple[str, ...]]:
    """``train/<class>/<image>`` and optionally ``test/<class>/<image>``, any image format Pillow
    reads. Classes are train's sub-folders, sorted (by number when every name is a number, so
    grades 0..10 keep their order); without ``test/``, `read_dataset` holds a test split out."""
    classes = _class_folders(root / "train")
    if not classes:
        raise InputError(f"--data {root}: ImageFolder layout needs train/<class>/<image> folders")
    train = _folder_table(root, "train", classes)
    if not (root / "test").is_dir():
        return train, None, tuple(classes)
    unknown = [c for c in _class_folders(root / "test") if c not in classes]
    if unknown:
        raise InputError(f"--data {root}: test class folder(s) {', '.join(unknown)} have no train/ counterpart")
    return train, _folder_table(root, "test", classes), tuple(classes)


def _class_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(names, key=int) if names and all(n.isdigit() for n in names) else sorted(names)


def image_extensions() -> frozenset[str]:
    """File extensions of every format Pillow can open (not the save-only ones such as PDF)."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _folder_table(root: Path, split: str, classes: Sequence[str]) -> ImageTable:
    folder = root / split
    extensions = image_extensions()
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).glob("*")
                       if p.suffix.lower() in extensions and not p.name.startswith("."))
        paths += found
        labels += [label] * len(found)
    return file_table(root, paths, np.asarray(labels, dtype=np.int64))


LAYOUTS: dict[str, Layout] = {
    "dr_lab": Layout(f"{', '.join(DR_LAB_FILES)} with <name>.jpeg", _detect_dr_lab, _read_dr_lab),
    "kaggle": Layout(f"{KAGGLE_LABELS} with train/<image>.jpeg", _detect_kaggle, _read_kaggle),
    "cifar10": Layout(f"{CIFAR_FOLDER} ({', '.join(CIFAR_TRAIN[:1])}.., {CIFAR_TEST}, {CIFAR_META})",
                      _detect_cifar, _read_cifar),
    "imagefolder": Layout("train/<class>/<image>, optional test/<class>/<image>",
                          _detect_imagefolder, _read_imagefolder),
}


def _read_column(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise InputError(f"{path}: no data rows under the header")
    return [r[0].strip() for r in rows[1:]]


def _parse_labels(values: Sequence[str], source: Path) -> np.ndarray:
    labels = []
    for row, value in enumerate(values, start=2):
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not number.is_integer():
            raise InputError(f"{source} line {row}: label {value!r} is not an integer")
        labels.append(int(number))
    return np.asarray(labels, dtype=np.int64)

