"""`python -m study <command>`: run and list studies, report and ablate them, check data.

One module per command, each with `add_arguments(parser)` and `run(args) -> int`. Every bad input
ends as one line on stderr (``study: error: ...``) and exit code 2, without a traceback and before
anything is written; Ctrl-C exits 130, SIGTERM 143 (`study.exits`). Every command takes ``-q``
(errors only) and ``-v`` (debug detail): its warnings and debug lines are logs of the `study`
logger (`study.log`); what it prints on stdout is its result.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Sequence

import optuna

from study import log
from study.cli import ablate, dashboard, data, listing, migrate, report, run
from study.cli.common import Parser, verbosity_of
from study.exits import exit_code

COMMANDS = {  # name -> (module, help)
    "run": (run, "run or resume a named study"),
    "data": (data, "check a dataset folder before a run"),
    "list": (listing, "named studies and their state in the storage"),
    "report": (report, "ablation tables, importances, confusion matrices, curves"),
    "ablate": (ablate, "re-train the best configuration with factors changed, over fresh paired seeds"),
    "dashboard": (dashboard, "optuna-dashboard on the storage, with trial figures"),
    "migrate": (migrate, "rewrite a schema-1 search-space file as schema 2, the same study"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="study", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (module, help) in COMMANDS.items():
        module.add_arguments(commands.add_parser(name, help=help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def command() -> int:
        args = build_parser().parse_args(argv)
        log.configure(verbosity_of(args))
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        log.get_logger(__name__).debug("%s: Python %s, Optuna %s", args.command, platform.python_version(),
                                       optuna.__version__)
        return COMMANDS[args.command][0].run(args)

    with log.restored():
        return exit_code(command)
