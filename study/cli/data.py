"""`study data inspect DIR`: layout, images per class, sizes, channel statistics and every problem."""

from __future__ import annotations

import argparse
from pathlib import Path

from objectives.errors import InputError
from study.cli.common import Parser, add_layout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    inspect = commands.add_parser(
        "inspect", help="layout, images per class, sizes, channel statistics and every problem"
    )
    inspect.add_argument("dir", type=Path, help="the dataset folder, as for run --data")
    add_layout(inspect, "DIR")
    inspect.add_argument(
        "--group-by",
        default="auto",
        help="group images as a study's group_by does: auto (<id>_left/_right), none, or a regex (default auto)",
    )


def run(args: argparse.Namespace) -> int:
    from objectives.data.inspect import inspect_dataset, render
    from study.run.output import Output

    out = Output()
    result = inspect_dataset(args.dir, layout=args.layout, group_by=args.group_by, bar=out.bar)
    for line in render(result):
        out.line(line)
    if result.fatal:
        raise InputError(f"{len(result.fatal)} problem(s) above would stop a run")
    return 0
