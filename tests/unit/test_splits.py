"""Grouped splits: a patient's two eyes never straddle train, validation and test; the test split
never moves with the validation seed; every decision is in the manifest."""

from pathlib import Path

import numpy as np
import pytest

from objectives.data import find_dataset, load_splits
from objectives.data.inspect import inspect_dataset
from objectives.data.splits import group_ids, grouped_split
from objectives.errors import InputError
from objectives.progress import no_bar

from conftest import class_image, write_cifar, write_dr_lab

GRADE_MIX = [0.73, 0.07, 0.15, 0.025, 0.025]


def write_kaggle_pairs(root: Path, patients: int = 300, seed: int = 0, size: int = 12) -> Path:
    """Kaggle's layout with `<patient>_left` / `<patient>_right` eyes; the eyes of one patient
    mostly share a grade (one in ten differs by one grade), as in the real data."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    rows = ["image,level"]
    grades = rng.choice(5, size=patients, p=GRADE_MIX)
    for patient, grade in enumerate(grades.tolist()):
        other = max(grade - 1, 0) if rng.random() < 0.1 else grade
        for eye, label in (("left", grade), ("right", other)):
            name = f"{patient + 10}_{eye}"
            class_image(label, size, rng).save(root / "train" / f"{name}.jpeg")
            rows.append(f"{name},{label}")
    (root / "trainLabels.csv").write_text("\n".join(rows) + "\n")
    return root


def shares(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=5) / max(len(labels), 1)


@pytest.fixture(scope="module")
def kaggle_pairs(tmp_path_factory) -> Path:
    return write_kaggle_pairs(tmp_path_factory.mktemp("kaggle") / "dr")


def test_auto_grouping_and_regex_errors_name_an_example():
    assert group_ids(["10_left", "10_right", "7_left"], "auto").tolist() == ["10", "10", "7"]
    assert group_ids(["10_left", "10_right", "7"], "auto") is None  # not every name: no convention
    assert group_ids(["10_left", "10_right"], "none") is None
    assert group_ids(["p1-a", "p1-b", "p2-a"], r"^(p\d+)-").tolist() == ["p1", "p1", "p2"]
    with pytest.raises(InputError, match=r"group_by '\(\[': not a regular expression"):
        group_ids(["a"], "([")
    with pytest.raises(InputError, match="needs a capture group"):
        group_ids(["a_left"], "_left$")
    with pytest.raises(InputError, match=r"matches none of the 2 image names, e.g. 'a_left'"):
        group_ids(["a_left", "b_left"], r"^(x)")
    with pytest.raises(InputError, match=r"matches only 1 of 2 image names; e.g. 'b' does not match"):
        group_ids(["a_left", "b"], r"^(.+)_left$")


def test_grouped_split_keeps_groups_whole_and_stratifies_on_the_worse_grade():
    labels = np.array([0, 0, 2, 0, 1, 1, 0, 0, 3, 3, 0, 0])
    groups = np.array(["a", "a", "b", "b", "c", "c", "d", "d", "e", "e", "f", "f"], dtype=object)
    kept, held = grouped_split(labels, groups, 0.34, seed=1)
    assert not set(groups[kept]) & set(groups[held])
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(12))
    # group b's label is its worse eye (2): with one such group it cannot be on both sides, and
    # grades with 2+ groups (0: a, d, f) put at least one group on each side
    assert {"a", "d", "f"} & set(groups[held]) and {"a", "d", "f"} & set(groups[kept])


def test_kaggle_pairs_never_share_a_patient_between_splits_and_keep_class_shares(kaggle_pairs: Path):
    files = find_dataset(kaggle_pairs, num_classes=5)
    assert files.train.groups is not None and files.test_held_out == 0.2
    splits = load_splits(files, image_size=12, val_fraction=0.2, split_seed=3, cache_dir=None)
    manifest = splits.manifest
    assert manifest is not None
    by_split: dict[str, set[str]] = {}
    for split, group in zip(manifest.split, manifest.group):
        by_split.setdefault(split, set()).add(group)
    assert set(by_split) == {"train", "val", "test"}
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    labels = np.asarray(manifest.label)
    split = np.asarray(manifest.split)
    groups_per_class = np.bincount([max(g) for g in _group_labels(manifest).values()], minlength=5)
    train_share = shares(labels[split == "train"])
    for other in ("val", "test"):
        for cls in np.flatnonzero(groups_per_class >= 10):
            assert abs(shares(labels[split == other])[cls] - train_share[cls]) <= 0.05, (other, cls)


def _group_labels(manifest) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for group, label in zip(manifest.group, manifest.label):
        found.setdefault(group, []).append(label)
    return found


def test_the_test_split_does_not_move_with_the_validation_seed(kaggle_pairs: Path):
    files = find_dataset(kaggle_pairs, num_classes=5)
    a = load_splits(files, image_size=12, val_fraction=0.2, split_seed=0, cache_dir=None).manifest
    b = load_splits(
        find_dataset(kaggle_pairs, num_classes=5), image_size=12, val_fraction=0.2, split_seed=1, cache_dir=None
    ).manifest
    test_a = [i for i, s in zip(a.image, a.split) if s == "test"]
    test_b = [i for i, s in zip(b.image, b.split) if s == "test"]
    assert test_a == test_b
    assert [i for i, s in zip(a.image, a.split) if s == "val"] != [i for i, s in zip(b.image, b.split) if s == "val"]
    assert a.digest() != b.digest()


def test_manifest_names_files_relative_to_the_data_folder_and_cifar_rows(kaggle_pairs: Path, tmp_path: Path):
    splits = load_splits(
        find_dataset(kaggle_pairs, num_classes=5), image_size=12, val_fraction=0.2, split_seed=0, cache_dir=None
    )
    text = splits.manifest.csv_text().splitlines()
    assert text[0] == "image,split,group,label"
    first = text[1].split(",")
    assert (
        first[0].startswith("train/")
        and first[0].endswith(".jpeg")
        and first[2] == first[0][len("train/") :].split("_")[0]
    )
    assert len(text) == 1 + 600
    cifar = find_dataset(write_cifar(tmp_path))
    manifest = load_splits(cifar, image_size=32, val_fraction=0.1, split_seed=0, cache_dir=None).manifest
    assert manifest.image[0] == "data_batch_1#0" and manifest.image[-1] == "test_batch#19"
    assert set(manifest.group) == {""}  # CIFAR rows have no groups
    counts = manifest.counts()
    assert counts["train"] + counts["val"] == 100 and 9 <= counts["val"] <= 12 and counts["test"] == 20


def test_dr_lab_test_csvs_that_share_patients_are_counted_and_listed(tmp_path: Path):
    root = write_dr_lab(tmp_path / "dr", [0, 1, 0, 2] * 5, [0, 1, 2, 0])
    # rename to eye pairs: train patients p0..p9, test patients p8, p9 (shared), p20, p21
    def rename(split: str, names: list[str]) -> None:
        old = (root / f"{split}_img.csv").read_text().splitlines()[1:]
        for before, after in zip(old, names):
            (root / f"{before}.jpeg").rename(root / f"{after}.jpeg")
        (root / f"{split}_img.csv").write_text("image\n" + "".join(f"{n}\n" for n in names))
    rename("train", [f"p{i // 2}_{'left' if i % 2 == 0 else 'right'}" for i in range(20)])
    rename("test", ["p8_left", "p9_right", "p20_left", "p21_left"])
    files = find_dataset(root, num_classes=5)
    assert files.shared_test_groups() == ["p8", "p9"]
    splits = load_splits(files, image_size=16, val_fraction=0.2, split_seed=0, cache_dir=None)
    assert splits.manifest.shared_test_groups == ("p8", "p9")
    inspection = inspect_dataset(root, bar=no_bar)
    shared = [p for p in inspection.problems if p.kind == "shared_groups"]
    assert len(shared) == 1 and not shared[0].fatal and "2 group(s) in both train and test" in shared[0].message
    assert "p8, p9" in shared[0].message
    none = inspect_dataset(root, group_by="none", bar=no_bar)
    assert not [p for p in none.problems if p.kind == "shared_groups"]
