"""`python -m study <command>`: run and list studies, check data.

Every bad input ends as one line on stderr (``study: error: ...``) and exit code 2, without a
traceback and before anything is written; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import optuna

from objectives.errors import InputError
from study import registry, storage
from study.space import PRUNERS, parse_value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2 (argparse prints the whole usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="study", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run or resume a named study")
    run.add_argument("name", help="a named study (see `list`) or a path to a search-space .toml")
    run.add_argument("--data", type=Path, help="dataset folder (DR lab CSVs, Kaggle trainLabels.csv, cifar-10-batches-py or train/<class>/<image>); default: the embedded dataset")
    run.add_argument("--layout", help="force the layout of --data: dr_lab, kaggle, cifar10 or imagefolder (default: detected)")
    run.add_argument("--trials", type=int, help="target total of finished trials in the study (default: the TOML's)")
    run.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE", help="pin a setting or parameter (repeatable)")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument("--pruner", choices=PRUNERS, help="override the TOML's pruner")
    run.add_argument("--study-name", help="store under this name (fork a study)")
    run.add_argument("--allow-space-change", action="store_true", help="continue a study whose search space or data changed")
    run.add_argument("--no-cache", action="store_true", help="decode images in memory instead of the shared cache")
    run.add_argument("--workers", type=int, default=1, help="worker processes on this machine (one per GPU where there are several)")
    run.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS",
                     help="worker heartbeat; a trial silent for 3 intervals is failed and retried (default 60)")
    run.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                     help="save a running trial's state at most this often, for resume (0: every epoch; default 60)")
    run.add_argument("--compile", action="store_true", help="torch.compile each trial's model (pays on long GPU trials)")
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    _common(run)

    data = commands.add_parser("data", help="check a dataset folder before a run")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    inspect = data_commands.add_parser("inspect", help="layout, images per class, sizes, channel statistics and every problem")
    inspect.add_argument("dir", type=Path, help="the dataset folder, as for run --data")
    inspect.add_argument("--layout", help="force a layout: dr_lab, kaggle, cifar10 or imagefolder (default: detected)")
    inspect.add_argument("--group-by", default="auto",
                         help="group images as a study's group_by does: auto (<id>_left/_right), none, or a regex (default auto)")

    listing = commands.add_parser("list", help="named studies and their state in the storage")
    _common(listing)

    report = commands.add_parser("report", help="ablation tables, importances, confusion matrices, curves")
    report.add_argument("name", help="study name in the storage")
    report.add_argument("--format", default="md,csv,tex", help="comma-separated table formats: md, csv, tex (default: all)")
    report.add_argument("--out", type=Path, help="output folder (default: RESULTS/NAME)")
    report.add_argument("--ablation", metavar="S", help="the ablation study to report (default: NAME.ablation, when it exists)")
    _common(report)

    ablate = commands.add_parser("ablate", help="re-train the best configuration with factors changed, over fresh paired seeds")
    ablate.add_argument("name", help="the study whose best trial is the baseline")
    ablate.add_argument("--seeds", type=int, default=5,
                        help="fresh seeds per variant, the same for every variant (default 5, at least 3)")
    ablate.add_argument("--factors", help="comma-separated categorical factors for a full factorial grid (default: one at a time)")
    ablate.add_argument("--trials-per-cell", type=int, help="trials (seeds) per variant or grid cell; overrides --seeds")
    ablate.add_argument("--retune", metavar="PARAM", help="a numeric parameter every variant (baseline included) re-searches on validation first")
    ablate.add_argument("--retune-trials", type=int, metavar="N", help="candidates of --retune per variant (default 8)")
    ablate.add_argument("--study-name", help="store the ablation under this name (default: NAME.ablation)")
    ablate.add_argument("--data", type=Path, help="dataset folder (default: the one the study ran on)")
    ablate.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    ablate.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ablate.add_argument("--pruner", choices=PRUNERS, help="refused: pruning would drop seeds non-randomly")
    _common(ablate)

    dashboard = commands.add_parser("dashboard", help="optuna-dashboard on the storage, with trial figures")
    dashboard.add_argument("name", help="study name in the storage")
    dashboard.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=8080)
    _common(dashboard)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///RESULTS/optuna.db)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="output folder (default: ./results)")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the running trial is recorded as interrupted."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        handlers = {"run": _run, "list": _list, "report": _report, "ablate": _ablate, "dashboard": _dashboard, "data": _data}
        return handlers[args.command](args)
    except InputError as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("study: terminated (SIGTERM); run again to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("study: interrupted; run again to resume", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        code = getattr(exc, "code", None)  # a worker process failed; it printed its own reason
        if code is None:
            raise
        print(f"study: error: {exc}", file=sys.stderr)
        return code


def _space_or_stored(args: argparse.Namespace):
    """The named study or TOML file `args.name`; where neither exists here (another machine, a
    shared PostgreSQL study), the space a stored study of that name recorded, so it resumes as it ran."""
    try:
        return registry.resolve(args.name)
    except InputError:
        url = args.storage or storage.default_url(args.results)
        if storage.sqlite_file(url) is not None and not storage.sqlite_file(url).exists():
            raise
        try:
            study = optuna.load_study(study_name=args.study_name or args.name, storage=storage.open_storage(url))
        except KeyError:
            raise InputError(f"unknown study {args.name!r}: not a named study, a .toml file or a study in "
                             f"{storage.mask(url)}") from None
        recorded = registry.recorded_space(study)
        if recorded is None:
            raise
        return recorded


def _run(args: argparse.Namespace) -> int:
    from study.runner import Output, RunOptions, run_study  # torch loads only for commands that train

    if args.trials is not None and args.trials < 1:
        raise InputError("--trials must be >= 1")
    if args.workers < 1 or args.heartbeat < 1:
        raise InputError("--workers and --heartbeat must be >= 1")
    if args.checkpoint_every < 0:
        raise InputError("--checkpoint-every must be >= 0")
    space = _space_or_stored(args)
    for item in args.sets:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--set {item!r}: expected NAME=VALUE")
        space = space.pin(name.strip(), parse_value(raw.strip()))
    if args.data is not None and not args.data.is_dir():
        raise InputError(f"--data {args.data}: no such directory")
    if args.layout is not None and args.data is None:
        raise InputError("--layout needs --data")
    opts = RunOptions(
        space=space,
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
        worker=args.worker_index,
        heartbeat=args.heartbeat,
        checkpoint_every=args.checkpoint_every,
        compile=args.compile,
    )
    run_study(opts, Output())
    return 0


def _data(args: argparse.Namespace) -> int:
    from objectives.data.inspect import inspect_dataset, render
    from study.runner import Output

    out = Output()
    result = inspect_dataset(args.dir, layout=args.layout, group_by=args.group_by, bar=out.bar)
    for line in render(result):
        out.line(line)
    if result.fatal:
        raise InputError(f"{len(result.fatal)} problem(s) above would stop a run")
    return 0


def _list(args: argparse.Namespace) -> int:
    from optuna.trial import TrialState

    url = args.storage or storage.default_url(args.results)
    named = registry.named_studies()
    present = {}
    if storage.sqlite_file(url) is None or storage.sqlite_file(url).exists():
        store = storage.open_storage(url)
        present = {s.study_name: s for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    print(f"storage: {storage.mask(url)}")
    print(f"{'study':<24} {'complete':>8} {'pruned':>7} {'failed':>7} {'running':>8}  best")
    for name in sorted(set(named) | set(present)):
        if name not in present:
            print(f"{name:<24} {'-':>8} {'-':>7} {'-':>7} {'-':>8}  not started")
            continue
        study = optuna.load_study(study_name=name, storage=store)
        trials = study.get_trials(deepcopy=False)
        counts = {s: sum(t.state == s for t in trials) for s in TrialState}
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        metric = study.user_attrs.get("metric", "value")
        best = f"{metric}={study.best_value:.4f} (trial {study.best_trial.number})" if complete else "-"
        reasons = Counter(str(t.user_attrs.get("fail_reason") or "stale worker") for t in trials if t.state == TrialState.FAIL)
        failed = "; failed: " + ", ".join(f"{r} x{n}" for r, n in reasons.most_common()) if reasons else ""
        print(f"{name:<24} {counts[TrialState.COMPLETE]:>8} {counts[TrialState.PRUNED]:>7} "
              f"{counts[TrialState.FAIL]:>7} {counts[TrialState.RUNNING]:>8}  {best}{failed}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from optuna_dashboard import save_note

    from study import analysis, tables
    from study.analysis import ABLATION_SUFFIX as SUFFIX

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in tables.FORMATS]
    if bad or not formats:
        raise InputError(f"--format {args.format}: expected a comma-separated subset of {', '.join(tables.FORMATS)}")
    url = args.storage or storage.default_url(args.results)
    if storage.sqlite_file(url) is not None and not storage.sqlite_file(url).exists():
        raise InputError(f"no storage at {storage.sqlite_file(url)}; run a study first")
    store = storage.open_storage(url)
    study = analysis.load(args.name, store)
    if args.ablation is not None:
        ablation = analysis.load(args.ablation, store)
    else:
        names = {s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
        ablation = optuna.load_study(study_name=args.name + SUFFIX, storage=store) if args.name + SUFFIX in names else None
    result = analysis.build_report(study, args.out or args.results / args.name, formats, storage.mask(url), ablation)
    save_note(study, result.summary)
    print(result.markdown)
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from study.ablate import DEFAULT_RETUNE_TRIALS, AblationOptions, run_ablation
    from study.runner import Output, RunOptions

    if args.pruner not in (None, "none"):
        raise InputError(f"--pruner {args.pruner}: ablate never prunes: a pruned seed is missing non-randomly (the worse ones), "
                         f"which biases every paired difference")
    if args.retune_trials is not None and args.retune is None:
        raise InputError("--retune-trials needs --retune PARAM")
    if args.data is not None and not args.data.is_dir():
        raise InputError(f"--data {args.data}: no such directory")
    factors = tuple(f.strip() for f in args.factors.split(",") if f.strip()) if args.factors else ()
    seeds = args.trials_per_cell if args.trials_per_cell is not None else args.seeds
    ablation = AblationOptions(seeds=seeds, factors=factors, retune=args.retune, study_name=args.study_name,
                               retune_trials=DEFAULT_RETUNE_TRIALS if args.retune_trials is None else args.retune_trials)
    placeholder = registry.resolve("dr_focal")  # replaced by the parent study's own space
    opts = RunOptions(space=placeholder, results_dir=args.results, storage_url=args.storage, data=args.data,
                      timeout=args.timeout, device=args.device)
    run_ablation(args.name, ablation, opts, Output())
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from study import dashboard
    from study.runner import artifact_store

    url = args.storage or storage.default_url(args.results)
    if storage.sqlite_file(url) is not None and not storage.sqlite_file(url).exists():
        raise InputError(f"no storage at {storage.sqlite_file(url)}; run a study first")
    dashboard.serve(args.name, url, artifact_store(args.results), args.host, args.port)
    return 0
