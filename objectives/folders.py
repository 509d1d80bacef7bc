"""Dataset folders written once, atomically: what the embedded datasets are built with.

A generated dataset must never look whole when it is not (a crash half-way, two workers at once),
and must never overwrite a folder that is not its own. So the files are written into a temporary
sibling, a ``COMPLETE`` marker holding the generation parameters goes in last, and the sibling is
renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from objectives.atomic import temporary_sibling

MARKER = "COMPLETE"


def build_once(root: Path, record: Mapping[str, object], write: Callable[[Path], None], *, version: int = 1) -> Path:
    """`root`, after `write(folder)` has filled it, unless it already holds this dataset.

    `record` names the dataset (key ``dataset``) and every parameter that decides its bytes; it
    is stored in the marker (with `version`, for people) and compared on reuse. If `root` is
    complete with the same record it is returned at once; if it holds anything else,
    FileExistsError (it is not ours to overwrite). Two processes racing: the loser's rename fails,
    it deletes its copy and returns the winner's.
    """
    root = Path(root)
    if is_complete(root, record):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(root)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run with this very pid and thread
    try:
        tmp.mkdir()
        write(tmp)
        (tmp / MARKER).write_text(json.dumps({**record, "version": version}, sort_keys=True) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, root)  # atomic; fails when another process has put its dataset there first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_complete(root, record):
            return root
        raise
    return root


def is_complete(root: Path, record: Mapping[str, object]) -> bool:
    """True if `root` already holds the dataset `record` describes; False if it is absent (or an
    empty folder, which the atomic rename may replace); FileExistsError for anything else, which
    we never overwrite."""
    name = record.get("dataset", "generated")
    if not root.exists():
        return False
    if root.is_dir() and not any(root.iterdir()):
        return False
    try:
        found = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        raise FileExistsError(
            f"{root} exists but is not a complete {name} dataset (no readable {MARKER} "
            f"marker); remove it or choose another folder"
        ) from None
    wanted = dict(record)
    theirs = {key: found.get(key) for key in wanted} if isinstance(found, dict) else found
    if theirs != wanted:
        raise FileExistsError(f"{root} holds a {name} dataset generated with {theirs}, not {wanted}; "
                              f"remove it or choose another folder")
    return True
