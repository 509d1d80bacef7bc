"""Every path built from a study name or a stored value: one-to-one folder names that stay under
`--results`.

Study names come from the command line and from a storage anyone sharing it can write; figure
names come from stored `[report]` labels and parameter values. None of them may reach outside the
results folder (``..``, ``/abs``, ``a/b``) or make two studies share a folder (``a b`` and ``a_b``
did: a trial could resume from another study's checkpoint). So a name made only of letters,
digits and ``._-`` (not ``.`` or ``..``, at most `MAX_BYTES` bytes) is its own folder name, as
before, and any other name becomes a readable prefix plus ``~`` and a hash of the whole name: no
plain name contains ``~``, so distinct names never share a folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore

from objectives.errors import InputError

MAX_BYTES = 100  # a folder name; the files inside add their own (file systems allow 255 bytes)
PREFIX_CHARS = 40


def is_plain(name: str) -> bool:
    """A name that is its own folder name: letters, digits, ``._-``, not ``.``/``..``, short."""
    return (
        bool(name)
        and name not in (".", "..")
        and len(name.encode("utf-8", "surrogatepass")) <= MAX_BYTES
        and all(c.isalnum() or c in "._-" for c in name)
    )


def folder_name(name: str) -> str:
    """The folder of `name`: itself where it `is_plain`, else a prefix of its safe characters, ``~``
    and 12 hex digits of its SHA-256 (one-to-one: a plain name has no ``~``)."""
    if is_plain(name):
        return name
    prefix = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)[:PREFIX_CHARS]
    prefix = prefix.strip(".") or "study"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{prefix}~{digest}"


def under(root: Path, *parts: str) -> Path:
    """`root` / `parts`, refused in one line unless it stays inside `root` (after resolving links
    and ``..``): the last check before a path built from names is written to or deleted from."""
    base = root.resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        shown = "/".join(parts)
        raise InputError(f"{shown!r} would lead outside {root}; refused")
    return root.joinpath(*parts)  # checked; kept as the user spelt --results


def study_folder(results: Path, study_name: str, kind: str | None = None) -> Path:
    """results/<study> (split manifests, the report) or results/<kind>/<study> (checkpoints)."""
    return under(results, *((kind,) if kind else ()), folder_name(study_name))


def figure_file(folder: Path, stem: str, suffix: str = ".png") -> Path:
    """A file in `folder` named from stored values (a figure's labels, which a `[report]` table
    may spell with ``+``): itself where that is plain, else mapped like a study name, so a label
    read from a storage cannot name a path outside the report's folder."""
    plain = is_plain(stem.replace("+", "-")) and stem.strip(".")
    return under(folder, (stem if plain else folder_name(stem)) + suffix)


def artifact_store(results_dir: Path) -> FileSystemArtifactStore:
    """Trial figures live in one file-system store, `results_dir`/artifacts, which `run` writes and
    `dashboard` serves (here, so the dashboard needs nothing of the training code)."""
    path = results_dir / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))
