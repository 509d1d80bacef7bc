"""The one progress interface: what decoding, data inspection and the epoch loop report to.

A `BarFactory` opens a bar of a known total with a description, as a context manager; the code
doing the work calls `update(n)` on it after every n units (images, batches). `objectives/` only
calls this interface; the terminal implementation (tqdm on a terminal, nothing in a pipe) lives
with the CLI, and `no_bar` is the silent one for library use and tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol


class Bar(Protocol):
    """A progress bar that has been opened: `update(n)` after n more units of work."""

    def update(self, n: int = 1) -> Any: ...


BarFactory = Callable[[int, str], contextlib.AbstractContextManager[Bar]]


class _Silent:
    def update(self, n: int = 1) -> None:
        pass


SILENT: Bar = _Silent()  # the bar of work that nobody watches


def no_bar(total: int, desc: str) -> contextlib.AbstractContextManager[Bar]:
    """A `BarFactory` that shows nothing."""
    return contextlib.nullcontext(SILENT)
