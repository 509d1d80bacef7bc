"""The decode cache and its channel statistics are checked against a checksum before use
(`objectives.data.checksum`): real JPEG files decoded by the real pipeline, tiny sizes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from objectives.data import checksum, decode_all, decode_image, find_dataset, load_splits
from objectives.data.checksum import read_checksum, seal, sidecar, verify_fd
from objectives.data.decode import content_file

SIZE = 32


@pytest.fixture
def new_process(monkeypatch):
    """What a new process knows: no cache file checked yet (a check is kept once per process)."""
    monkeypatch.setattr(checksum, "_VERIFIED", {})


@pytest.fixture
def hashed(monkeypatch) -> list[int]:
    """The sizes of every file read and hashed from now on (the real hash, counted)."""
    sizes: list[int] = []
    real = checksum.checksum_fd

    def counted(fd: int, size: int, chunk: int) -> checksum.Checksum:
        sizes.append(size)
        return real(fd, size, chunk)

    monkeypatch.setattr(checksum, "checksum_fd", counted)
    return sizes


def build(dr_dir: Path, cache: Path) -> tuple[list[Path], np.ndarray, Path]:
    """The train table's paths, its direct decode and the cache file decode_all built for it."""
    paths = find_dataset(dr_dir, num_classes=5).train.paths
    np.asarray(decode_all(paths, SIZE, cache_dir=cache))
    (target,) = cache.glob("*.npy")
    return paths, np.stack([decode_image(p, SIZE) for p in paths]), target


def identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def one_warning(capfd) -> str:
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("study: warning: ") and "decoding the images again" in err[0]
    return err[0]


def zero_pixels(target: Path) -> None:
    """Zero every pixel of the cache file and keep its header: a new file in its place, as a
    sparse copy of a results folder leaves it."""
    header = np.load(target, mmap_mode="r").offset
    data = bytearray(target.read_bytes())
    data[header:] = bytes(len(data) - header)
    replacement = target.with_name("replacement")
    replacement.write_bytes(bytes(data))
    os.replace(replacement, target)


def test_every_cache_file_gets_a_checksum_that_matches_it(dr_dir: Path, tmp_path: Path, new_process):
    _, direct, target = build(dr_dir, tmp_path / "cache")
    assert sidecar(target).is_file()
    saved = read_checksum(target)
    assert saved.size == target.stat().st_size and len(saved.crcs) == 1
    with open(target, "rb") as f:
        assert verify_fd(f.fileno(), saved) is None


def test_zeroed_pixels_under_a_valid_header_are_found_and_decoded_again(dr_dir: Path, tmp_path: Path, capfd,
                                                                        new_process):
    paths, direct, target = build(dr_dir, tmp_path / "cache")
    zero_pixels(target)
    assert np.load(target, mmap_mode="r").shape == direct.shape  # the header still parses
    capfd.readouterr()
    again = np.array(decode_all(paths, SIZE, cache_dir=tmp_path / "cache"))
    line = one_warning(capfd)
    assert str(target) in line and "1 of 1 chunks differ from their crc32" in line
    assert np.array_equal(again, direct)
    decode_all(paths, SIZE, cache_dir=tmp_path / "cache")  # rebuilt: read back silently
    assert capfd.readouterr().err == ""


def test_damage_inside_one_chunk_is_found_in_place(dr_dir: Path, tmp_path: Path, capfd, monkeypatch, new_process):
    monkeypatch.setattr(checksum, "CHUNK_BYTES", 4096)
    paths, direct, target = build(dr_dir, tmp_path / "cache")
    before = target.stat()
    assert len(read_checksum(target).crcs) == -(-before.st_size // 4096)
    start = np.load(target, mmap_mode="r").offset + 30 * SIZE * SIZE * 3
    with open(target, "r+b") as f:  # image 30 zeroed in place, the file's times put back
        f.seek(start)
        f.write(bytes(SIZE * SIZE * 3))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    monkeypatch.setattr(checksum, "_VERIFIED", {})  # the next run: a new process
    capfd.readouterr()
    again = np.array(decode_all(paths, SIZE, cache_dir=tmp_path / "cache"))
    first, last = start // 4096, (start + SIZE * SIZE * 3 - 1) // 4096
    line = one_warning(capfd)
    assert f"{last - first + 1} of {len(read_checksum(target).crcs)} chunks differ" in line
    assert f"the first at bytes {first * 4096}..{first * 4096 + 4095}" in line
    assert np.array_equal(again, direct)


def test_an_intact_cache_is_checked_once_per_process_and_not_rebuilt(dr_dir: Path, tmp_path: Path, capfd,
                                                                     new_process, hashed):
    paths, direct, target = build(dr_dir, tmp_path / "cache")
    assert hashed == [target.stat().st_size]  # hashed once as it was written
    before = identity(target), sidecar(target).read_text()
    capfd.readouterr()
    checksum._VERIFIED.clear()  # the next run: a new process reads and hashes it once
    for _ in range(2):
        assert np.array_equal(np.asarray(decode_all(paths, SIZE, cache_dir=tmp_path / "cache")), direct)
    assert hashed == [target.stat().st_size] * 2
    assert capfd.readouterr().err == "" and (identity(target), sidecar(target).read_text()) == before


@pytest.mark.parametrize("damage, reason", [
    ("missing", "its checksum file {name} is missing"),
    ("garbage", "its checksum file {name} is damaged"),
    ("another_size", "its checksum was taken over {size} bytes"),
])
def test_a_missing_or_damaged_checksum_rebuilds_the_cache(dr_dir: Path, tmp_path: Path, capfd, new_process,
                                                          damage: str, reason: str):
    paths, direct, target = build(dr_dir, tmp_path / "cache")
    if damage == "missing":  # also a cache from before checksums
        sidecar(target).unlink()
    elif damage == "garbage":
        sidecar(target).write_text("{not json")
    else:
        saved = json.loads(sidecar(target).read_text())
        sidecar(target).write_text(json.dumps({**saved, "size": saved["size"] + 1}))
    old = identity(target)
    capfd.readouterr()
    again = np.array(decode_all(paths, SIZE, cache_dir=tmp_path / "cache"))
    line = one_warning(capfd)
    assert str(target) in line and reason.format(name=sidecar(target).name, size=target.stat().st_size + 1) in line
    assert np.array_equal(again, direct) and identity(target) != old
    with open(target, "rb") as f:
        assert verify_fd(f.fileno(), read_checksum(target)) is None


def _build_in_child(dr_dir: str, cache: str, start: multiprocessing.synchronize.Barrier) -> None:
    paths = find_dataset(Path(dr_dir), num_classes=5).train.paths
    start.wait(timeout=60)
    decode_all(paths, SIZE, cache_dir=Path(cache))


def test_two_processes_building_one_cache_leave_a_cache_that_matches_its_checksum(dr_dir: Path, tmp_path: Path,
                                                                                  capfd, new_process):
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("fork")  # the parent's imports, no new interpreter: fast
    start = context.Barrier(2)
    workers = [context.Process(target=_build_in_child, args=(str(dr_dir), str(cache), start)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert capfd.readouterr().err == ""
    (target,) = cache.glob("*.npy")
    # no partial files left: the cache, its checksum and the content hash of the files behind it
    assert sorted(p.name for p in cache.iterdir()) == sorted([target.name, sidecar(target).name,
                                                              content_file(target).name])
    with open(target, "rb") as f:
        assert verify_fd(f.fileno(), read_checksum(target)) is None
    paths = find_dataset(dr_dir, num_classes=5).train.paths
    old = identity(target)
    again = np.asarray(decode_all(paths, SIZE, cache_dir=cache))
    assert np.array_equal(again, np.stack([decode_image(p, SIZE) for p in paths]))
    assert capfd.readouterr().err == "" and identity(target) == old


def test_channel_statistics_are_checked_and_follow_the_pixels_they_came_from(dr_dir: Path, tmp_path: Path, capfd,
                                                                             new_process):
    files = find_dataset(dr_dir, num_classes=5)
    cache = tmp_path / "cache"
    direct = load_splits(files, image_size=SIZE, val_fraction=0.25, split_seed=0, cache_dir=cache)
    (saved,) = cache.glob("*.stats-*.json")
    stored = {k: v for k, v in json.loads(saved.read_text()).items() if k != "crc32"}
    assert stored["pixels"] == read_checksum(next(cache.glob("*60x32px.npy"))).digest
    # plausible values, edited by hand: no longer match the file's own checksum
    saved.write_text(json.dumps({**stored, "mean": [0.1, 0.2, 0.3]}))
    capfd.readouterr()
    again = load_splits(files, image_size=SIZE, val_fraction=0.25, split_seed=0, cache_dir=cache)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(saved) in err[0] and "channel statistics again" in err[0]
    assert again.mean == pytest.approx(direct.mean, abs=1e-12)
    # statistics of other pixels (a cache since rebuilt) are computed again, silently
    saved.write_text(seal({**stored, "pixels": "crc32:1:00000000", "mean": [0.1, 0.2, 0.3]}))
    again = load_splits(files, image_size=SIZE, val_fraction=0.25, split_seed=0, cache_dir=cache)
    assert again.mean == pytest.approx(direct.mean, abs=1e-12) and capfd.readouterr().err == ""
    assert json.loads(saved.read_text())["pixels"] == stored["pixels"]
