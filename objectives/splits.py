"""Which image goes to train, validation or test: grouped, stratified, seeded splits and their manifest.

Kaggle's DR images are named ``<patient>_left`` / ``<patient>_right``; a patient's two eyes usually
share a grade and look alike, so a split drawn per image puts one patient on both sides and
rewards memorising patients. Splits are therefore drawn per **group** (`group_by`: a regex whose
first capture group is the group id; ``"auto"`` groups ``<patient>_left|right`` names when every
name has that form, ``"none"`` never groups), stratified on each group's label (the largest, i.e.
the worse eye's grade). Without groups every image is its own group, which is the plain stratified
split.

The held-out test split (for layouts without test labels) uses its own fixed seed, so changing the
validation seed never changes the test set. `Manifest` is the record of every decision, written
by the runner as ``split.csv`` so a reader can check any of them.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from objectives.errors import InputError

AUTO = "auto"
NO_GROUPS = "none"
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
        found = [AUTO_PATTERN.match(n) for n in names]
        return np.asarray([m.group(1) for m in found], dtype=object) if all(found) else None
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
    return np.asarray([m.group(1) for m in found], dtype=object)


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


def grouped_split(labels: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def shared_groups(train: np.ndarray | None, test: np.ndarray | None) -> list[str]:
    """Group ids present in both tables (patients whose eyes sit on both sides), sorted."""
    if train is None or test is None:
        return []
    return sorted(set(train.astype(str).tolist()) & set(test.astype(str).tolist()))


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
