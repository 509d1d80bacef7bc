"""Datasets: the layouts a user brings, the decode-once image cache, splits and device batches.

Four layouts are recognised under a ``--data`` folder (`LAYOUTS`): the DR lab's CSVs, Kaggle's
``trainLabels.csv``, torchvision's ``cifar-10-batches-py`` pickles and an ImageFolder tree. Each
reader only lists images and labels; the checks (`table_problems`) are separate, so that `data
inspect` can list every problem where a run stops at the first. The number of classes and their
names come from the data.

Images are decoded and resized a single time into a uint8 array cached under ``results/cache/``
(keyed by the files' names, sizes and mtimes, or by the pixels of an array dataset, and by the
image size), which every trial and every worker then reads; the training rows' channel
statistics are cached beside it. Conversion to float, normalisation,
random crops and flips happen per batch on the training device, so an epoch costs what the model
costs, not what JPEG decoding costs.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from objectives.errors import InputError
from objectives.splits import AUTO, TEST_SPLIT_SEED, Manifest, group_ids, grouped_split, shared_groups

DR_CLASS_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")
DR_LAB_FILES = ("train_img.csv", "train_label.csv", "test_img.csv", "test_label.csv")
KAGGLE_LABELS = "trainLabels.csv"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CIFAR_META = "batches.meta"
CACHE_VERSION = 1  # bump when the decode (resize/crop) changes, so old caches are not reused
Progress = Callable[[int], None]


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
        """Groups (patients) the data's own test split shares with train: a leak the data made."""
        return [] if self.test_held_out else shared_groups(self.train.groups, self.test.groups)


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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------- layouts


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


def read_dataset(root: Path, *, layout: str | None = None, group_by: str = AUTO, test_fraction: float = 0.2) -> DatasetFiles:
    """The tables of `root` in its detected (or the forced) layout, unchecked, with every image's
    group (see `objectives.splits.group_ids`, matched over train and test names together). A
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
    """Labels outside the classes and missing files, split by split (cheap: no image is read)."""
    problems = []
    k = len(files.class_names)
    for split, table in files.tables():
        bad = np.flatnonzero((table.labels < 0) | (table.labels >= k))
        if bad.size:
            i = int(bad[0])
            problems.append(Problem("label", f"{files.root}: {split} label {int(table.labels[i])} of {table.name(i)} is outside "
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
        raise InputError(f"--data {files.root}: the data has {len(found)} classes ({_names(found)}), the study expects {num_classes}")
    if class_names is not None and tuple(class_names) != found:
        raise InputError(f"--data {files.root}: the data's classes are {_names(found)}, the study expects {_names(class_names)}")


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
            raise InputError(f"{path}: expected a (N, 3072) uint8 'data' array and N labels, found {data.dtype} {data.shape} "
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

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            loaded = _BatchUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, OSError) as exc:
        raise InputError(f"{path}: not a CIFAR-10 python batch ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: not a CIFAR-10 python batch (a {type(loaded).__name__}, not a dict)")
    return loaded


def _field(batch: dict, key: str, path: Path):
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
        found = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in extensions and not p.name.startswith("."))
        paths += found
        labels += [label] * len(found)
    return file_table(root, paths, np.asarray(labels, dtype=np.int64))


LAYOUTS: dict[str, Layout] = {
    "dr_lab": Layout(f"{', '.join(DR_LAB_FILES)} with <name>.jpeg", _detect_dr_lab, _read_dr_lab),
    "kaggle": Layout(f"{KAGGLE_LABELS} with train/<image>.jpeg", _detect_kaggle, _read_kaggle),
    "cifar10": Layout(f"{CIFAR_FOLDER} ({', '.join(CIFAR_TRAIN[:1])}.., {CIFAR_TEST}, {CIFAR_META})", _detect_cifar, _read_cifar),
    "imagefolder": Layout("train/<class>/<image>, optional test/<class>/<image>", _detect_imagefolder, _read_imagefolder),
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


# ---------------------------------------------------------------- decoding and its cache


def open_rgb(source: Path | BinaryIO, name: Path, *, draft: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """An image as RGB, and its (width, height) as stored. Grayscale, palette, RGBA, CMYK ... are
    converted as torchvision's ImageFolder loader converts them (alpha is dropped); 16-bit
    grayscale keeps its top 8 bits instead of saturating. `draft` lets libjpeg decode at a reduced
    scale first (DCT scaling), which is most of the speed-up for small sizes from multi-megapixel
    photographs. A file Pillow cannot read is an InputError naming `name`."""
    try:
        with Image.open(source) as img:
            size = img.size
            if draft is not None:
                img.draft("RGB", (draft, draft))
            if img.mode.startswith("I;16"):
                img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))
            return img.convert("RGB"), size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: unreadable or corrupt image ({exc.__class__.__name__}: {exc})") from None


def fit_square(img: Image.Image, size: int) -> np.ndarray:
    """uint8 HWC: shorter side resized to `size`, centre crop to a square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 HWC RGB, `size` x `size` (see `open_rgb` and `fit_square`)."""
    return fit_square(open_rgb(path, path, draft=size)[0], size)


def decode_table(table: ImageTable, size: int, *, cache_dir: Path | None, progress: Progress | None = None) -> np.ndarray:
    """Every image of `table` as an (N, size, size, 3) uint8 array: files are decoded, array rows
    resized; both through the same square fit and the same cache."""
    if table.pixels is None:
        return decode_all(table.paths, size, cache_dir=cache_dir, progress=progress)
    return resize_all(table.pixels, size, cache_dir=cache_dir, progress=progress)


def decode_all(paths: Sequence[Path], size: int, *, cache_dir: Path | None, progress: Progress | None = None) -> np.ndarray:
    """All `paths` decoded to an (N, size, size, 3) uint8 array, read from the cache when present."""
    key = content_key(paths, size) if cache_dir is not None else ""

    def fill(out: np.ndarray) -> None:
        for_each(len(paths), lambda i: out.__setitem__(i, decode_image(paths[i], size)), progress)

    return _cached(cache_dir, key, (len(paths), size, size, 3), fill, progress)


def resize_all(pixels: np.ndarray, size: int, *, cache_dir: Path | None, progress: Progress | None = None) -> np.ndarray:
    """Rows of a decoded uint8 NHWC array fitted to `size` (cached); the array itself where its
    images already have that size (CIFAR at 32 px: nothing to do)."""
    if pixels.shape[1:3] == (size, size):
        if progress:
            progress(len(pixels))
        return pixels
    key = pixels_key(pixels, size) if cache_dir is not None else ""

    def fill(out: np.ndarray) -> None:
        for_each(len(pixels), lambda i: out.__setitem__(i, fit_square(Image.fromarray(pixels[i]), size)), progress)

    return _cached(cache_dir, key, (len(pixels), size, size, 3), fill, progress)


def content_key(paths: Sequence[Path], size: int) -> str:
    """A hash of the file names, sizes and mtimes and the decode size: a changed file, a new file
    or another size gives another cache."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{size}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return f"{digest.hexdigest()[:20]}-{len(paths)}x{size}px"


def pixels_key(pixels: np.ndarray, size: int) -> str:
    """A hash of an array dataset's pixels and the target size."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{size}:{pixels.shape}".encode())
    digest.update(memoryview(np.ascontiguousarray(pixels)).cast("B"))
    return f"{digest.hexdigest()[:20]}-{len(pixels)}x{size}px"


def _cached(cache_dir: Path | None, key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray], None],
            progress: Progress | None) -> np.ndarray:
    """`fill` an array of `shape`, or read it from ``cache_dir/key.npy`` (memory-mapped).

    The cache file is written under a temporary name and renamed into place, so concurrent
    workers either see a complete file or none (and at worst both build it, identically).
    """
    if cache_dir is None:
        out = np.empty(shape, np.uint8)
        fill(out)
        return out
    target = cache_dir / f"{key}.npy"
    if target.is_file():
        if progress:
            progress(shape[0])
        return np.load(target, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache_dir / f".{target.stem}.{os.getpid()}.npy"
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    try:
        fill(array)
        array.flush()
        del array
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return np.load(target, mmap_mode="r")


def for_each(n: int, one: Callable[[int], None], progress: Progress | None = None) -> None:
    """`one(i)` for i < n on a thread pool (PIL's decode and resize release the GIL)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in pool.map(one, range(n), chunksize=1):
            if progress:
                progress(1)


# ---------------------------------------------------------------- splits


def load_splits(
    files: DatasetFiles,
    *,
    image_size: int,
    val_fraction: float,
    split_seed: int,
    cache_dir: Path | None,
    progress: Progress | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Splits:
    """Decode (or read from cache) both tables and carve a validation split from train, by group
    where the data has groups (`objectives.splits.grouped_split`), seeded by `split_seed`.

    Normalisation uses `mean` / `std` where given (a study that fixes the constants of its source
    lab, or a pretrained model's own), else the channel statistics of the training rows.
    """
    train_images = decode_table(files.train, image_size, cache_dir=cache_dir, progress=progress)
    test_images = decode_table(files.test, image_size, cache_dir=cache_dir, progress=progress)
    train_idx, val_idx = grouped_split(files.train.labels, files.train.groups, val_fraction, split_seed)
    train = ImageSet(train_images, files.train.labels, train_idx)
    if mean is None or std is None:
        mean, std = cached_channel_stats(train)
    return Splits(
        train=train,
        val=ImageSet(train_images, files.train.labels, val_idx),
        test=ImageSet(test_images, files.test.labels, np.arange(len(files.test.labels))),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        class_names=files.class_names,
        manifest=split_manifest(files, val_idx),
    )


def split_manifest(files: DatasetFiles, val_idx: np.ndarray) -> Manifest:
    """The `Manifest` of `files` with train rows `val_idx` in validation."""
    in_val = np.zeros(len(files.train), dtype=bool)
    in_val[val_idx] = True
    splits = [*np.where(in_val, "val", "train").tolist(), *["test"] * len(files.test)]

    def groups(table: ImageTable) -> list[str]:
        return [""] * len(table) if table.groups is None else [str(g) for g in table.groups]

    return Manifest(
        image=(*files.train.ids, *files.test.ids),
        split=tuple(splits),
        group=(*groups(files.train), *groups(files.test)),
        label=tuple(int(v) for v in (*files.train.labels.tolist(), *files.test.labels.tolist())),
        shared_test_groups=tuple(files.shared_test_groups()),
    )


def channel_stats(images: ImageSet, chunk: int = 256) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std (0..1 scale) over the training rows.

    Exact and cheap: a 256-bin histogram per channel (integer counts, no float copy of the images;
    25x faster than summing float64 blocks), read in chunks of rows to bound memory.
    """
    counts = torch.zeros((3, 256), dtype=torch.int64)
    for start in range(0, len(images.index), chunk):
        block = torch.from_numpy(np.ascontiguousarray(images.images[np.sort(images.index[start : start + chunk])]))
        pixels = block.view(-1, block.shape[-1])
        for c in range(3):
            counts[c] += torch.bincount(pixels[:, c], minlength=256)
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    hist = counts.to(torch.float64)
    return moments((hist * levels).sum(1).numpy(), (hist * levels**2).sum(1).numpy(), int(counts[0].sum()))


def cached_channel_stats(images: ImageSet) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """`channel_stats`, kept in a small JSON file beside the decode cache the images come from
    (keyed by that file and the training rows, which depend on the split), so later trials and
    workers do not read every training image again. Images not from a cache file are summed."""
    source = getattr(images.images, "filename", None)
    if not source:
        return channel_stats(images)
    rows = hashlib.sha256(np.ascontiguousarray(images.index, dtype=np.int64).tobytes()).hexdigest()[:16]
    target = Path(source).with_name(f"{Path(source).stem}.stats-{rows}.json")
    try:
        saved = json.loads(target.read_text())
        return tuple(saved["mean"]), tuple(saved["std"])  # type: ignore[return-value]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    mean, std = channel_stats(images)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        partial.write_text(json.dumps({"mean": mean, "std": std}))
        os.replace(partial, target)
    except OSError:
        partial.unlink(missing_ok=True)  # a read-only cache still works, only slower
    return mean, std


def moments(total: np.ndarray, squares: np.ndarray, count: int) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel (mean, std) from sums and sums of squares over `count` pixels."""
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# ---------------------------------------------------------------- batches on the device


@dataclass(frozen=True)
class Augment:
    """Random training augmentation, per image, on the device.

    `crop_padding` is torchvision's ``RandomCrop(size, padding)``: pad with black, cut a random
    window of the original size. Flips keep labels; fundus images have no preferred orientation
    (h and v), natural photographs only a left-right symmetry (h), digits none.
    """

    hflip: bool = False
    vflip: bool = False
    crop_padding: int = 0

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")


class DeviceBatches:
    """Batches of one ImageSet as normalised float NCHW tensors on `device`.

    uint8 rows are gathered on the host (from RAM or the memory-mapped cache), copied once per
    batch (pinned and asynchronous on CUDA), then converted, augmented and normalised on the
    device. Preparing a batch never waits for the device: the random draws come from a CPU
    generator (whose state a checkpoint saves) and reach the device as pinned, non-blocking
    copies, and no device operation here reads a result back to the host.

    `drop_last` leaves out the last, incomplete batch whenever there is a full one (training
    does: every step then has the same shape, so cuDNN's autotuning and torch.compile see one
    input shape, and BatchNorm never trains on a remainder of one image).
    """

    def __init__(
        self,
        images: ImageSet,
        *,
        batch_size: int,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        augment: Augment = Augment(),
        channels_last: bool = False,
        seed: int = 0,
        prefetch: bool = True,
        drop_last: bool = False,
    ) -> None:
        self.images = images
        self.prefetch = prefetch
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator().manual_seed(seed)
        # (x / 255 - mean) / std as one multiply-add on the 0..255 values
        std_, mean_ = torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
        self.scale = self._to_device(std_.mul(255.0).view(1, 3, 1, 1).reciprocal())
        self.bias = self._to_device(mean_.div(std_).neg().view(1, 3, 1, 1))

    def __len__(self) -> int:
        if self.drop_last and len(self.images) >= self.batch_size:
            return len(self.images) // self.batch_size
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.images.index
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator).numpy()]
        starts = range(0, len(order), self.batch_size)[: len(self)]
        if not self.prefetch or len(starts) < 2:
            for start in starts:
                yield self._batch(order[start : start + self.batch_size])
            return
        # One batch ahead on a helper thread (torch and numpy copies release the GIL): the gather
        # and preparation of batch k+1 overlap step k instead of adding to it. The helper makes
        # the random draws in batch order, so augmentation stays reproducible.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches") as pool:
            pending = pool.submit(self._batch, order[: self.batch_size])
            for start in starts[1:]:
                ready = pending.result()
                pending = pool.submit(self._batch, order[start : start + self.batch_size])
                yield ready
            yield pending.result()

    def _batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.sort(rows)  # sequential reads from the memory-mapped cache
        y = torch.from_numpy(self.images.labels[rows])
        if self.device.type == "cuda":  # gathered straight into pinned memory: one host copy, an asynchronous transfer
            x = torch.empty((len(rows), *self.images.images.shape[1:]), dtype=torch.uint8, pin_memory=True)
            np.take(self.images.images, rows, axis=0, out=x.numpy())
        else:
            x = torch.from_numpy(self.images.images[rows])
        return self._prepare(x.to(self.device, non_blocking=True)), self._to_device(y)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A small host tensor on the device without waiting for it: copying pageable memory to
        CUDA is a blocking copy that first waits for the work queued on the stream (the step
        running on the GPU); from pinned memory it is queued like a kernel."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> augmented, normalised float NCHW. Crops and flips move uint8 (a quarter
        of the bytes of float); conversion and normalisation are then two passes."""
        n = x.shape[0]
        pad = self.augment.crop_padding
        offsets = torch.randint(2 * pad + 1, (2, n), generator=self.generator) if pad else None
        cases = self._flip_cases(n)
        if offsets is not None:
            x = self._crop_and_flip(x, pad, offsets, cases)
        elif cases is not None:
            x = self._flip(x, cases)
        x = x.permute(0, 3, 1, 2).float()  # keeps the NHWC layout: channels_last, no transpose
        x = torch.addcmul(self.bias, x, self.scale, out=x)
        return x.contiguous(memory_format=self.memory_format)

    def _flip_cases(self, n: int) -> torch.Tensor | None:
        """Per image, on the host: bit 0 flips it left-right, bit 1 up-down, each with
        probability 1/2 where the augmentation allows it; None when it allows neither."""
        allowed = (1 if self.augment.hflip else 0) | (2 if self.augment.vflip else 0)
        if not allowed:
            return None
        return torch.randint(4, (n,), generator=self.generator) & allowed

    def _flip(self, x: torch.Tensor, cases: torch.Tensor) -> torch.Tensor:
        """Flip each image as its case says. The images of each case are found on the host (no
        device sync), so an image moves at most once and untouched images are not copied. `x`
        is this batch's own buffer (never the cache), so it is flipped in place."""
        groups = [(cases == code).nonzero().squeeze(1) for code in (1, 2, 3)]
        chosen = self._to_device(torch.cat(groups))  # one copy for the three cases
        start = 0
        for dims, group in zip(((2,), (1,), (1, 2)), groups):
            if len(group):
                rows = chosen[start : start + len(group)]
                x[rows] = x[rows].flip(dims)
            start += len(group)
        return x

    def _crop_and_flip(self, x: torch.Tensor, pad: int, offsets: torch.Tensor, cases: torch.Tensor | None) -> torch.Tensor:
        """One gather for the whole batch (NHWC): each image padded with black by `pad`, cut back
        at its own offset (`offsets`: 2 x n, top and left) and flipped as its case says."""
        n, h, w, c = x.shape
        if cases is None:
            cases = torch.zeros(n, dtype=torch.long)
        top, left, cases = self._to_device(torch.cat([offsets, cases.view(1, n)])).unbind(0)
        padded = F.pad(x, (0, 0, pad, pad, pad, pad))
        tall, wide = h + 2 * pad, w + 2 * pad
        r, k = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        rows = top.view(n, 1) + torch.where((cases & 2).bool().view(n, 1), h - 1 - r, r)
        cols = left.view(n, 1) + torch.where((cases & 1).bool().view(n, 1), w - 1 - k, k)
        pixel = (torch.arange(n, device=x.device).view(n, 1, 1) * tall + rows.view(n, h, 1)) * wide + cols.view(n, 1, w)
        return padded.view(n * tall * wide, c).index_select(0, pixel.view(-1)).view(n, h, w, c)
