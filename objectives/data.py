"""Datasets: the layouts a user brings, the decode-once image cache, splits and device batches.

Images are decoded and resized a single time into a uint8 array cached under ``results/cache/``
(keyed by the files' names, sizes and mtimes and by the image size), which every trial and every
worker then reads. Conversion to float, normalisation and random flips happen per batch on the
training device, so an epoch costs what the model costs, not what JPEG decoding costs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from objectives.errors import InputError

DR_CLASS_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")
DR_LAB_FILES = ("train_img.csv", "train_label.csv", "test_img.csv", "test_label.csv")
KAGGLE_LABELS = "trainLabels.csv"
CACHE_VERSION = 1  # bump when the decode (resize/crop) changes, so old caches are not reused
Progress = Callable[[int], None]


@dataclass(frozen=True)
class ImageTable:
    """Image files and their integer labels, in a fixed order."""

    paths: tuple[Path, ...]
    labels: np.ndarray


@dataclass(frozen=True)
class DatasetFiles:
    """A dataset found on disk: its layout name, train and test tables and class names."""

    layout: str
    root: Path
    train: ImageTable
    test: ImageTable
    class_names: tuple[str, ...]


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
    """Train / validation (carved from train) / test sets plus the train channel statistics."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------- layouts


def find_dataset(root: Path, *, num_classes: int, test_fraction: float = 0.2, seed: int = 0) -> DatasetFiles:
    """Detect the layout of `root` and read its tables, checking every file and label."""
    if not root.is_dir():
        raise InputError(f"--data {root}: no such directory")
    if any((root / name).exists() for name in DR_LAB_FILES):
        files = _read_dr_lab(root)
    elif (root / KAGGLE_LABELS).is_file():
        files = _read_kaggle(root, test_fraction=test_fraction, seed=seed)
    else:
        raise InputError(
            f"--data {root}: no known layout (expected {', '.join(DR_LAB_FILES)} "
            f"or {KAGGLE_LABELS} with train/<image>.jpeg)"
        )
    for split, table in (("train", files.train), ("test", files.test)):
        _check_table(files.root, split, table, num_classes)
    return files


def _read_dr_lab(root: Path) -> DatasetFiles:
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
        paths = tuple(root / f"{name}.jpeg" for name in names)
        tables.append(ImageTable(paths, _parse_labels(labels, root / f"{split}_label.csv")))
    return DatasetFiles("dr_lab", root, tables[0], tables[1], DR_CLASS_NAMES)


def _read_kaggle(root: Path, *, test_fraction: float, seed: int) -> DatasetFiles:
    """Kaggle's ``trainLabels.csv`` (image,level) with ``train/<image>.jpeg``.

    Kaggle published no labels with its test images, so a stratified test split is held out of
    train (seeded, so every run of a study holds out the same images).
    """
    with open(root / KAGGLE_LABELS, newline="") as handle:
        rows = list(csv.reader(handle))
    header = [h.strip() for h in rows[0]] if rows else []
    if header[:2] != ["image", "level"]:
        raise InputError(f"{root / KAGGLE_LABELS}: expected header 'image,level', found {','.join(header)!r}")
    body = [r for r in rows[1:] if r]
    if not body:
        raise InputError(f"{root / KAGGLE_LABELS}: no rows")
    paths = np.array([root / "train" / f"{r[0].strip()}.jpeg" for r in body], dtype=object)
    labels = _parse_labels([r[1] if len(r) > 1 else "" for r in body], root / KAGGLE_LABELS)
    keep, held = stratified_split(labels, test_fraction, seed)
    return DatasetFiles(
        "kaggle",
        root,
        ImageTable(tuple(paths[keep]), labels[keep]),
        ImageTable(tuple(paths[held]), labels[held]),
        DR_CLASS_NAMES,
    )


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


def _check_table(root: Path, split: str, table: ImageTable, num_classes: int) -> None:
    bad = np.flatnonzero((table.labels < 0) | (table.labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{root}: {split} label {int(table.labels[i])} of {table.paths[i].name} is outside "
            f"0..{num_classes - 1} ({bad.size} such labels)"
        )
    missing = [p for p in table.paths if not p.is_file()]
    if missing:
        shown = ", ".join(p.name for p in missing[:3])
        raise InputError(f"{root}: {len(missing)} {split} image(s) missing, e.g. {shown}")


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted indices; each class gives round(fraction * n) images, at least one
    where it has two or more, so the 2.5 % grades of DR appear on both sides."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_held = int(round(fraction * len(members)))
        if len(members) >= 2:
            n_held = min(max(n_held, 1), len(members) - 1)
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


# ---------------------------------------------------------------- decoding and its cache


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image as uint8 HWC RGB: shorter side resized to `size`, centre crop to a square.

    JPEG `draft` lets libjpeg decode at a reduced scale first (DCT scaling), which is most of the
    speed-up for 512 px from multi-megapixel fundus photographs.
    """
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))
            img = img.convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.crop((left, top, left + size, top + size))
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: unreadable or corrupt image ({exc.__class__.__name__}: {exc})") from None


def decode_all(paths: Sequence[Path], size: int, *, cache_dir: Path | None, progress: Progress | None = None) -> np.ndarray:
    """All `paths` decoded to an (N, size, size, 3) uint8 array, read from the cache when present.

    The cache file is written under a temporary name and renamed into place, so concurrent
    workers either see a complete file or none (and at worst both build it, identically).
    """
    if cache_dir is None:
        return _decode_into(np.empty((len(paths), size, size, 3), np.uint8), paths, size, progress)
    target = cache_dir / f"{content_key(paths, size)}.npy"
    if target.is_file():
        if progress:
            progress(len(paths))
        return np.load(target, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache_dir / f".{target.stem}.{os.getpid()}.npy"
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
    try:
        _decode_into(array, paths, size, progress)
        array.flush()
        del array
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return np.load(target, mmap_mode="r")


def content_key(paths: Sequence[Path], size: int) -> str:
    """A hash of the file names, sizes and mtimes and the decode size: a changed file, a new file
    or another size gives another cache."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{size}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return f"{digest.hexdigest()[:20]}-{len(paths)}x{size}px"


def _decode_into(out: np.ndarray, paths: Sequence[Path], size: int, progress: Progress | None) -> np.ndarray:
    def one(i: int) -> None:
        out[i] = decode_image(paths[i], size)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in pool.map(one, range(len(paths)), chunksize=1):
            if progress:
                progress(1)
    return out


# ---------------------------------------------------------------- splits


def load_splits(
    files: DatasetFiles,
    *,
    image_size: int,
    val_fraction: float,
    split_seed: int,
    cache_dir: Path | None,
    progress: Progress | None = None,
) -> Splits:
    """Decode (or read from cache) both tables and carve a stratified validation split from train."""
    train_images = decode_all(files.train.paths, image_size, cache_dir=cache_dir, progress=progress)
    test_images = decode_all(files.test.paths, image_size, cache_dir=cache_dir, progress=progress)
    train_idx, val_idx = stratified_split(files.train.labels, val_fraction, split_seed)
    train = ImageSet(train_images, files.train.labels, train_idx)
    mean, std = channel_stats(train)
    return Splits(
        train=train,
        val=ImageSet(train_images, files.train.labels, val_idx),
        test=ImageSet(test_images, files.test.labels, np.arange(len(files.test.labels))),
        mean=mean,
        std=std,
        class_names=files.class_names,
    )


def channel_stats(images: ImageSet, chunk: int = 256) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std (0..1 scale) over the training rows, in chunks to bound memory."""
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for start in range(0, len(images.index), chunk):
        block = images.images[images.index[start : start + chunk]].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        squares += np.square(block).sum(axis=(0, 1, 2))
        count += block.shape[0] * block.shape[1] * block.shape[2]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# ---------------------------------------------------------------- batches on the device


class DeviceBatches:
    """Batches of one ImageSet as normalised float NCHW tensors on `device`.

    uint8 rows are gathered on the host (from RAM or the memory-mapped cache), copied once per
    batch (pinned and asynchronous on CUDA), then converted, normalised and randomly flipped on
    the device; flips keep labels, since fundus images have no preferred orientation.
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
        flips: bool = False,
        channels_last: bool = False,
        seed: int = 0,
    ) -> None:
        self.images = images
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.flips = flips
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator().manual_seed(seed)
        self.scale = torch.tensor(std, device=device).mul(255.0).view(1, 3, 1, 1).reciprocal()
        self.shift = torch.tensor(mean, device=device).mul(255.0).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.images.index
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator).numpy()]
        pin = self.device.type == "cuda"
        for start in range(0, len(order), self.batch_size):
            rows = np.sort(order[start : start + self.batch_size])
            x = torch.from_numpy(np.ascontiguousarray(self.images.images[rows]))
            y = torch.from_numpy(self.images.labels[rows])
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            yield self._prepare(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float().sub_(self.shift).mul_(self.scale)
        if self.flips:
            n = x.shape[0]
            flip_h = torch.rand(n, generator=self.generator).lt(0.5).to(self.device).view(n, 1, 1, 1)
            flip_v = torch.rand(n, generator=self.generator).lt(0.5).to(self.device).view(n, 1, 1, 1)
            x = torch.where(flip_h, x.flip(3), x)
            x = torch.where(flip_v, x.flip(2), x)
        return x.contiguous(memory_format=self.memory_format)
