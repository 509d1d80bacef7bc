"""Which image goes to train, validation or test: grouped, stratified, seeded splits and their manifest.

Kaggle's DR images are named ``<patient>_left`` / ``<patient>_right``; a patient's two eyes usually
share a grade and look alike, so a split drawn per image puts one patient on both sides and
rewards memorising patients. Splits are therefore drawn per **group** (`group_by`: a regex whose
first capture group is the group id; ``"auto"`` groups ``<patient>_left|right`` names when every
name has that form, ``"none"`` never groups), stratified on each group's label (the largest, i.e.
the worse eye's grade). Without groups every image is its own group, which is the plain stratified
split.

The held-out test split (for layouts without test labels) uses its own fixed seed, so changing the
validation seed never changes the test set. `load_splits` decodes a dataset's tables (through the
cache of `objectives.data.decode`) and carves validation out of train. `Manifest` is the record of
every decision, written by the runner as ``split.csv`` so a reader can check any of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from objectives.data.decode import cached_channel_stats, combine_contents, decode_table_hashed, triple
from objectives.data.types import AUTO, NO_GROUPS, DatasetFiles, ImageSet, ImageTable, Manifest, Splits
from objectives.errors import InputError
from objectives.progress import SILENT, Bar

AUTO_PATTERN = re.compile(r"^(.+)_(left|right)$")
TEST_SPLIT_SEED = 0  # the held-out test split never moves with the study's split_seed


def group_ids(names: Sequence[str], group_by: str) -> np.ndarray | None:
    """The group id of every image name, or None when the data is not grouped.

    ``"auto"`` groups only when every name is ``<id>_left`` / ``<id>_right`` (a partly paired
    folder is more likely a coincidence than a convention); a user's regex must compile, have a
    capture group and match every name, else the InputError names an example.
    """
    if group_by == NO_GROUPS or not names:
        return None
    if group_by == AUTO:
        ids = [m.group(1) for m in (AUTO_PATTERN.match(n) for n in names) if m is not None]
        return np.asarray(ids, dtype=object) if len(ids) == len(names) else None
    try:
        pattern = re.compile(group_by)
    except re.error as exc:
        raise InputError(f"group_by {group_by!r}: not a regular expression ({exc})") from None
    if pattern.groups < 1:
        raise InputError(f"group_by {group_by!r}: needs a capture group for the group id, e.g. '^(.+)_(left|right)$'")
    found = [pattern.search(n) for n in names]
    misses = [n for n, m in zip(names, found) if m is None]
    if len(misses) == len(names):
        raise InputError(f"group_by {group_by!r} matches none of the {len(names)} image names, e.g. {names[0]!r}")
    if misses:
        raise InputError(f"group_by {group_by!r} matches only {len(names) - len(misses)} of {len(names)} image names; "
                         f"e.g. {misses[0]!r} does not match")
    return np.asarray([m.group(1) for m in found if m is not None], dtype=object)  # no misses left


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted indices; each class gives round(fraction * n) members, at least one
    where it has two or more, so the 2.5 % grades of DR appear on both sides."""
    rng = np.random.default_rng(seed)
    kept, held = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_held = int(round(fraction * len(members)))
        if len(members) >= 2:
            n_held = min(max(n_held, 1), len(members) - 1)
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def grouped_split(labels: np.ndarray, groups: np.ndarray | None, fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted image indices with every group wholly on one side, stratified on
    the group's label (its largest: the worse eye's grade). Without groups, `stratified_split`."""
    if groups is None:
        return stratified_split(labels, fraction, seed)
    unique, member_of = np.unique(groups.astype(str), return_inverse=True)
    group_label = np.full(len(unique), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(group_label, member_of, labels.astype(np.int64))
    _, held_groups = stratified_split(group_label, fraction, seed)
    held = np.isin(member_of, held_groups)
    return np.flatnonzero(~held), np.flatnonzero(held)


def load_splits(
    files: DatasetFiles,
    *,
    image_size: int,
    val_fraction: float,
    split_seed: int,
    cache_dir: Path | None,
    bar: Bar = SILENT,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Splits:
    """Decode (or read from cache) both tables and carve a validation split from train, by group
    where the data has groups (`grouped_split`), seeded by `split_seed`.

    Normalisation uses `mean` / `std` where given (a study that fixes the constants of its source
    lab, or a pretrained model's own), else the channel statistics of the training rows.
    """
    train_images, train_content = decode_table_hashed(files.train, image_size, cache_dir=cache_dir, bar=bar)
    test_images, test_content = decode_table_hashed(files.test, image_size, cache_dir=cache_dir, bar=bar)
    train_idx, val_idx = grouped_split(files.train.labels, files.train.groups, val_fraction, split_seed)
    train = ImageSet(train_images, files.train.labels, train_idx)
    if mean is None or std is None:
        mean, std = cached_channel_stats(train)
    return Splits(
        train=train,
        val=ImageSet(train_images, files.train.labels, val_idx),
        test=ImageSet(test_images, files.test.labels, np.arange(len(files.test.labels))),
        mean=triple(mean),
        std=triple(std),
        class_names=files.class_names,
        manifest=split_manifest(files, val_idx),
        content_hash=combine_contents([train_content, test_content]),
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
