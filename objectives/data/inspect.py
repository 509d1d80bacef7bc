"""Data inspection (`study data inspect DIR`): what a dataset folder holds and what is wrong with it, before a run.

A long run on a folder with a corrupt file stops at the decode; one with test images copied into
train reports a test figure that means nothing; one where 73 % of the images are one class makes
accuracy meaningless. So this reads every image once (content hash, size, pixels) and reports the
layout, the images per split and class with their share, the image sizes seen, the channel
statistics of train, and every problem, each marked whether it would stop a run. It goes through
the same layout readers and checks as a run (`objectives.data.layouts`), so it finds what a run
would. `inspect_dataset` returns the `Inspection`; `render` gives the lines the CLI prints.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from objectives.data.decode import channel_stats, for_each, moments, open_rgb
from objectives.data.layouts import LAYOUTS, read_dataset, table_problems
from objectives.data.types import AUTO, DatasetFiles, ImageSet, ImageTable, Problem
from objectives.errors import InputError
from objectives.progress import BarFactory, no_bar

STATS_DRAFT = 256  # JPEGs are decoded at a reduced scale (>= 256 px): the same checks and means, far faster
EXAMPLES = 5  # names shown per problem


@dataclass(frozen=True)
class ImageFacts:
    """What one read of one image gives: a content hash, and (if it decodes) size and pixel sums."""

    digest: str
    size: tuple[int, int] | None = None
    sums: np.ndarray | None = None
    squares: np.ndarray | None = None
    pixels: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Inspection:
    """What `inspect_dataset` found: the dataset's tables, one read of every image, train's channel
    statistics and every problem."""

    files: DatasetFiles
    facts: dict[str, list[ImageFacts | None]]  # per split, per image; None where the file is missing
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    problems: list[Problem]

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]


def inspect_dataset(root: Path, *, layout: str | None = None, group_by: str = AUTO,
                    bar: BarFactory = no_bar) -> Inspection:
    """Read `root` in its layout, every image once, and collect every problem."""
    files = read_dataset(root, layout=layout, group_by=group_by)
    problems = table_problems(files)
    shared = files.shared_test_groups()
    if shared:
        problems.append(Problem("shared_groups", f"{files.root}: {len(shared)} group(s) in both train and test "
                                                 f"(the test figure would be optimistic): {', '.join(shared)}",
                                fatal=False))
    facts = {split: _table_facts(table, split, bar) for split, table in files.tables()}
    for split, table in files.tables():
        broken = [(table.name(i), f.error) for i, f in enumerate(facts[split]) if f is not None and f.error]
        if broken:
            shown = "; ".join(f"{name} ({error})" for name, error in broken[:EXAMPLES])
            problems.append(Problem("unreadable", f"{files.root}: {len(broken)} {split} image(s) unreadable: {shown}"))
    problems += _duplicates(files, facts)
    if files.train.pixels is not None:
        mean, std = channel_stats(ImageSet(files.train.pixels, files.train.labels, np.arange(len(files.train))))
    else:
        readable = [(f.sums, f.squares, f.pixels) for f in facts["train"]  # a decoded image has both sums
                    if f is not None and f.sums is not None and f.squares is not None]
        mean, std = moments(sum((sums for sums, _, _ in readable), np.zeros(3)),
                            sum((squares for _, squares, _ in readable), np.zeros(3)),
                            sum(pixels for _, _, pixels in readable))
    return Inspection(files, facts, mean, std, problems)


def _table_facts(table: ImageTable, split: str, bar: BarFactory) -> list[ImageFacts | None]:
    if table.pixels is not None:  # an array dataset (CIFAR): nothing can be missing or unreadable
        h, w = table.pixels.shape[1:3]
        return [ImageFacts(hashlib.sha256(row.tobytes()).hexdigest(), (w, h)) for row in table.pixels]
    found: list[ImageFacts | None] = [None] * len(table)

    def one(i: int) -> None:
        found[i] = read_facts(table.paths[i], stats=split == "train")

    with bar(len(table), f"inspect {len(table)} {split} images") as progress:
        for_each(len(table), one, progress)
    return found


def read_facts(path: Path, *, stats: bool) -> ImageFacts | None:
    """One read of `path`: hash of its bytes, then size and (for `stats`) pixel sums from the same
    bytes; None when the file is missing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return ImageFacts("", error=f"{exc.__class__.__name__}: {exc}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        img, size = open_rgb(io.BytesIO(data), path, draft=STATS_DRAFT)  # a reduced decode still reads every byte
    except InputError as exc:
        return ImageFacts(digest, error=str(exc).split(": ", 1)[-1])
    if not stats:
        return ImageFacts(digest, size)
    pixels = np.asarray(img, dtype=np.float64).reshape(-1, 3) / 255.0
    return ImageFacts(digest, size, pixels.sum(axis=0), np.square(pixels).sum(axis=0), len(pixels))


def _duplicates(files: DatasetFiles, facts: dict[str, list[ImageFacts | None]]) -> list[Problem]:
    """Test images whose bytes (or pixels) equal a train image's: a leak, not a stop."""
    train: dict[str, int] = {}
    for i, f in enumerate(facts["train"]):
        if f is not None and f.digest:
            train.setdefault(f.digest, i)
    pairs = [(files.train.name(train[f.digest]), files.test.name(i)) for i, f in enumerate(facts["test"])
             if f is not None and f.digest in train]
    if not pairs:
        return []
    shown = ", ".join(f"train {a} = test {b}" for a, b in pairs[:EXAMPLES])
    return [Problem("duplicate", f"{files.root}: {len(pairs)} test image(s) identical to a train image "
                                 f"(the test figure would be optimistic): {shown}", fatal=False)]


def render(result: Inspection) -> list[str]:
    """The report, line by line."""
    files = result.files
    names = files.class_names
    lines = [f"data: {files.root}", f"layout: {files.layout} ({LAYOUTS[files.layout].description})"]
    if files.test_held_out:
        lines.append(f"test split: none in the data; a stratified {files.test_held_out:.0%} of train is held out "
                     "(seeded)")
    if files.train.groups is None:
        lines.append(f"groups: none (group_by {files.group_by!r}): splits are drawn per image")
    else:
        counts = [len(set(t.groups.astype(str).tolist())) for _, t in files.tables() if t.groups is not None]
        lines.append(f"groups: {' / '.join(map(str, counts))} in train / test (group_by {files.group_by!r}): "
                     "splits keep each group on one side")
    lines.append(f"classes: {len(names)}")
    width = max([len("(out of range)"), *(len(n) for n in names)])
    lines.append(f"{'split':<6} {'class':<{width}} {'images':>7} {'share':>7}")
    for split, table in files.tables():
        valid = (table.labels >= 0) & (table.labels < len(names))
        per_class = np.bincount(table.labels[valid], minlength=len(names))
        total = max(len(table), 1)
        rows = [(name, int(n)) for name, n in zip(names, per_class)]
        if (~valid).any():
            rows.append(("(out of range)", int((~valid).sum())))
        for name, n in rows:
            lines.append(f"{split:<6} {name:<{width}} {n:>7} {n / total:>7.1%}")
        lines.append(f"{split:<6} {'all':<{width}} {len(table):>7}")
    sizes = [f.size for table_facts in result.facts.values() for f in table_facts if f is not None and f.size]
    if sizes:
        ordered = sorted(sizes, key=lambda s: (s[0] * s[1], s))
        low, mid, high = (f"{w}x{h}" for w, h in (ordered[0], ordered[len(ordered) // 2], ordered[-1]))
        lines.append(f"image sizes (W x H, by pixel count): min {low}, median {mid}, max {high} "
                     f"({len(sizes)} images read)")
    lines.append(f"train channel mean (R G B, 0..1): {_triple(result.mean)}; std: {_triple(result.std)}")
    if not result.problems:
        lines.append("problems: none")
    else:
        lines.append(f"problems: {len(result.problems)} ({len(result.fatal)} would stop a run)")
        lines += [f"  [{'stops a run' if p.fatal else 'warning'}] {p.message}" for p in result.problems]
    return lines


def _triple(values: Sequence[float]) -> str:
    return " ".join(f"{v:.4f}" for v in values)
