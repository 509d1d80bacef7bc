"""Decode once: images decoded and resized a single time into a memory-mapped uint8 cache.

The cache lives under ``results/cache/``, one file per dataset table and image size, keyed by the
files' names, sizes and mtimes (or by the pixels of an array dataset) and the size; every trial and
every worker then reads it. The training rows' channel statistics are cached beside it. Both are
checksummed when written and checked before use (`objectives.data.checksum`); a damaged one is
rebuilt after one warning line.

The first decode also hashes every file's bytes (they are read anyway) into one content hash per
table, kept beside the cache file (``<cache>.content.json``) and so under the same key: a later run
whose files keep their paths, sizes and mtimes reads the hash instead of the files. It identifies
the images by what they are, not where they lie (`content_hash`), so a study can tell replaced
images under the same names from a copy of its folder on another machine.
Conversion to float, normalisation, random crops and flips happen per batch on the training
device (`objectives.data.batches`), so an epoch costs what the model costs, not what JPEG
decoding costs.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from objectives.atomic import atomic_path, atomic_write_text, report_damaged
from objectives.data.checksum import read_checksum, seal, sidecar, unseal, verify_fd, write_checksum
from objectives.data.types import ImageSet, ImageTable
from objectives.errors import InputError
from objectives.progress import SILENT, Bar

CACHE_VERSION = 1  # bump when the decode (resize/crop) changes, so old caches are not reused
CONTENT_VERSION = "content-v1"  # how `content_hash` combines the files' digests: a new scheme, a new prefix
FILE_DIGEST_BYTES = 16  # blake2b per file: 128 bits, and hashlib releases the GIL, so threads hash in parallel
Triple = tuple[float, float, float]  # per channel: R, G, B


def open_rgb(source: Path | BinaryIO, name: Path, *, draft: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """An image as RGB, and its (width, height) as stored. Grayscale, palette, RGBA, CMYK ... are
    converted as torchvision's ImageFolder loader converts them (alpha is dropped); 16-bit
    grayscale keeps its top 8 bits instead of saturating. `draft` lets libjpeg decode at a reduced
    scale first (DCT scaling), which is most of the speed-up for small sizes from multi-megapixel
    photographs. A file Pillow cannot read is an InputError naming `name`."""
    try:
        with Image.open(source) as img:
            size = img.size
            if draft is not None:
                img.draft("RGB", (draft, draft))
            if img.mode.startswith("I;16"):
                return Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)).convert("RGB"), size
            return img.convert("RGB"), size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: unreadable or corrupt image ({exc.__class__.__name__}: {exc})") from None


def fit_square(img: Image.Image, size: int) -> np.ndarray:
    """uint8 HWC: shorter side resized to `size`, centre crop to a square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 HWC RGB, `size` x `size` (see `open_rgb` and `fit_square`)."""
    return fit_square(open_rgb(path, path, draft=size)[0], size)


def decode_table(table: ImageTable, size: int, *, cache_dir: Path | None, bar: Bar = SILENT) -> np.ndarray:
    """Every image of `table` as an (N, size, size, 3) uint8 array: files are decoded, array rows
    resized; both through the same square fit and the same cache."""
    return decode_table_hashed(table, size, cache_dir=cache_dir, bar=bar)[0]


def decode_table_hashed(table: ImageTable, size: int, *, cache_dir: Path | None,
                        bar: Bar = SILENT) -> tuple[np.ndarray, str]:
    """`decode_table` and the table's content hash: of the files' bytes (`decode_files`), or of
    an array table's pixels (`pixels_content`)."""
    if table.pixels is None:
        return decode_files(table.paths, size, cache_dir=cache_dir, bar=bar)
    return resize_all(table.pixels, size, cache_dir=cache_dir, bar=bar), pixels_content(table.pixels)


def decode_all(paths: Sequence[Path], size: int, *, cache_dir: Path | None, bar: Bar = SILENT) -> np.ndarray:
    """All `paths` decoded to an (N, size, size, 3) uint8 array, read from the cache when present."""
    return decode_files(paths, size, cache_dir=cache_dir, bar=bar)[0]


def decode_files(paths: Sequence[Path], size: int, *, cache_dir: Path | None,
                 bar: Bar = SILENT) -> tuple[np.ndarray, str]:
    """`decode_all` and the content hash of the files' bytes (`content_hash`), hashed while they are
    decoded. A cache hit reads the hash kept beside the cache file (same key: same paths, sizes and
    mtimes); a cache made before hashes were kept gets one, from the files' bytes, once."""
    key = content_key(paths, size) if cache_dir is not None else ""
    digests: list[bytes] = [b""] * len(paths)
    decoded: list[bool] = []  # set by `fill`: the files were read here, `digests` holds their hashes

    def one(out: np.ndarray, i: int) -> None:
        out[i], digests[i] = decode_hashed(paths[i], size)

    def fill(out: np.ndarray) -> None:
        for_each(len(paths), lambda i: one(out, i), bar)
        decoded.append(True)
        if cache_dir is not None:  # before the cache file is renamed into place: a reader finds both
            _write_content(_cache_file(cache_dir, key), content_hash(digests))

    array = _cached(cache_dir, key, (len(paths), size, size, 3), fill, bar)
    if cache_dir is None or decoded:
        return array, content_hash(digests)
    target = _cache_file(cache_dir, key)
    saved = _read_content(target, len(paths))
    if saved is None:
        for_each(len(paths), lambda i: digests.__setitem__(i, file_digest(_read_bytes(paths[i]))))
        saved = content_hash(digests)
        _write_content(target, saved)
    return array, saved


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: unreadable image ({exc.__class__.__name__}: {exc})") from None


def decode_hashed(path: Path, size: int) -> tuple[np.ndarray, bytes]:
    """`decode_image` of `path` and the digest of its bytes (`file_digest`), from one read."""
    data = _read_bytes(path)
    return fit_square(open_rgb(io.BytesIO(data), path, draft=size)[0], size), file_digest(data)


def file_digest(data: bytes) -> bytes:
    """One file's bytes as a short digest: what `content_hash` combines."""
    return hashlib.blake2b(data, digest_size=FILE_DIGEST_BYTES).digest()


def content_hash(digests: Sequence[bytes]) -> str:
    """The files' digests (`file_digest`) combined in table order: the same bytes in the same
    order give the same hash wherever the files lie and whatever their mtimes (no path, no stat)."""
    combined = hashlib.sha256(CONTENT_VERSION.encode())
    for digest in digests:
        combined.update(digest)
    return f"{CONTENT_VERSION}:{len(digests)}:{combined.hexdigest()[:32]}"


def pixels_content(pixels: np.ndarray) -> str:
    """An array dataset's content hash (CIFAR's batches): its shape and pixel bytes, in row order."""
    combined = hashlib.sha256(f"{CONTENT_VERSION}:{pixels.shape}:{pixels.dtype}".encode())
    combined.update(np.ascontiguousarray(pixels).data.cast("B"))
    return f"{CONTENT_VERSION}:{len(pixels)}:{combined.hexdigest()[:32]}"


def combine_contents(parts: Sequence[str]) -> str:
    """Several tables' content hashes (train, then test) as one."""
    combined = hashlib.sha256("\n".join(parts).encode())
    return f"{CONTENT_VERSION}:{combined.hexdigest()[:32]}"


def content_file(target: Path) -> Path:
    """Where the content hash of the files behind cache file `target` is kept."""
    return target.with_name(f"{target.name}.content.json")


def _write_content(target: Path, content: str) -> None:
    try:
        atomic_write_text(content_file(target), seal({"content": content}))
    except OSError:
        pass  # a read-only cache still works: the files are hashed again next time


def _read_content(target: Path, n: int) -> str | None:
    """The content hash kept for cache file `target` (of `n` files), or None when there is none (a
    cache written before hashes were kept) or it is damaged (after one warning)."""
    path = content_file(target)
    if not path.is_file():
        return None
    try:
        content = unseal(path.read_text()).get("content")
        if not isinstance(content, str) or not content.startswith(f"{CONTENT_VERSION}:{n}:"):
            raise ValueError(f"it holds {content!r}, not a content hash of {n} files")
        return content
    except (OSError, ValueError) as exc:
        report_damaged(path, str(exc), "hashing the images' bytes again")
        return None


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}.npy"


def resize_all(pixels: np.ndarray, size: int, *, cache_dir: Path | None, bar: Bar = SILENT) -> np.ndarray:
    """Rows of a decoded uint8 NHWC array fitted to `size` (cached); the array itself where its
    images already have that size (CIFAR at 32 px: nothing to do)."""
    if pixels.shape[1:3] == (size, size):
        bar.update(len(pixels))
        return pixels
    key = pixels_key(pixels, size) if cache_dir is not None else ""

    def fill(out: np.ndarray) -> None:
        for_each(len(pixels), lambda i: out.__setitem__(i, fit_square(Image.fromarray(pixels[i]), size)), bar)

    return _cached(cache_dir, key, (len(pixels), size, size, 3), fill, bar)


def content_key(paths: Sequence[Path], size: int) -> str:
    """A hash of the file names, sizes and mtimes and the decode size: a changed file, a new file
    or another size gives another cache."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{size}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return f"{digest.hexdigest()[:20]}-{len(paths)}x{size}px"


def pixels_key(pixels: np.ndarray, size: int) -> str:
    """A hash of an array dataset's pixels and the target size."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{size}:{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).data.cast("B"))
    return f"{digest.hexdigest()[:20]}-{len(pixels)}x{size}px"


def _cached(cache_dir: Path | None, key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray], None],
            bar: Bar) -> np.ndarray:
    """`fill` an array of `shape`, or read it from ``cache_dir/key.npy`` (memory-mapped), checked
    against its checksum (`objectives.data.checksum`) before it is handed out.

    The cache file is written atomically (`objectives.atomic`), its checksum first, so concurrent
    workers either see a complete file with its checksum or no file (and at worst both build it,
    identically).
    """
    if cache_dir is None:
        out = np.empty(shape, np.uint8)
        fill(out)
        return out
    target = _cache_file(cache_dir, key)
    if target.is_file():
        cached = _read_cache(target, shape)
        if cached is not None:
            bar.update(shape[0])
            return cached
    for _ in range(2):  # a second try only when another process replaced or removed the file just built
        _build_cache(target, shape, fill)
        cached = _read_cache(target, shape)
        if cached is not None:
            return cached
    raise OSError(f"{target} changed while it was being built; is another worker decoding the same images differently "
                  "(another Pillow)?")


def _build_cache(target: Path, shape: tuple[int, ...], fill: Callable[[np.ndarray], None]) -> None:
    """Write ``target`` by `fill`, then its checksum, then rename it into place."""
    with atomic_path(target) as partial:
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        fill(array)
        array.flush()
        del array
        write_checksum(partial, target)


def _read_cache(target: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cache file memory-mapped, or None (after one warning, the file and its checksum removed)
    when its header does not parse, its dtype or shape differ from what its key promises, or its
    bytes differ from its checksum or it has none: a header that parses over zeroed pixels would
    otherwise train at chance."""
    try:
        return _open_checked(target, shape)
    except (OSError, ValueError, EOFError) as exc:  # a truncated file, a missing sidecar, a chunk that differs
        reason = str(exc) or type(exc).__name__
    report_damaged(target, reason, "decoding the images again")
    target.unlink(missing_ok=True)
    sidecar(target).unlink(missing_ok=True)
    content_file(target).unlink(missing_ok=True)
    return None


def _open_checked(target: Path, shape: tuple[int, ...]) -> np.memmap:
    """``target`` memory-mapped after its header and its bytes are checked; ValueError says what is
    wrong. The checksum is read first and one open file is both checked and mapped, so a worker
    renaming a new version into place meanwhile cannot pair one version's bytes with another's check."""
    expected = read_checksum(target)
    with open(target, "rb") as f:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        found, fortran, dtype = header(f)
        if dtype != np.uint8 or tuple(found) != shape or fortran:
            raise ValueError(f"it holds {dtype} {tuple(found)}, its key promises uint8 {shape}")
        offset = f.tell()
        problem = verify_fd(f.fileno(), expected)
        if problem:
            raise ValueError(problem)
        return np.memmap(f, dtype=np.uint8, mode="r", shape=shape, offset=offset)


def for_each(n: int, one: Callable[[int], None], bar: Bar = SILENT) -> None:
    """`one(i)` for i < n on a thread pool (PIL's decode and resize release the GIL); `bar` counts them."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in pool.map(one, range(n), chunksize=1):
            bar.update(1)


def channel_stats(images: ImageSet, chunk: int = 256) -> tuple[Triple, Triple]:
    """Per-channel mean and std (0..1 scale) over the training rows.

    Exact: a 256-bin histogram per channel, read in chunks of rows to bound memory.
    """
    # integer counts need no float copy of the images, which summing float64 blocks would
    counts = torch.zeros((3, 256), dtype=torch.int64)
    for start in range(0, len(images.index), chunk):
        block = torch.from_numpy(np.ascontiguousarray(images.images[np.sort(images.index[start : start + chunk])]))
        pixels = block.view(-1, block.shape[-1])
        for c in range(3):
            counts[c] += torch.bincount(pixels[:, c], minlength=256)
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    hist = counts.to(torch.float64)
    return moments((hist * levels).sum(1).numpy(), (hist * levels**2).sum(1).numpy(), int(counts[0].sum()))


def cached_channel_stats(images: ImageSet) -> tuple[Triple, Triple]:
    """`channel_stats`, kept in a small JSON file beside the decode cache the images come from
    (keyed by that file and the training rows, which depend on the split), so later trials and
    workers do not read every training image again. Images not from a checked cache file are summed.

    The file records the checksum of the pixels it was computed from and carries its own
    (`objectives.data.checksum.seal`): statistics of a cache since rebuilt are computed again, and
    a damaged or edited file is recomputed with one warning, as the cache itself is."""
    source = getattr(images.images, "filename", None)
    try:
        pixels = read_checksum(Path(source)).digest if source else None
    except ValueError:  # no cache file, or another worker is rebuilding it: sum, keep nothing
        pixels = None
    if pixels is None or not source:  # (a checksum was read only from a source)
        return channel_stats(images)
    rows = hashlib.sha256(np.ascontiguousarray(images.index, dtype=np.int64).tobytes()).hexdigest()[:16]
    target = Path(source).with_name(f"{Path(source).stem}.stats-{rows}.json")
    if target.is_file():
        try:
            saved = _read_stats(target, pixels)
        except ValueError as exc:
            report_damaged(target, str(exc), "computing the channel statistics again")
        else:
            if saved is not None:
                return saved
    mean, std = channel_stats(images)
    try:
        atomic_write_text(target, seal({"pixels": pixels, "mean": mean, "std": std}))
    except OSError:
        pass  # a read-only cache still works, only slower
    return mean, std


def _read_stats(target: Path, pixels: str) -> tuple[Triple, Triple] | None:
    """The statistics saved in `target`, or None when they were computed from other pixels than
    those of checksum `pixels` (the cache was rebuilt since); ValueError when the file is damaged."""
    try:
        saved = unseal(target.read_text())
    except OSError as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    if saved.get("pixels") != pixels:
        return None
    try:
        mean, std = (tuple(float(v) for v in saved[k]) for k in ("mean", "std"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    if len(mean) == len(std) == 3 and all(np.isfinite(mean + std)) and min(std) > 0:
        return mean, std
    raise ValueError(f"mean {list(mean)}, std {list(std)} are not 3 finite channels")


def moments(total: np.ndarray, squares: np.ndarray, count: int) -> tuple[Triple, Triple]:
    """Per-channel (mean, std) from sums and sums of squares over `count` pixels."""
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 1e-12))
    return triple(mean), triple(std)


def triple(values: Iterable[float]) -> Triple:
    """Three per-channel values (R, G, B) as floats: the statistics are per channel and a study's
    fixed constants are checked to be three (`ImageClassifierConfig`)."""
    r, g, b = (float(v) for v in values)
    return r, g, b
