"""Cache checksum: what checking the decode cache before a run costs, against decoding it.

Every decode cache file is checked against its per-chunk CRC32 (`objectives.data.checksum`) once
per process, before the first trial reads it. This prints

1. the hash's speed on this machine over an in-memory buffer: zlib's CRC32 (what the study uses),
   SHA-256 (the obvious alternative) and xxh3 where the `xxhash` package is installed, one thread;
   then the study's own `checksum_fd` (all cores) over a cache file in the page cache;
2. for `--images` synthetic-fundus JPEG files of `--jpeg-size` px decoded to `--size` px: the time
   to decode them (no cache), to build the cache (decode + write + checksum), and to check the
   built cache as a new process does (`objectives.data.decode._open_checked`, the file in the page
   cache; from a cold disk the read, not the hash, sets the pace), with the ratio check / decode;
3. that check scaled to a 28,000-image 512 px cache (the Kaggle DR training set, 22 GB).

    python benchmarks/cache_checksum.py
    python benchmarks/cache_checksum.py --images 512 --size 512 --jpeg-size 1024
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from objectives.data import checksum, decode_all, find_dataset
from objectives.data.decode import _open_checked

from common import DEFAULT_WORK, print_header, synthetic_jpegs, table

DR_IMAGES = 28_000


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """The fastest of `repeats` runs, in seconds (other processes only ever slow a run down)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def hash_speeds(megabytes: int, repeats: int) -> list[tuple[str, float]]:
    """(name, MB/s) of each hash over one in-memory buffer in 16 MiB pieces, one thread."""
    buffer = memoryview(np.random.default_rng(0).integers(0, 256, megabytes << 20, dtype=np.uint8))
    pieces = [buffer[i : i + checksum.CHUNK_BYTES] for i in range(0, len(buffer), checksum.CHUNK_BYTES)]
    hashes: list[tuple[str, Callable[[memoryview], object]]] = [
        ("crc32 (zlib, stdlib)", zlib.crc32),
        ("sha256 (hashlib)", lambda b: hashlib.sha256(b).digest()),
    ]
    try:
        import xxhash

        hashes.insert(1, ("xxh3_64 (xxhash)", xxhash.xxh3_64_intdigest))
    except ImportError:
        hashes.append(("xxh3_64", None))  # type: ignore[arg-type]
    speeds = []
    for name, one in hashes:
        if one is None:
            speeds.append((f"{name}: not installed", float("nan")))
            continue
        seconds = best_of(repeats, lambda: [one(p) for p in pieces])
        speeds.append((name, len(buffer) / seconds / 1e6))
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="training images decoded (default %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="decoded size, px (default %(default)s)")
    parser.add_argument("--jpeg-size", type=int, default=1024, help="size of the JPEG files, px (default %(default)s)")
    parser.add_argument("--buffer-mb", type=int, default=256, help="MB hashed per speed test (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (default %(default)s)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="kept JPEG files (default %(default)s)")
    args = parser.parse_args()
    print_header("cache checksum", torch.device("cpu"), images=args.images, size=f"{args.size} px",
                 jpeg=f"{args.jpeg_size} px synthetic-fundus", chunk=f"{checksum.CHUNK_BYTES >> 20} MiB")

    speeds = hash_speeds(args.buffer_mb, args.repeats)
    print(table(["hash, one thread", "MB/s"], [(name, f"{mbs:,.0f}") for name, mbs in speeds]), "\n")

    root, _ = synthetic_jpegs(args.work, args.images, 2, args.jpeg_size)
    paths = find_dataset(root, num_classes=5).train.paths
    decode = best_of(1, lambda: decode_all(paths, args.size, cache_dir=None))
    with tempfile.TemporaryDirectory() as tmp:
        build = best_of(1, lambda: decode_all(paths, args.size, cache_dir=Path(tmp)))
        (target,) = Path(tmp).glob("*.npy")
        shape = (len(paths), args.size, args.size, 3)
        nbytes = target.stat().st_size

        def check() -> None:
            checksum._VERIFIED.clear()  # as a new process: nothing checked yet
            del_me = _open_checked(target, shape)
            del del_me

        verify = best_of(args.repeats, check)
    rate = nbytes / verify / 1e6
    rows = [
        ("decode, no cache", f"{decode:.2f}", f"{decode / len(paths) * 1e3:.2f}"),
        ("build the cache (decode, write, checksum)", f"{build:.2f}", f"{build / len(paths) * 1e3:.2f}"),
        (f"check it ({os.cpu_count()} threads, page cache)", f"{verify:.3f}", f"{verify / len(paths) * 1e3:.3f}"),
    ]
    print(table(["step", "seconds", "ms / image"], rows))
    print(f"\ncache file: {nbytes / 1e6:.1f} MB; checked at {rate:,.0f} MB/s")
    print(f"check / decode: {verify / decode:.1%}")
    full = DR_IMAGES * args.size * args.size * 3
    print(f"a {DR_IMAGES:,}-image {args.size} px cache ({full / 1e9:.1f} GB) at that rate: {full / 1e6 / rate:.1f} s, "
          f"decoding it: {decode / len(paths) * DR_IMAGES / 60:.1f} min")


if __name__ == "__main__":
    main()
