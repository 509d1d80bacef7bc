"""`study ablate NAME`: re-train the best configuration of a study with factors changed, over
fresh seeds shared by every variant (see `study.ablation.ablate`)."""

from __future__ import annotations

import argparse

from objectives.errors import InputError
from study.ablation.variants import (
    DEFAULT_RETUNE_SEEDS,
    DEFAULT_RETUNE_TRIALS,
    DEFAULT_SEEDS,
    check_retune_seeds,
    check_retune_trials,
    check_seeds,
)
from study.cli.common import (
    add_data,
    add_device,
    add_layout,
    add_objective,
    add_storage,
    check_layout,
    positive_seconds,
    validated,
)
from study.spaces.space import PRUNERS


def no_pruning(text: str) -> str:
    """An argparse `type`: only "none"; a pruned seed is missing non-randomly."""
    if text != "none":
        raise argparse.ArgumentError(
            None,
            f"--pruner {text}: ablate never prunes: a pruned seed is missing non-randomly "
            f"(the worse ones), which biases every paired difference",
        )
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    seeds = validated(int, check_seeds)
    parser.add_argument("name", help="the study whose best trial is the baseline")
    parser.add_argument(
        "--seeds",
        type=seeds,
        default=DEFAULT_SEEDS,
        help=f"fresh seeds per variant, the same for every variant (default {DEFAULT_SEEDS}, at least 3)",
    )
    parser.add_argument(
        "--factors", help="comma-separated categorical factors for a full factorial grid (default: one at a time)"
    )
    parser.add_argument(
        "--trials-per-cell", type=seeds, help="trials (seeds) per variant or grid cell; overrides --seeds"
    )
    parser.add_argument(
        "--retune",
        metavar="PARAM",
        help="a numeric parameter every variant (baseline included) re-searches on validation first "
        "(recommended: --retune lr when a variant changes the loss: focal and CE want different step sizes)",
    )
    parser.add_argument("--retune-trials", type=validated(int, check_retune_trials), metavar="C",
                        help=f"candidates of --retune per variant (default {DEFAULT_RETUNE_TRIALS})")
    parser.add_argument("--retune-seeds", type=validated(int, check_retune_seeds), metavar="R",
                        help=f"tuning seeds every candidate runs, picked by the mean (default {DEFAULT_RETUNE_SEEDS}; "
                             f"budget R x C trials per variant)")
    parser.add_argument("--study-name", help="store the ablation under this name (default: NAME.ablation)")
    add_data(parser, "dataset folder (default: the one the study ran on)")
    add_layout(parser)
    parser.add_argument("--timeout", type=positive_seconds("--timeout"),
                        help="stop starting new trials after this many seconds")
    add_device(parser)
    add_objective(parser)
    parser.add_argument(
        "--pruner",
        type=no_pruning,
        metavar="{none}",
        help=f"refused unless none ({', '.join(PRUNERS)}): pruning would drop seeds non-randomly",
    )
    add_storage(parser)


def run(args: argparse.Namespace) -> int:
    from study.ablation.ablate import AblationOptions, run_ablation  # torch loads only for commands that train
    from study.run.options import RunOptions
    from study.run.output import Output

    for flag, value in (("--retune-trials", args.retune_trials), ("--retune-seeds", args.retune_seeds)):
        if value is not None and args.retune is None:
            raise InputError(f"{flag} needs --retune PARAM")
    check_layout(args)
    factors = tuple(f.strip() for f in args.factors.split(",") if f.strip()) if args.factors else ()
    seeds = args.trials_per_cell if args.trials_per_cell is not None else args.seeds
    ablation = AblationOptions(
        seeds=seeds,
        factors=factors,
        retune=args.retune,
        study_name=args.study_name,
        retune_trials=DEFAULT_RETUNE_TRIALS if args.retune_trials is None else args.retune_trials,
        retune_seeds=DEFAULT_RETUNE_SEEDS if args.retune_seeds is None else args.retune_seeds,
    )
    opts = RunOptions(objective=args.objective, results_dir=args.results, storage_url=args.storage, data=args.data,
                      layout=args.layout, timeout=args.timeout, device=args.device)
    run_ablation(args.name, ablation, opts, Output())
    return 0
