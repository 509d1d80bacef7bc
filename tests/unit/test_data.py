"""Reading the data layouts, decoding once into the cache, seeded stratified splits and the
train-only channel statistics, on small real JPEG files."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from objectives.data import (
    Augment,
    DeviceBatches,
    ImageSet,
    channel_stats,
    decode_all,
    decode_image,
    find_dataset,
    load_splits,
)
from objectives.data.checksum import seal
from objectives.data.splits import stratified_split
from objectives.errors import InputError

from conftest import class_image, dr_labels


def test_dr_lab_layout_reads_jpegs(dr_dir: Path):
    files = find_dataset(dr_dir, num_classes=5)
    assert files.layout == "dr_lab"
    assert len(files.train.paths) == 60 and len(files.test.paths) == 20
    assert files.train.paths[0] == dr_dir / "train_0000.jpeg"
    assert files.train.labels.tolist() == dr_labels(60)
    assert files.class_names[0] == "No DR"


def test_kaggle_layout_holds_out_a_stratified_test_split(tmp_path: Path):
    root = tmp_path / "kaggle"
    (root / "train").mkdir(parents=True)
    labels = dr_labels(50)
    rng = np.random.default_rng(0)
    rows = ["image,level"]
    for i, label in enumerate(labels):
        name = f"{i}_left"
        class_image(label, 40, rng).save(root / "train" / f"{name}.jpeg")
        rows.append(f"{name},{label}")
    (root / "trainLabels.csv").write_text("\n".join(rows) + "\n")
    files = find_dataset(root, num_classes=5, test_fraction=0.2)
    assert files.layout == "kaggle"
    assert len(files.train.paths) + len(files.test.paths) == 50
    assert not set(files.train.paths) & set(files.test.paths)
    assert set(files.test.labels.tolist()) == {0, 1, 2, 3, 4}  # every grade held out at least once
    assert 8 <= len(files.test.paths) <= 13


def test_decode_resizes_shorter_side_and_centre_crops(tmp_path: Path):
    from PIL import Image

    img = np.zeros((60, 90, 3), np.uint8)
    img[:, 15:75] = 255  # the centre 60x60 square is white
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 30)
    assert out.shape == (30, 30, 3) and out.dtype == np.uint8
    assert out[:, 2:-2].min() > 200


def test_cache_equals_direct_decode_and_is_rebuilt_when_a_file_changes(dr_dir: Path, tmp_path: Path):
    files = find_dataset(dr_dir, num_classes=5)
    cache = tmp_path / "cache"
    first = decode_all(files.train.paths, 32, cache_dir=cache)
    direct = np.stack([decode_image(p, 32) for p in files.train.paths])
    assert np.array_equal(np.asarray(first), direct)
    assert isinstance(first, np.memmap)
    assert len(list(cache.glob("*.npy"))) == 1
    again = decode_all(files.train.paths, 32, cache_dir=cache)
    assert np.array_equal(np.asarray(again), direct) and len(list(cache.glob("*.npy"))) == 1
    decode_all(files.train.paths, 40, cache_dir=cache)  # another size, another cache
    assert len(list(cache.glob("*.npy"))) == 2
    changed = files.train.paths[3]
    class_image(4, 48, np.random.default_rng(99)).save(changed, quality=92)
    os.utime(changed, ns=(1, 1))  # a different mtime even on coarse file systems
    rebuilt = decode_all(files.train.paths, 32, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 3
    assert np.array_equal(rebuilt[3], decode_image(changed, 32))
    assert not np.array_equal(rebuilt[3], direct[3])


def test_stratified_split_is_seeded_and_keeps_rare_classes_on_both_sides():
    labels = np.array(dr_labels(200))
    a_keep, a_held = stratified_split(labels, 0.2, seed=3)
    b_keep, b_held = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(a_held, b_held)
    assert not np.array_equal(a_held, stratified_split(labels, 0.2, seed=4)[1])
    assert set(labels[a_held]) == set(labels[a_keep]) == {0, 1, 2, 3, 4}
    assert sorted(np.concatenate([a_keep, a_held]).tolist()) == list(range(200))
    for cls in range(5):
        share = (labels[a_held] == cls).mean() - (labels == cls).mean()
        assert abs(share) < 0.05


def test_splits_and_channel_stats_come_from_train_only(dr_dir: Path):
    files = find_dataset(dr_dir, num_classes=5)
    splits = load_splits(files, image_size=32, val_fraction=0.25, split_seed=0, cache_dir=None)
    assert len(splits.train) + len(splits.val) == 60 and len(splits.test) == 20
    assert not set(splits.train.index) & set(splits.val.index)
    pixels = np.asarray(splits.train.images)[splits.train.index].astype(np.float64) / 255
    assert splits.mean == pytest.approx(pixels.mean(axis=(0, 1, 2)), abs=1e-9)
    assert splits.std == pytest.approx(pixels.std(axis=(0, 1, 2)), abs=1e-6)


def test_channel_stats_are_cached_beside_the_decode_cache_per_split(dr_dir: Path, tmp_path: Path):
    files = find_dataset(dr_dir, num_classes=5)
    cache = tmp_path / "cache"
    direct = load_splits(files, image_size=32, val_fraction=0.25, split_seed=0, cache_dir=None)
    first = load_splits(files, image_size=32, val_fraction=0.25, split_seed=0, cache_dir=cache)
    assert first.mean == pytest.approx(direct.mean, abs=1e-12) and first.std == pytest.approx(direct.std, abs=1e-12)
    saved = list(cache.glob("*.stats-*.json"))
    assert len(saved) == 1
    # a file with a valid checksum of its own, for these pixels, is read back, not recomputed
    pixels = json.loads(saved[0].read_text())["pixels"]
    saved[0].write_text(seal({"pixels": pixels, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]}))
    assert load_splits(files, image_size=32, val_fraction=0.25, split_seed=0, cache_dir=cache).mean == (0.1, 0.2, 0.3)
    other = load_splits(files, image_size=32, val_fraction=0.25, split_seed=1, cache_dir=cache)
    assert len(list(cache.glob("*.stats-*.json"))) == 2
    assert other.mean != (0.1, 0.2, 0.3) and other.mean != pytest.approx(direct.mean, abs=1e-9)


def test_device_batches_normalise_and_flips_keep_labels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(10)
    subset = ImageSet(images, labels, np.arange(10))
    mean, std = channel_stats(subset)
    plain = DeviceBatches(subset, batch_size=4, device=torch.device("cpu"), mean=mean, std=std)
    flipped = DeviceBatches(subset, batch_size=4, device=torch.device("cpu"), mean=mean, std=std, shuffle=True,
                            augment=Augment(hflip=True, vflip=True), seed=1)
    reference = {int(y): x for xb, yb in plain for x, y in zip(xb, yb)}
    assert len(reference) == 10
    stacked = torch.stack([reference[i] for i in range(10)])
    assert stacked.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    n_flipped = 0
    for xb, yb in flipped:
        for x, y in zip(xb, yb):
            ref = reference[int(y)]
            variants = [ref, ref.flip(2), ref.flip(1), ref.flip(1).flip(2)]
            match = [torch.allclose(x, v) for v in variants]
            assert any(match), "a flipped image must be a flip of its own labelled image"
            n_flipped += not match[0]
    assert n_flipped > 0


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda d: (d / "train_0005.jpeg").unlink(), "1 train image(s) missing, e.g. train_0005.jpeg"),
        (
            lambda d: (d / "test_0001.jpeg").write_bytes(b"not a jpeg at all"),
            "test_0001.jpeg: unreadable or corrupt image",
        ),
        (
            lambda d: (d / "train_0002.jpeg").write_bytes((d / "train_0002.jpeg").read_bytes()[:300]),
            "train_0002.jpeg: unreadable or corrupt image",
        ),
        (
            lambda d: (d / "train_label.csv").write_text("level\n" + "0\n" * 59 + "7\n"),
            "train label 7 of train_0059.jpeg is outside 0..4",
        ),
        (
            lambda d: (d / "test_label.csv").write_text("level\n" + "0\n" * 19),
            "test_img.csv has 20 rows but test_label.csv has 19",
        ),
        (lambda d: (d / "test_label.csv").write_text("level\n" + "x\n" * 20), "label 'x' is not an integer"),
        (lambda d: (d / "test_img.csv").unlink(), "DR lab layout incomplete, missing test_img.csv"),
    ],
)
def test_bad_data_is_one_clear_error(dr_dir: Path, break_it, message):
    break_it(dr_dir)
    with pytest.raises(InputError) as err:
        files = find_dataset(dr_dir, num_classes=5)
        load_splits(files, image_size=32, val_fraction=0.2, split_seed=0, cache_dir=None)
    assert message in str(err.value)


def test_unknown_layout(tmp_path: Path):
    with pytest.raises(InputError, match="no known layout"):
        find_dataset(tmp_path, num_classes=5)
    with pytest.raises(InputError, match="no such directory"):
        find_dataset(tmp_path / "nope", num_classes=5)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_shape"])
def test_a_damaged_decode_cache_is_rebuilt_with_one_warning(dr_dir: Path, tmp_path: Path, capfd, damage: str):
    files = find_dataset(dr_dir, num_classes=5)
    cache = tmp_path / "cache"
    direct = np.array(decode_all(files.train.paths, 32, cache_dir=cache))  # a copy: nothing maps the file below
    (target,) = cache.glob("*.npy")
    if damage == "truncate":  # a full disk or an interrupted copy: "mmap length is greater than file size"
        with open(target, "r+b") as f:
            f.truncate(target.stat().st_size // 2)
    elif damage == "garbage":
        target.write_bytes(b"not a numpy file")
    else:
        np.save(target, np.zeros((3, 32, 32, 3), np.uint8))
    capfd.readouterr()
    again = np.array(decode_all(files.train.paths, 32, cache_dir=cache))
    err = capfd.readouterr().err.strip().splitlines()
    assert np.array_equal(again, direct)
    assert len(err) == 1 and err[0].startswith("study: warning: ") and str(target) in err[0]
    assert "decoding the images again" in err[0]
    decode_all(files.train.paths, 32, cache_dir=cache)  # rebuilt: read back silently
    assert capfd.readouterr().err == "" and [p.name for p in cache.glob("*.npy")] == [target.name]


def test_damaged_channel_statistics_are_computed_again_with_one_warning(dr_dir: Path, tmp_path: Path, capfd):
    files = find_dataset(dr_dir, num_classes=5)
    cache = tmp_path / "cache"
    direct = load_splits(files, image_size=32, val_fraction=0.25, split_seed=0, cache_dir=cache)
    (saved,) = cache.glob("*.stats-*.json")
    for bad in ('{"mean": [0.1, 0.2', '{"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.0, 0.5]}', '[]'):
        saved.write_text(bad)
        capfd.readouterr()
        again = load_splits(files, image_size=32, val_fraction=0.25, split_seed=0, cache_dir=cache)
        err = capfd.readouterr().err.strip().splitlines()
        assert again.mean == pytest.approx(direct.mean, abs=1e-12) and again.std == pytest.approx(direct.std, abs=1e-12)
        assert len(err) == 1 and "is damaged" in err[0] and "channel statistics again" in err[0]
    assert json.loads(saved.read_text())["mean"] == pytest.approx(list(direct.mean))
