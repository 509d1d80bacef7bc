"""What the commands share: the parser whose errors are one line and which takes ``-q`` / ``-v``,
the flags several commands take (defined once here), and argparse validators (`type=` functions)
for their values."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from objectives.errors import InputError
from study import log, storage
from study.exits import UsageError

_log = log.get_logger(__name__)
T = TypeVar("T", int, float)
LAYOUTS = "dr_lab, kaggle, cifar10 or imagefolder"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2 (argparse prints the whole usage), and
    every parser of the CLI (the top one, each command's, `data inspect`'s) takes -q / -v."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        add_verbosity(self)

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """-q / -v, into `args.verbosity` (absent when neither is given: a command's own parser then
    keeps what the top one parsed, `study -q run ...` as `study run ... -q`)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=log.QUIET,
                       default=argparse.SUPPRESS, help="errors only: no warnings (results are still printed)")
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=log.VERBOSE,
                       default=argparse.SUPPRESS, help="add debug detail (and the traceback of an error)")


def verbosity_of(args: argparse.Namespace) -> int:
    return getattr(args, "verbosity", log.NORMAL)


def validated(parse: Callable[[str], T], check: Callable[[T], None]) -> Callable[[str], T]:
    """An argparse `type`: `parse` the text, then `check` the value, whose InputError is the one-line
    message as it is (raised as an ArgumentError without an argument, argparse prints it unprefixed;
    a value `parse` cannot read stays argparse's ``invalid int value``)."""

    def convert(text: str) -> T:
        value = parse(text)
        try:
            check(value)
        except InputError as exc:
            raise argparse.ArgumentError(None, str(exc)) from None
        return value

    convert.__name__ = parse.__name__
    return convert


def at_least(low: T, flag: str, parse: Callable[[str], T] = int) -> Callable[[str], T]:
    """An argparse `type`: a number >= `low` (not NaN), else ``FLAG VALUE: must be >= LOW``."""

    def check(value: T) -> None:
        if not value >= low:
            raise InputError(f"{flag} {value}: must be >= {low}")

    return validated(parse, check)


def positive_seconds(flag: str) -> Callable[[str], float]:
    """An argparse `type`: a finite number of seconds > 0 (a limit of 0, a negative one or NaN
    would end a run before its first trial), else ``FLAG VALUE: must be ...``."""

    def check(value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{flag} {value}: must be a finite number of seconds > 0")

    return validated(float, check)


def existing_dir(text: str) -> Path:
    """An argparse `type`: a folder that exists."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentError(None, f"--data {path}: no such directory")
    return path


def add_data(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--data", type=existing_dir, help=help)


def add_layout(parser: argparse.ArgumentParser, what: str = "--data") -> None:
    parser.add_argument("--layout", help=f"force the layout of {what}: {LAYOUTS} (default: detected)")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def add_objective(parser: argparse.ArgumentParser) -> None:
    """--objective: the one way, besides a TOML file of the user's, to let a stored study import an
    objective module that is not built in (a storage anyone can write never decides it alone)."""
    parser.add_argument(
        "--objective",
        metavar="PACKAGE.MODULE",
        help="allow a stored study to import this objective module of your own (must equal the one it recorded)",
    )


STORAGE_ENV = storage.STORAGE_ENV


def add_storage(parser: argparse.ArgumentParser) -> None:
    """--storage and --results, which every command takes; --storage defaults to $STUDY_STORAGE,
    read when the storage is resolved (`storage.resolve`), so its errors can say where it came from."""
    parser.add_argument(
        "--storage",
        default=None,
        help=f"Optuna storage URL (default: ${STORAGE_ENV}, else sqlite:///RESULTS/optuna.db; journal:///FILE.log "
             f"for Optuna's JournalStorage); prefer ${STORAGE_ENV} or ~/.pgpass to a password here, which every "
             f"user of the machine sees in `ps`",
    )
    parser.add_argument("--results", type=Path, default=Path("results"), help="output folder (default: ./results)")


def check_layout(args: argparse.Namespace) -> None:
    if args.layout is not None and args.data is None:
        raise InputError("--layout needs --data")


def storage_of(args: argparse.Namespace, *, must_exist: bool = False) -> storage.Resolved:
    """The storage the command reads: --storage, $STUDY_STORAGE, or the SQLite file under --results
    (a local file, for a command that only reads, must exist)."""
    where = storage.resolve(args.storage, results=args.results)
    _log.debug("storage: %s", where.shown)
    if must_exist:
        storage.require_file(where)
    return where
