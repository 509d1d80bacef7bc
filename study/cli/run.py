"""`study run NAME`: run or resume a study until it holds its target of finished trials."""

from __future__ import annotations

import argparse

from objectives.errors import InputError
from study import storage
from study.cli.common import (
    add_data,
    add_device,
    add_layout,
    add_objective,
    add_storage,
    at_least,
    check_layout,
    positive_seconds,
    storage_of,
)
from study.spaces import registry
from study.spaces.space import PRUNERS, SearchSpace, parse_value

DATA_HELP = ("dataset folder (DR lab CSVs, Kaggle trainLabels.csv, cifar-10-batches-py or train/<class>/<image>); "
             "default: the embedded dataset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a named study (see `list`) or a path to a search-space .toml")
    add_data(parser, DATA_HELP)
    add_layout(parser)
    parser.add_argument(
        "--trials",
        type=at_least(1, "--trials"),
        help="target total of finished trials in the study (default: the TOML's)",
    )
    parser.add_argument("--timeout", type=positive_seconds("--timeout"),
                        help="stop starting new trials after this many seconds")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                        help="pin a setting or parameter (repeatable)")
    add_device(parser)
    parser.add_argument("--pruner", choices=PRUNERS, help="override the TOML's pruner")
    parser.add_argument("--study-name", help="store under this name (fork a study)")
    parser.add_argument(
        "--allow-space-change", action="store_true", help="continue a study whose search space or data changed"
    )
    add_objective(parser)
    parser.add_argument("--no-cache", action="store_true", help="decode images in memory instead of the shared cache")
    parser.add_argument("--workers", type=at_least(1, "--workers"), default=1,
                        help="worker processes on this machine (one per GPU where there are several)")
    parser.add_argument("--heartbeat", type=at_least(1, "--heartbeat"), default=60, metavar="SECONDS",
                        help="worker heartbeat; a trial silent for 3 intervals is failed and retried (default 60)")
    parser.add_argument(
        "--checkpoint-every",
        type=at_least(0.0, "--checkpoint-every", float),
        default=60.0,
        metavar="SECONDS",
        help="save a running trial's state at most this often, for resume (0: every epoch; default 60)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile each trial's model (pays on long GPU trials)"
    )
    add_storage(parser)


def run(args: argparse.Namespace) -> int:
    from study.run.options import RunOptions  # torch loads only for commands that train
    from study.run.output import Output
    from study.run.session import run_study

    space = space_or_stored(args)
    for item in args.sets:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--set {item!r}: expected NAME=VALUE")
        space = space.pin(name.strip(), parse_value(raw.strip()))
    check_layout(args)
    opts = RunOptions(
        space=space,
        objective=args.objective,
        results_dir=args.results,
        study_name=args.study_name,
        storage_url=args.storage,
        data=args.data,
        layout=args.layout,
        trials=args.trials,
        timeout=args.timeout,
        device=args.device,
        pruner=args.pruner,
        cache=not args.no_cache,
        allow_space_change=args.allow_space_change,
        workers=args.workers,
        heartbeat=args.heartbeat,
        checkpoint_every=args.checkpoint_every,
        compile=args.compile,
    )
    run_study(opts, Output())
    return 0


def space_or_stored(args: argparse.Namespace) -> SearchSpace:
    """The named study or TOML file `args.name`; where neither exists here (another machine, a
    shared PostgreSQL study), the space a stored study of that name recorded, so it resumes as it ran.

    Only "no such named study or file" looks in the storage: a file's own error (bad TOML, an
    unknown key) is the user's to see. A stored space's objective must be built in or `--objective`."""
    try:
        return registry.resolve(args.name)
    except registry.UnknownStudy:
        where = storage_of(args)
        if where.absent:
            raise
        name = args.study_name or args.name
        store = storage.open_storage(where)
        if name not in storage.study_names(store):
            raise InputError(f"unknown study {args.name!r}: not a named study, a .toml file or a study in "
                             f"{where.shown}") from None
        recorded = registry.recorded_space(storage.load_study(name, store), objective=args.objective)
        if recorded is None:
            raise
        return recorded
