"""`study dashboard NAME`: optuna-dashboard on the storage, with the trial-figure artifacts."""

from __future__ import annotations

import argparse

from objectives.errors import InputError
from study.cli.common import add_storage, storage_of, validated


def port_number(value: int) -> None:
    if not 1 <= value <= 65535:
        raise InputError(f"--port {value}: must be 1..65535")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="study name in the storage")
    parser.add_argument("--host", default="127.0.0.1",
                        help="bind address (default 127.0.0.1; the dashboard has no authentication)")
    parser.add_argument("--port", type=validated(int, port_number), default=8080)
    add_storage(parser)


def run(args: argparse.Namespace) -> int:
    from study.dashboard import server as dashboard

    dashboard.serve(args.name, storage_of(args, must_exist=True), args.results, args.host, args.port)
    return 0


