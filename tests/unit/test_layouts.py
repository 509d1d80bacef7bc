"""The data layouts beyond the DR lab's: CIFAR-10 python batches, ImageFolder trees of any image
format, classes taken from the data, and the CIFAR augmentation (crop + left-right flip only)."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from objectives.data import (
    Augment,
    DeviceBatches,
    ImageSet,
    decode_image,
    detect_layout,
    find_dataset,
    load_splits,
    resize_all,
)
from objectives.errors import InputError

from conftest import CIFAR_NAMES, write_cifar, write_imagefolder


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batches_are_read_from_the_folder_or_its_parent(tmp_path: Path, protocol: int):
    root = write_cifar(tmp_path, protocol=protocol)
    with open(root / "data_batch_2", "rb") as handle:
        batch2 = pickle.load(handle, encoding="bytes")
    for given in (root, tmp_path):
        files = find_dataset(given)
        assert files.layout == "cifar10" and files.root == root
        assert files.class_names == tuple(CIFAR_NAMES)
        assert len(files.train) == 100 and len(files.test) == 20 and files.train.paths == ()
        image = files.train.pixels[20 + 3]  # batch 2, row 3: HWC with R, G, B from the three planes
        assert image.shape == (32, 32, 3)
        assert np.array_equal(image[..., 0].ravel(), batch2[b"data"][3, :1024])
        assert np.array_equal(image[..., 2].ravel(), batch2[b"data"][3, 2048:])
        assert files.train.labels[20 + 3] == batch2[b"labels"][3]
    splits = load_splits(files, image_size=32, val_fraction=0.1, split_seed=0, cache_dir=tmp_path / "cache")
    assert splits.train.images is files.train.pixels  # already 32 px: nothing decoded, nothing cached
    assert splits.class_names == tuple(CIFAR_NAMES) and splits.num_classes == 10
    bigger = resize_all(files.test.pixels, 40, cache_dir=tmp_path / "cache")
    assert bigger.shape == (20, 40, 40, 3) and len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_cifar_errors_are_one_line(tmp_path: Path):
    root = write_cifar(tmp_path)
    (root / "data_batch_4").unlink()
    with pytest.raises(InputError, match="CIFAR-10 batches incomplete, missing data_batch_4"):
        find_dataset(tmp_path)
    with open(root / "data_batch_4", "wb") as handle:  # a pickle that would run a command when loaded
        pickle.dump({b"data": __import__("os").system}, handle)
    with pytest.raises(InputError, match="data_batch_4: not a CIFAR-10 python batch .*refusing to load"):
        find_dataset(root)
    with pytest.raises(InputError, match="the data has 10 classes .* the study expects 5"):
        find_dataset(write_cifar(tmp_path / "other"), num_classes=5)


def test_imagefolder_with_png_grayscale_rgba_holds_out_a_test_split(tmp_path: Path):
    root = write_imagefolder(tmp_path / "pets", {"cat": 12, "dog": 8, "fish": 5})
    files = find_dataset(root)
    assert files.layout == "imagefolder" and files.class_names == ("cat", "dog", "fish")
    assert files.test_held_out == 0.2
    assert len(files.train) + len(files.test) == 25  # notes.txt is not an image
    assert not set(files.train.paths) & set(files.test.paths)
    assert set(files.test.labels.tolist()) == {0, 1, 2}  # stratified: every class held out
    assert find_dataset(root).test.paths == files.test.paths  # seeded
    gray = decode_image(root / "train" / "cat" / "1.png", 16)
    assert gray.shape == (16, 16, 3) and np.array_equal(gray[..., 0], gray[..., 2])
    rgba = decode_image(root / "train" / "cat" / "2.png", 16)
    assert rgba.shape == (16, 16, 3)
    splits = load_splits(files, image_size=16, val_fraction=0.25, split_seed=0, cache_dir=None)
    assert splits.num_classes == 3 and len(splits.train) + len(splits.val) == len(files.train)
    with pytest.raises(InputError, match=r"the data's classes are cat, dog, fish, the study expects cat, dog"):
        find_dataset(root, class_names=["cat", "dog"])


def test_imagefolder_test_folder_numeric_classes_and_16_bit_grayscale(tmp_path: Path):
    root = tmp_path / "grades"
    write_imagefolder(root, {"0": 4, "2": 4, "10": 4})
    write_imagefolder(root, {"0": 2, "10": 2}, split="test", seed=1)
    deep = root / "train" / "2" / "deep.png"
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(deep)
    files = find_dataset(root)
    assert files.class_names == ("0", "2", "10")  # by number, not "0", "10", "2"
    assert files.test_held_out == 0.0 and len(files.test) == 4
    assert sorted(set(files.test.labels.tolist())) == [0, 2]
    assert decode_image(deep, 8)[0, 0].tolist() == [40000 >> 8] * 3  # not saturated to 255
    write_imagefolder(root, {"7": 1}, split="test")
    with pytest.raises(InputError, match="test class folder.* 7 have no train/ counterpart"):
        find_dataset(root)


def test_forced_and_unknown_layouts(tmp_path: Path):
    root = write_imagefolder(tmp_path / "f", {"a": 2, "b": 2})
    assert detect_layout(root) == ("imagefolder", root)
    with pytest.raises(InputError, match="--layout mnist: unknown layout; known: dr_lab, kaggle, cifar10, imagefolder"):
        detect_layout(root, "mnist")
    with pytest.raises(InputError, match="CIFAR-10 batches incomplete"):
        find_dataset(root, layout="cifar10")


def test_cifar_augmentation_crops_and_flips_left_right_never_up_down():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(32, 8, 8, 3), dtype=np.uint8)
    subset = ImageSet(images, np.arange(32), np.arange(32))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    plain = {int(y): x for xb, yb in DeviceBatches(subset, batch_size=8, device=torch.device("cpu"), mean=mean, std=std)
             for x, y in zip(xb, yb)}
    pad = 2
    black = (0.0 - 0.5) / 0.25
    augmented = DeviceBatches(subset, batch_size=8, device=torch.device("cpu"), mean=mean, std=std, shuffle=True,
                              augment=Augment(hflip=True, crop_padding=pad), seed=3)
    shifts, mirrored = set(), 0
    for xb, yb in augmented:
        for x, y in zip(xb, yb):
            padded = torch.nn.functional.pad(plain[int(y)], (pad, pad, pad, pad), value=black)
            found = [(dy, dx, flip) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for flip in (False, True)
                     if torch.allclose(x, (padded.flip(2) if flip else padded)[:, dy:dy + 8, dx:dx + 8])]
            assert found, "every image is a left-right flip and/or black-padded crop of its own image"
            shifts.add(found[0][:2])
            mirrored += found[0][2]
    assert len(shifts) > 3 and 0 < mirrored < 32
