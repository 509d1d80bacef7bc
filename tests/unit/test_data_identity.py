"""The data a study ran on, by content (issue 19, point 8) and who is in it (point 6).

A study identifies its data by the split manifest (names, split, group, label) and by a hash of the
images' bytes, computed while they are first decoded and kept beside the decode cache: replaced
images under the same names are refused before anything is written; a copy of the folder (another
path, new mtimes, the same bytes) is the same data. `run` records counts per split and class
(`records.DataSummary`) and `report` writes them as data.{md,csv,tex}.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from objectives.data import find_dataset
from objectives.data.decode import content_file, decode_files, decode_table_hashed, pixels_content
from objectives.data.types import ImageTable
from objectives.errors import InputError
from study import cli, records
from study.report.build import _data_section
from study.run.options import RunOptions
from study.run.output import Output
from study.run.session import Session
from study.spaces.space_file import load_space

from conftest import class_image, storage_of
from support.data_identity import SPACE, TEST_PATIENTS_PER_GRADE, TRAIN_EYES, copy_folder, replace_image, write_grouped

TRAIN_EYES += [("13_left", 1), ("14_left", 2)]


def write_plain(root: Path, n_train: int = 30, n_test: int = 10, size: int = 24) -> Path:
    """The DR lab layout without groups: train_0000.jpeg ..., every grade present."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        names = [f"{split}_{i:04d}" for i in range(n)]
        labels = [i % 5 for i in range(n)]
        for name, label in zip(names, labels):
            class_image(label, size, rng).save(root / f"{name}.jpeg", quality=92)
        (root / f"{split}_img.csv").write_text("image\n" + "".join(f"{n}\n" for n in names))
        (root / f"{split}_label.csv").write_text("level\n" + "".join(f"{v}\n" for v in labels))
    return root


def replace_bytes_keeping_stat(path: Path) -> None:
    """Other bytes in `path`, its size and mtime kept (what `cp -p` of another image of the same size does)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the scan data
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


def options(tmp_path: Path, data: Path, **kw) -> RunOptions:
    space_path = tmp_path / "idspace.toml"
    if not space_path.exists():
        space_path.write_text(SPACE)
    return RunOptions(space=load_space(space_path), results_dir=tmp_path / "results", data=data, device="cpu", **kw)


def open_search_study(opts: RunOptions) -> tuple[Session, optuna.Study]:
    """What `run` does before its first trial: check, decode, adopt or create the study, accept."""
    session = Session.open(opts, Output(), check=lambda s: s.check_search_study(opts.allow_space_change))
    return session, session.search_study(opts.allow_space_change)


def delete_attrs(tmp_path: Path, *keys: str) -> None:
    """Remove study user attrs from the SQLite storage: a study as an older version recorded it."""
    with sqlite3.connect(tmp_path / "results" / "optuna.db") as db:
        for key in keys:
            db.execute("delete from study_user_attributes where key = ?", (key,))


# ---------------------------------------------------------------- the content hash (objectives)

def test_content_hash_ignores_paths_and_mtimes_and_sees_bytes(tmp_path: Path):
    data = write_plain(tmp_path / "a")
    files = find_dataset(data, num_classes=5)
    _, first = decode_files(files.train.paths, 16, cache_dir=tmp_path / "cache")
    copy = copy_folder(data, tmp_path / "b")
    copied = find_dataset(copy, num_classes=5)
    assert copied.train.paths[0].stat().st_mtime_ns != files.train.paths[0].stat().st_mtime_ns
    _, again = decode_files(copied.train.paths, 16, cache_dir=tmp_path / "cache")
    assert again == first  # another path, new mtimes, a fresh decode (another cache key): the same content
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    replace_image(copied.train.paths[3])
    _, changed = decode_files(copied.train.paths, 16, cache_dir=tmp_path / "cache")
    assert changed != first
    _, uncached = decode_files(copied.train.paths, 16, cache_dir=None)
    assert uncached == changed  # the cache only remembers the hash; it does not define it
    _, other_size = decode_files(files.train.paths, 24, cache_dir=tmp_path / "cache")
    assert other_size == first  # the bytes, not the decode size


def test_content_hash_is_read_from_the_cache_not_the_files(tmp_path: Path):
    """Timing-free evidence that a second load does not read the files again: bytes replaced with
    size and mtime kept are not seen through the cache (the README's `cp -p` caveat), while a
    decode without cache sees them at once."""
    data = write_plain(tmp_path / "a")
    paths = find_dataset(data, num_classes=5).train.paths
    cache = tmp_path / "cache"
    array, first = decode_files(paths, 16, cache_dir=cache)
    (target,) = cache.glob("*.npy")
    assert content_file(target).is_file()
    replace_bytes_keeping_stat(paths[5])
    again_array, again = decode_files(paths, 16, cache_dir=cache)
    assert again == first and np.array_equal(np.asarray(again_array), np.asarray(array))
    assert decode_files(paths, 16, cache_dir=None)[1] != first  # the bytes did change: only the cache hid it


def test_a_cache_from_before_content_hashes_gets_one_silently(tmp_path: Path, capfd):
    data = write_plain(tmp_path / "a")
    paths = find_dataset(data, num_classes=5).train.paths
    cache = tmp_path / "cache"
    _, first = decode_files(paths, 16, cache_dir=cache)
    (target,) = cache.glob("*.npy")
    content_file(target).unlink()  # an old cache: the array and its checksum only
    capfd.readouterr()
    _, again = decode_files(paths, 16, cache_dir=cache)
    assert again == first and content_file(target).is_file() and capfd.readouterr().err == ""
    content_file(target).write_text('{"content": "forged"}')  # no seal: damaged
    _, third = decode_files(paths, 16, cache_dir=cache)
    err = capfd.readouterr().err
    assert third == first and err.count("\n") == 1 and "is damaged" in err and "hashing" in err


def test_array_data_is_hashed_by_its_pixels():
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    table = ImageTable((), np.arange(6) % 2, tuple(f"b#{i}" for i in range(6)), pixels=pixels)
    array, content = decode_table_hashed(table, 8, cache_dir=None)
    assert array is pixels and content == pixels_content(pixels.copy())
    changed = pixels.copy()
    changed[2, 3, 4, 1] ^= 1
    assert pixels_content(changed) != content


# ---------------------------------------------------------------- the study checks it (session)

def test_replaced_images_with_the_same_names_are_refused_before_anything_is_written(tmp_path: Path, monkeypatch,
                                                                                   capsys):
    data = write_plain(tmp_path / "dr")
    monkeypatch.chdir(tmp_path)
    _, study = open_search_study(options(tmp_path, data))
    recorded = records.StudyRecord.from_study(study)
    assert recorded.content_hash is not None and recorded.split_hash is not None
    split_csv = tmp_path / "results" / "idspace" / "split.csv"
    before = split_csv.read_bytes()
    attrs = dict(study.user_attrs)
    replace_image(data / "train_0004.jpeg")
    capsys.readouterr()
    code = cli.main(["run", str(tmp_path / "idspace.toml"), "--data", str(data), "--results",
                     str(tmp_path / "results"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "other bytes under the same names" in err and "Traceback" not in err
    assert split_csv.read_bytes() == before
    again = optuna.load_study(study_name="idspace", storage=storage_of(tmp_path))
    assert dict(again.user_attrs) == attrs and not again.trials


def test_a_copied_folder_is_the_same_data(tmp_path: Path, monkeypatch, capsys):
    data = write_plain(tmp_path / "dr")
    monkeypatch.chdir(tmp_path)
    _, study = open_search_study(options(tmp_path, data))
    copy = copy_folder(data, tmp_path / "elsewhere" / "dr")
    capsys.readouterr()
    session, again = open_search_study(options(tmp_path, copy))
    assert again.study_name == study.study_name and capsys.readouterr().err == ""
    assert session.data.content_hash(session.prep.base_config()) == records.StudyRecord.from_study(study).content_hash


def test_an_old_study_without_content_hash_is_accepted_with_one_warning(tmp_path: Path, monkeypatch, capsys):
    data = write_plain(tmp_path / "dr")
    monkeypatch.chdir(tmp_path)
    open_search_study(options(tmp_path, data))
    delete_attrs(tmp_path, records.CONTENT_HASH, records.DATA_SUMMARY)
    capsys.readouterr()
    _, study = open_search_study(options(tmp_path, data))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recorded no hash of its images' bytes" in err and "unnoticed" in err
    assert records.StudyRecord.from_study(study).content_hash is None  # not recorded after the fact
    assert records.DataSummary.from_study(study) is not None  # the counts of the data just checked are


def test_allow_space_change_accepts_replaced_images(tmp_path: Path, monkeypatch):
    data = write_plain(tmp_path / "dr")
    monkeypatch.chdir(tmp_path)
    open_search_study(options(tmp_path, data))
    replace_image(data / "test_0002.jpeg")
    with pytest.raises(InputError, match="other bytes under the same names"):
        open_search_study(options(tmp_path, data))
    open_search_study(options(tmp_path, data, allow_space_change=True))


# ---------------------------------------------------------------- who is in the data

def expected_counts(manifest: pd.DataFrame, split: str) -> tuple[list[int], list[int]]:
    """Images and patients per class of `split`, computed from split.csv with pandas: a patient
    under the largest grade of its images in that split."""
    rows = manifest[manifest.split == split]
    images = [int((rows.label == c).sum()) for c in range(5)]
    worst = rows.groupby("group").label.max()
    return images, [int((worst == c).sum()) for c in range(5)]


def test_data_summary_counts_patients_per_class_and_shared_groups(tmp_path: Path, monkeypatch):
    data = write_grouped(tmp_path / "dr")
    monkeypatch.chdir(tmp_path)
    _, study = open_search_study(options(tmp_path, data))
    summary = records.DataSummary.from_study(study)
    assert summary is not None and summary.groups is not None and summary.split_seed == 0
    manifest = pd.read_csv(tmp_path / "results" / "idspace" / "split.csv", dtype={"group": str})
    for split in ("train", "val", "test"):
        images, patients = expected_counts(manifest, split)
        assert list(summary.images[split]) == images and list(summary.groups[split]) == patients
    assert list(summary.groups["test"]) == TEST_PATIENTS_PER_GRADE and sum(summary.images["test"]) == 12
    train_patients = set(manifest[manifest.split == "train"].group)
    assert summary.shared["train-test"] + summary.shared["val-test"] == 2  # patients 13 and 14
    assert summary.shared["train-test"] == len(train_patients & {"13", "14"}) and summary.shared["train-val"] == 0
    assert summary.split_hash == records.StudyRecord.from_study(study).split_hash
    stored = study.user_attrs[records.DATA_SUMMARY]  # counts only: no patient id, no image name
    assert set(stored) == {"class_names", "split_seed", "images", "groups", "shared", "split_hash", "content_hash"}
    assert all(isinstance(n, int) for part in ("images", "groups") for v in stored[part].values() for n in v)
    assert "_left" not in str(stored) and "_right" not in str(stored)

    out = tmp_path / "report"
    out.mkdir()
    section, files = _data_section(study, out, ("md", "csv", "tex"))
    assert sorted(p.name for p in files) == ["data.csv", "data.md", "data.tex"]
    table = pd.read_csv(out / "data.csv")
    assert list(table["class"]) == [*summary.class_names, "total"]
    assert table.test_patients.tolist() == [*TEST_PATIENTS_PER_GRADE, 7] and table.test_images.iloc[-1] == 12
    assert table.train_patients.iloc[-1] + table.val_patients.iloc[-1] == 15
    md = (out / "data.md").read_text()
    assert "Patients in both train and test" in md and "none: an unreadable image stops the run" in md
    assert summary.split_hash in md and summary.content_hash in md
    assert section.startswith("## Data\n") and "test patients" in section and "test patients" in md


def test_ungrouped_data_has_no_patient_columns_and_honours_format(tmp_path: Path, monkeypatch):
    data = write_plain(tmp_path / "dr")
    monkeypatch.chdir(tmp_path)
    _, study = open_search_study(options(tmp_path, data))
    summary = records.DataSummary.from_study(study)
    assert summary.groups is None and summary.shared is None
    assert [sum(summary.images[s]) for s in ("train", "val", "test")][1:] != [0, 0]
    assert sum(sum(summary.images[s]) for s in ("train", "val")) == 30 and list(summary.images["test"]) == [2] * 5
    out = tmp_path / "report"
    out.mkdir()
    section, files = _data_section(study, out, ("md",))
    assert [p.name for p in files] == ["data.md"] and "patients" not in (out / "data.md").read_text().split("\n\n")[1]
    assert "no groups" in section


def test_a_study_without_data_summary_says_so_and_writes_no_data_files(tmp_path: Path, monkeypatch):
    data = write_plain(tmp_path / "dr")
    monkeypatch.chdir(tmp_path)
    open_search_study(options(tmp_path, data))
    delete_attrs(tmp_path, records.DATA_SUMMARY)
    study = optuna.load_study(study_name="idspace", storage=storage_of(tmp_path))
    assert records.DataSummary.from_study(study) is None
    out = tmp_path / "report"
    out.mkdir()
    section, files = _data_section(study, out, ("md", "csv", "tex"))
    assert files == [] and not list(out.glob("data.*"))
    assert section.startswith("## Data\n") and "older run" in section


# ---------------------------------------------------------------- end to end


def test_data_summary_round_trips_and_a_forged_one_reads_as_missing():
    study = optuna.create_study()
    summary = records.DataSummary(("a", "b"), 3, {"train": (3, 1), "val": (1, 1), "test": (2, 2)},
                                  {"train": (2, 1), "val": (1, 1), "test": (1, 2)},
                                  {"train-test": 1, "val-test": 0, "train-val": 0}, "s" * 64, "content-v1:x")
    assert records.DataSummary.from_study(study) is None
    summary.write(study)
    assert records.DataSummary.from_study(study) == summary
    for forged in ({"class_names": ["a", "b"]}, {**summary.record(), "images": {"train": [1, 2, 3]}},
                   {**summary.record(), "groups": "nope"}, ["not", "a", "mapping"]):
        study.set_user_attr(records.DATA_SUMMARY, forged)
        assert records.DataSummary.from_study(study) is None
