"""Checksums of the files the tool writes and reads back: CRC32 per chunk of a file's bytes.

A decode cache whose header parses but whose pixels are zeroed (a sparse copy, a bad disk, a
hand-edited file) would train every trial at chance and record them COMPLETE. So every cache file
gets a sidecar, ``<file>.crc32``, holding the CRC32 of each chunk of its bytes, written before the
file itself is renamed into place; a reader checks the file against it once per process, before
handing out the array.

Why CRC32 per chunk: the stdlib's `zlib.crc32` needs no dependency, catches every burst error up to
32 bits and misses any other damage (a zeroed or shifted region) once in 2**32 (it guards against
damage, not an adversary: whoever can write the cache can write its sidecar), releases the GIL, so
chunks are hashed on every core at once, and names the damaged region.

Why the whole file up front, not each chunk as a batch first reads it: a mismatch found before the
first trial is fixed by decoding again, with one warning line; one found mid-epoch could only fail
a trial that has already trained on some bad rows, and the rebuild would happen under arrays other
workers have mapped. The up-front pass reads the file in order, which also fills the page cache
the first epoch would otherwise fill in random order.

Small files that are rewritten whole (the channel statistics) carry their checksum inside
(`seal` / `unseal`): one file written atomically cannot fall out of step with itself.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objectives.atomic import atomic_write_text

ALGORITHM = "crc32"
CHUNK_BYTES = 16 << 20  # 16 MiB: ~1,400 CRCs for a 22 GB cache; a chunk per thread stays small in memory


@dataclass(frozen=True)
class Checksum:
    """The CRC32 of each `chunk`-byte piece of a file of `size` bytes (the last piece may be shorter)."""

    size: int
    chunk: int
    crcs: tuple[int, ...]

    @property
    def digest(self) -> str:
        """One short string for the whole file (its size and the CRC32 of the chunk CRCs): what a
        file derived from this one records to say which content it was derived from."""
        packed = b"".join(c.to_bytes(4, "little") for c in self.crcs)
        return f"{ALGORITHM}:{self.size}:{zlib.crc32(packed):08x}"

    def to_text(self) -> str:
        return json.dumps({"algorithm": ALGORITHM, "size": self.size, "chunk": self.chunk, "crcs": list(self.crcs)})

    @classmethod
    def from_text(cls, text: str) -> Checksum:
        """The checksum a sidecar holds; ValueError when it is not one this code wrote."""
        try:
            saved = json.loads(text)
            size, chunk, crcs = int(saved["size"]), int(saved["chunk"]), tuple(int(c) for c in saved["crcs"])
            algorithm = saved["algorithm"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{type(exc).__name__}: {exc}") from None
        if algorithm != ALGORITHM or chunk <= 0 or size < 0 or len(crcs) != -(-size // chunk):
            raise ValueError(f"not a {ALGORITHM} checksum of {size} bytes in chunks of {chunk}")
        return cls(size, chunk, crcs)


def sidecar(path: Path) -> Path:
    """Where the checksum of `path` is kept: beside it, same name plus ``.crc32``."""
    return path.with_name(f"{path.name}.{ALGORITHM}")


def checksum_fd(fd: int, size: int, chunk: int) -> Checksum:
    """The checksum of the first `size` bytes of the open file `fd`, chunks read and hashed on a
    thread pool (`os.pread` and `zlib.crc32` release the GIL)."""

    def one(offset: int) -> int:
        data = os.pread(fd, min(chunk, size - offset), offset)
        if len(data) != min(chunk, size - offset):
            raise OSError(f"short read at byte {offset}: the file shrank while it was read")
        return zlib.crc32(data)

    offsets = range(0, size, chunk)
    with ThreadPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, len(offsets)))) as pool:
        return Checksum(size, chunk, tuple(pool.map(one, offsets)))


def file_identity(fd: int) -> tuple[int, int, int, int]:
    """What tells one file version from another without reading it: device, inode, size, mtime.
    A rename keeps it; a rewrite in place changes the mtime; a copy or a rebuild, the inode."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


_VERIFIED: dict[tuple[int, int, int, int], str] = {}  # file identity -> digest, checked in this process


def write_checksum(data: Path, target: Path) -> Checksum:
    """Hash `data` (a finished file about to be renamed to `target`) and write `target`'s sidecar
    atomically. Call it before the rename: a reader then never sees a new file with no sidecar, and
    workers that build the same file concurrently write identical bytes, so any sidecar describes
    any of their files. The file counts as checked in this process (the rename keeps its identity)."""
    with open(data, "rb") as f:
        identity = file_identity(f.fileno())
        checksum = checksum_fd(f.fileno(), identity[2], CHUNK_BYTES)
    atomic_write_text(sidecar(target), checksum.to_text())
    _VERIFIED[identity] = checksum.digest
    return checksum


def read_checksum(target: Path) -> Checksum:
    """The checksum kept for `target`; ValueError (saying why) when its sidecar is missing or damaged."""
    try:
        text = sidecar(target).read_text()
    except FileNotFoundError:
        raise ValueError(f"its checksum file {sidecar(target).name} is missing") from None
    except OSError as exc:
        raise ValueError(f"its checksum file {sidecar(target).name} cannot be read: {exc}") from None
    try:
        return Checksum.from_text(text)
    except ValueError as exc:
        raise ValueError(f"its checksum file {sidecar(target).name} is damaged: {exc}") from None


def verify_fd(fd: int, expected: Checksum) -> str | None:
    """None when the open file `fd` matches `expected`, else what differs. A file version already
    checked in this process against the same checksum is not read again."""
    identity = file_identity(fd)
    if _VERIFIED.get(identity) == expected.digest:
        return None
    if identity[2] != expected.size:
        return f"it has {identity[2]} bytes, its checksum was taken over {expected.size} bytes"
    found = checksum_fd(fd, expected.size, expected.chunk).crcs
    bad = [i for i, (a, b) in enumerate(zip(found, expected.crcs)) if a != b]
    if bad:
        first = bad[0] * expected.chunk
        return (f"{len(bad)} of {len(found)} chunks differ from their {ALGORITHM}, the first at bytes "
                f"{first}..{min(first + expected.chunk, expected.size) - 1}")
    _VERIFIED[identity] = expected.digest
    return None


def seal(payload: dict[str, Any]) -> str:
    """`payload` as JSON with its own CRC32 added under ``crc32`` (see `unseal`)."""
    body = json.dumps(payload, sort_keys=True)
    return json.dumps({**payload, ALGORITHM: zlib.crc32(body.encode())}, sort_keys=True)


def unseal(text: str) -> dict[str, Any]:
    """The payload `seal` wrote; ValueError when the text is not JSON, has no checksum or does not match it."""
    try:
        saved = json.loads(text)
        crc = saved.pop(ALGORITHM)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"no {ALGORITHM} of its content ({type(exc).__name__}: {exc})") from None
    if crc != zlib.crc32(json.dumps(saved, sort_keys=True).encode()):
        raise ValueError(f"its content does not match its {ALGORITHM}")
    return saved
