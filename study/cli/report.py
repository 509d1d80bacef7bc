"""`study report NAME`: tables and figures under RESULTS/NAME, report.md on stdout, and the
summary as a note on the dashboard's study page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from study import paths, records, storage, tables
from study.cli.common import add_storage, storage_of

if TYPE_CHECKING:  # optuna is imported when the command runs
    import optuna


def formats(text: str) -> list[str]:
    """An argparse `type`: a comma-separated subset of the table formats."""
    chosen = [f.strip() for f in text.split(",") if f.strip()]
    if not chosen or any(f not in tables.FORMATS for f in chosen):
        raise argparse.ArgumentError(
            None, f"--format {text}: expected a comma-separated subset of {', '.join(tables.FORMATS)}"
        )
    return chosen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="study name in the storage")
    parser.add_argument(
        "--format",
        type=formats,
        default="md,csv,tex",
        help="comma-separated table formats: md, csv, tex (default: all)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: RESULTS/NAME)")
    parser.add_argument(
        "--ablation", metavar="S", help="the ablation study to report (default: NAME.ablation, when it exists)"
    )
    add_storage(parser)


def run(args: argparse.Namespace) -> int:
    from optuna_dashboard import save_note

    from study.report.build import build_report

    where = storage_of(args, must_exist=True)
    store = storage.open_storage(where, existing=True)
    study = storage.load_study(args.name, store)
    ablation: optuna.Study | None
    if args.ablation is not None:
        ablation = storage.load_study(args.ablation, store)
    else:
        default = args.name + records.ABLATION_SUFFIX
        ablation = storage.load_study(default, store) if default in storage.study_names(store) else None
    folder = paths.folder_name(args.name)
    paths.under(args.results, folder)  # checked; shown as the user's own --results spells it
    out = args.out or args.results / folder
    result = build_report(study, out, args.format, where.shown, ablation)
    save_note(study, result.summary)
    print(result.markdown)
    return 0
