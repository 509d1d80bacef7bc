"""`study dashboard NAME`: optuna-dashboard on the storage, with the trial-figure artifacts."""

from __future__ import annotations

import argparse

from study.cli.common import add_storage, storage_url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="study name in the storage")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080)
    add_storage(parser)


def run(args: argparse.Namespace) -> int:
    from study import dashboard
    from study.run.trainer import artifact_store

    url = storage_url(args, must_exist=True)
    dashboard.serve(args.name, url, artifact_store(args.results), args.host, args.port)
    return 0
