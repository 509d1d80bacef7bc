"""Files the tool reads back are written atomically: complete, or not there at all.

A kill mid-write, or two workers writing the same file, must never leave a half file where a
later trial or worker would read it (a decode cache, channel statistics, a split manifest, a
checkpoint). So every such file is written to a temporary sibling and renamed into place;
`os.replace` is atomic within a folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """A hidden name beside `path`, unique to this process and thread."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write `path`'s content to; it replaces `path` when the block ends
    without an exception and is removed otherwise. The parent folder is created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_sibling(path)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as partial:
        partial.write_text(text)


def report_damaged(path: Path, reason: str, action: str) -> None:
    """One warning line on stderr for a file the tool wrote and cannot read back (a full disk, an
    interrupted copy of a results folder); the caller rebuilds or restarts what it held, so a
    damaged file costs time, never a traceback or a wrong number."""
    detail = " ".join(str(reason).split()).split(". ")[0][:200]  # torch's load errors run on for lines
    message = f"{path} is damaged ({detail}); {action}"
    if logging.getLogger("study").handlers:  # the tool is loaded: its logger (``-q`` silences it, study.log)
        logging.getLogger("study.objectives").warning("%s", message)
    else:  # objectives used on their own: the same line, as the tool writes it
        print(f"study: warning: {message}", file=sys.stderr, flush=True)
