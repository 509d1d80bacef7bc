"""`python -m study.run.worker OPTIONS.json --index I`: worker I of a `run --workers N`.

It runs the trials of the run the options file describes, on the GPU the options give it (set
before anything touches CUDA), and ends as the `study` command would (`study.exits`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.run.worker", description=__doc__.splitlines()[0])
    parser.add_argument("options", type=Path, help="the run's options as JSON (written by the parent)")
    parser.add_argument("--index", type=int, required=True, help="this worker's index, 0 .. N - 1")
    from study import log
    from study.cli.common import add_verbosity, verbosity_of

    add_verbosity(parser)  # the parent's -q / -v (`workers.worker_command`)
    args = parser.parse_args(argv)
    log.configure(verbosity_of(args))

    from study.exits import exit_code
    from study.run.options import RunOptions

    def work() -> int:
        opts = RunOptions.from_json(args.options.read_text())
        if opts.worker_gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = opts.worker_gpus[args.index]  # before torch initialises CUDA
        import optuna

        from study.run.output import Output
        from study.run.session import run_study

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        run_study(dataclasses.replace(opts, worker=args.index), Output())
        return 0

    return exit_code(work)


if __name__ == "__main__":
    sys.exit(main())
