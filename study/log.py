"""The tool's messages to the person at the terminal: one `study` logger, one line per message.

Every module logs under ``study`` (`get_logger(__name__)`; `objectives` names
``study.objectives...`` without importing `study`), and one handler on that logger writes each
record as the CLI always has, ``study: warning: ...`` on the stderr of the moment (not of the
import: a test's capture or a notebook may have replaced it). Importing `study` installs the
handler, as importing Optuna installs Optuna's, and the logger does not propagate, so an
application's own root handlers do not print each line twice; one that wants the records itself
calls `hand_over()`.

What is a log and what is not: warnings and debug detail are logs (``-q`` silences the first,
``-v`` adds the second); the lines a command exists to print (a run's per-trial lines and its
summary, `list`'s table, the report) are results on stdout (`study.run.output.Output`), and the
line that ends a failed command is `study.exits`' (never silenced). Python `warnings` the library
raises for its API callers (a damaged record it skips) reach the terminal through this logger
once the CLI has called `configure` (`show_warning`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import TextIO

ROOT = "study"
QUIET, NORMAL, VERBOSE = -1, 0, 1
LEVELS = {QUIET: logging.ERROR, NORMAL: logging.WARNING, VERBOSE: logging.DEBUG}


class OneLine(logging.Formatter):
    """``study: LEVEL: message``, the CLI's format since before it logged (a traceback, attached
    only to a debug record, follows on its own lines)."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{ROOT}: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info).rstrip()
        return text


class StderrHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler on `sys.stderr` as it is when a record is written (like `logging.lastResort`)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(OneLine())

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


HANDLER = StderrHandler()


def _install() -> logging.Logger:
    logger = logging.getLogger(ROOT)
    if HANDLER not in logger.handlers:
        logger.addHandler(HANDLER)
        logger.setLevel(LEVELS[NORMAL])
        logger.propagate = False
    return logger


def get_logger(name: str) -> logging.Logger:
    """The logger of module `name` (``study.x.y``), a child of ``study``."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


def configure(verbosity: int = NORMAL) -> None:
    """What ``-q`` / ``-v`` set: errors only, warnings (the default), or debug detail too; Python
    warnings shown through the logger (`show_warning`)."""
    _install().setLevel(LEVELS[verbosity])
    warnings.showwarning = show_warning


@contextlib.contextmanager
def restored() -> Iterator[None]:
    """The logger's level and `warnings.showwarning` as they were before the block: a command
    called in-process (a test, a notebook) leaves no ``-q`` behind it."""
    logger, shown = _install(), warnings.showwarning
    level = logger.level
    try:
        yield
    finally:
        logger.setLevel(level)
        warnings.showwarning = shown


def verbosity() -> int:
    """The verbosity the `study` logger is set to (what a worker process is started with)."""
    level = logging.getLogger(ROOT).getEffectiveLevel()
    return QUIET if level >= logging.ERROR else VERBOSE if level <= logging.DEBUG else NORMAL


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """`warnings.showwarning` for the CLI: a warning the tool raises (a damaged record it skips)
    as the CLI's other warnings look, one line without a source path, and silenced by ``-q``; the
    source is debug detail."""
    get_logger("warnings").warning("%s", message)
    get_logger("warnings").debug("(%s from %s:%s)", category.__name__, filename, lineno)


def hand_over() -> None:
    """For an application that configures logging itself: no handler of ours, records propagate."""
    logger = logging.getLogger(ROOT)
    logger.removeHandler(HANDLER)
    logger.propagate = True


_install()
