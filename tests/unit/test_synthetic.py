"""The embedded fundus generator (`objectives.synthetic`): the DR grade mix, eye pairs of one
grade per patient, determinism, and folders written once and never reused across generators."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from objectives import synthetic
from objectives.data import ImageTable, ensure_embedded, find_dataset


def test_grade_counts_follow_the_dr_mix():
    assert synthetic.grade_counts(1000) == [730, 70, 150, 25, 25]
    for total in (5, 37, 200, 801):
        counts = synthetic.grade_counts(total)
        assert sum(counts) == total and min(counts) >= 1


EYE = re.compile(r"^(.+)_(left|right)$")


def _patients(split: ImageTable) -> dict[str, dict[str, int]]:
    """{patient: {eye: grade}} of a split, as the loader reads it."""
    patients: dict[str, dict[str, int]] = {}
    for path, label in zip(split.paths, split.labels.tolist()):
        match = EYE.match(Path(path).stem)
        assert match, path
        patients.setdefault(match[1], {})[match[2]] = label
    return patients


def test_generate_writes_eye_pairs_one_grade_per_patient_in_the_dr_mix(tmp_path: Path):
    files = find_dataset(synthetic.generate(tmp_path / "d", 41, 20, size=32, seed=3), num_classes=5)
    train, test = _patients(files.train), _patients(files.test)
    assert len(files.train.paths) == 41 and len(files.test.paths) == 20
    assert len(train) == 21 and len(test) == 10  # ceil(images / 2) patients
    assert not set(train) & set(test)  # no patient on both sides
    assert [p for p, eyes in train.items() if set(eyes) != {"left", "right"}] == ["train_00020"]  # odd: the last
    assert set(train["train_00020"]) == {"left"}  # has a left eye only
    assert all(set(eyes) == {"left", "right"} for eyes in test.values())
    for patients in (train, test):
        assert all(len(set(eyes.values())) == 1 for eyes in patients.values())  # one grade per patient
        grades = [next(iter(eyes.values())) for eyes in patients.values()]
        assert np.bincount(grades, minlength=5).tolist() == synthetic.grade_counts(len(patients))
    rows = [Path(p).stem for p in files.test.paths]
    assert rows != sorted(rows)  # rows shuffled
    assert any(EYE.match(a)[1] != EYE.match(b)[1] for a, b in zip(rows[::2], rows[1::2]))  # not pair by pair


def test_a_patients_eyes_are_mirrored_and_more_alike_than_other_patients_of_the_grade(tmp_path: Path):
    """The left eye against the mirrored right eye (mean absolute pixel difference at 64 px): a
    patient's own pair is closer than pairs of different patients of the same grade (No DR, the
    grade with most patients) yet never a copy, and the optic disc (the brightest spot) lies nasal, i.e. left of
    centre in a left eye and right of it in a right eye."""
    root = synthetic.generate(tmp_path / "d", 40, 2, size=64, seed=0)
    patients = [p for p, eyes in _patients(find_dataset(root, num_classes=5).train).items() if eyes["left"] == 0]
    assert len(patients) >= 10

    def pixels(name: str) -> np.ndarray:
        return np.asarray(Image.open(root / f"{name}.jpeg"), dtype=np.float32) / 255

    left = {p: pixels(f"{p}_left") for p in patients}
    right = {p: pixels(f"{p}_right") for p in patients}
    mirrored = {p: image[:, ::-1] for p, image in right.items()}
    pairs = [float(np.abs(left[p] - mirrored[p]).mean()) for p in patients]
    other = np.mean([np.abs(left[p] - mirrored[q]).mean() for p in patients for q in patients if p != q])
    assert np.mean(pairs) < 0.9 * other, (pairs, other)
    assert min(pairs) > 0.02, pairs  # alike, but each eye its own photograph, not a mirrored copy
    for image, nasal in [(left[p], slice(0, 32)) for p in patients] + [(right[p], slice(32, 64)) for p in patients]:
        brightness = np.asarray(Image.fromarray(np.uint8(image.mean(axis=2) * 255)).filter(ImageFilter.GaussianBlur(2)))
        column = int(np.unravel_index(np.argmax(brightness), brightness.shape)[1])
        assert column in range(64)[nasal]


def test_generate_is_deterministic_and_writes_once(tmp_path: Path):
    a = synthetic.generate(tmp_path / "a", 40, 10, size=64, seed=5)
    b = synthetic.generate(tmp_path / "b", 40, 10, size=64, seed=5)
    assert find_dataset(a, num_classes=5).layout == "dr_lab"
    written = sorted(p.name for p in a.iterdir())
    assert written == sorted(p.name for p in b.iterdir()) and len(written) == 50 + 4 + 1  # images, CSVs, marker
    for name in written:  # every file, byte for byte, whichever thread wrote which image first
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    stamp = (a / "train_00003_left.jpeg").stat().st_mtime_ns
    assert synthetic.generate(tmp_path / "a", 40, 10, size=64, seed=5) == a
    assert (a / "train_00003_left.jpeg").stat().st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(FileExistsError):
        synthetic.generate(tmp_path / "a", 41, 10, size=64, seed=5)
    other = synthetic.generate(tmp_path / "c", 40, 10, size=64, seed=6)
    assert (other / "train_00003_left.jpeg").read_bytes() != (a / "train_00003_left.jpeg").read_bytes()


def test_a_folder_of_the_unpaired_generator_is_never_reused(tmp_path: Path):
    """The embedded folder has a new name, so the old one stays as it is; and a folder whose
    marker records the old generator (no eye-pair layout) is refused, not taken for pairs."""
    old = tmp_path / "data" / "synthetic-fundus-4-2-seed0"
    old.mkdir(parents=True)
    marker = {"dataset": "synthetic-fundus", "seed": 0, "size": 256, "test_images": 2, "train_images": 4, "version": 1}
    (old / "COMPLETE").write_text(json.dumps(marker, sort_keys=True) + "\n")
    (old / "train_00000.jpeg").write_bytes(b"old")
    root = ensure_embedded("synthetic-fundus", tmp_path / "data", train_images=4, test_images=2)
    assert root.name == "synthetic-fundus-pairs-4-2-seed0"
    assert len(list(root.glob("*_left.jpeg"))) == 3
    assert sorted(p.name for p in old.iterdir()) == ["COMPLETE", "train_00000.jpeg"]  # untouched
    with pytest.raises(FileExistsError, match="not a complete|generated with"):
        synthetic.generate(old, 4, 2, seed=0)
    assert (old / "train_00000.jpeg").read_bytes() == b"old"
