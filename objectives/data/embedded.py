"""The embedded datasets: data a study runs on when no ``--data`` is given, generated once.

`synthetic-fundus` (generated fundus-like JPEGs in the DR lab layout, `objectives.synthetic`) and
`digits` (scikit-learn's real handwritten digits as an ImageFolder tree, `objectives.digits`),
each written once, atomically, under the results' data folder and then read like a user's folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from objectives.errors import InputError


def ensure_embedded(name: str, data_dir: Path, *, train_images: int, test_images: int, seed: int = 0) -> Path:
    """Generate (once) the embedded dataset `name` under `data_dir` and return its folder,
    ``<stem>-<train_images>-<test_images>-seed<seed>``."""
    root = embedded_root(name, data_dir, train_images=train_images, test_images=test_images, seed=seed)
    return EMBEDDED[name].build(root, train_images, test_images, seed)


def embedded_root(name: str, data_dir: Path, *, train_images: int, test_images: int, seed: int = 0) -> Path:
    """The folder `ensure_embedded` generates the embedded dataset `name` in, without writing it:
    a run checks its storage before it writes any file."""
    if name not in EMBEDDED:
        raise InputError(f"unknown embedded dataset {name!r}; known: {', '.join(EMBEDDED)}")
    return data_dir / f"{EMBEDDED[name].stem}-{train_images}-{test_images}-seed{seed}"


def _synthetic_fundus(root: Path, train_images: int, test_images: int, seed: int) -> Path:
    from objectives import synthetic  # only runs that use the embedded data need the generator

    return synthetic.generate(root, train_images, test_images, seed=seed)


def _digits(root: Path, train_images: int, test_images: int, seed: int) -> Path:
    from objectives import digits

    return digits.export(root, train_images, test_images, seed)


@dataclass(frozen=True)
class Embedded:
    """An embedded dataset: the stem of its folder under the data folder and how it is built.

    The stem changes whenever the generator's layout does, so that a folder an older generator
    wrote keeps its name and is never reused (nor overwritten) for the new data.
    """

    stem: str
    build: Callable[[Path, int, int, int], Path]


EMBEDDED: dict[str, Embedded] = {
    # eye pairs; folders named "synthetic-fundus-..." hold the single eyes of an older generator
    "synthetic-fundus": Embedded("synthetic-fundus-pairs", _synthetic_fundus),
    "digits": Embedded("digits", _digits),
}
