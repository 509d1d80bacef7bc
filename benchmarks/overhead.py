"""Per-trial overhead of the dashboard pages: study wall time with each trial's figures and note on
versus off, same seeds, same trials.

A small ``dr_focal`` study (synthetic-fundus JPEG files, ResNet18 from scratch, lr and loss
sampled, no pruner so that both arms train the very same trials) runs through the real runner,
``study.run.session.run_study``, alternately with ``trial_pages`` off and on (after one unmeasured run
that fills the decode cache and imports everything). The wall time of a study is from its first
trial's start to ``run_study``'s return, which includes waiting for the background thread to draw
the last trial's figures: work moved off the trial still counts. The overhead is the paired ratio
on/off - 1 per repeat; the median over repeats is the figure, its range the noise.

    python benchmarks/overhead.py                      # 3 repeats x 2 arms x 6 trials, ~9 s trials on 2 CPU cores
    python benchmarks/overhead.py --repeats 5 --storage postgresql://user:pw@host/db
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import optuna

from objectives.errors import InputError
from study import storage
from study.dashboard.trial_pages import TrialPages
from study.run.options import RunOptions
from study.run.output import Output
from study.run.session import run_study
from study.spaces import registry

from common import (
    DEFAULT_WORK,
    add_threads_arg,
    percent,
    pick_device,
    print_header,
    set_threads,
    synthetic_jpegs,
    table,
)

GOAL = 0.02


def build_space(args):
    """dr_focal at small fixed settings; ResNet18 from scratch; lr and loss (and focal settings) sampled."""
    space = registry.resolve("dr_focal").with_settings(epochs=args.epochs, image_size=args.image_size,
                                                       batch_size=args.batch_size)
    space = space.pin("arch", "resnet18").pin("pretrained", False)
    return dataclasses.replace(space, study=dataclasses.replace(space.study, trials=args.trials, seed=args.seed))


class PageClock:
    """Seconds the training process itself spends on the pages: in `TrialPages.attach` (inside each
    trial: placeholders and queueing) and in `close` (waiting for the last pages at the end);
    plus the CPU seconds of the renderer process. Timed by wrapping the two methods in this process."""

    def __init__(self) -> None:
        self.attach = self.close = 0.0
        self.renderer_cpu = 0.0

    def __enter__(self) -> "PageClock":
        self._originals = (TrialPages.attach, TrialPages.close)
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)
        attach, close = self._originals

        def timed_attach(pages, *a, **k):
            started = time.perf_counter()
            try:
                return attach(pages, *a, **k)
            finally:
                self.attach += time.perf_counter() - started

        def timed_close(pages, *a, **k):
            started = time.perf_counter()
            try:
                return close(pages, *a, **k)
            finally:
                self.close += time.perf_counter() - started

        TrialPages.attach, TrialPages.close = timed_attach, timed_close
        return self

    def __exit__(self, *exc) -> None:
        TrialPages.attach, TrialPages.close = self._originals
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the renderer has exited by now (close)
        self.renderer_cpu = (after.ru_utime + after.ru_stime) - (self._children.ru_utime + self._children.ru_stime)


def one_study(url: str, space, root: Path, args, pages: bool, log: Path) -> tuple[float, list[dict], int, PageClock]:
    """Run one study; (wall seconds from its first trial's start to the end, each trial's params,
    artifacts attached, the time the pages cost the training process)."""
    opts = RunOptions(space=space, results_dir=args.scratch, study_name=f"overhead-{time.time_ns()}", storage_url=url,
                      data=root, trials=args.trials, device=args.device, pruner="none", trial_pages=pages)
    with open(log, "a") as stream, PageClock() as clock:
        study = run_study(opts, Output(stream=stream, err=stream))
        ended = datetime.datetime.now()  # the clock Optuna stamps datetime_start with
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    wall = (ended - trials[0].datetime_start).total_seconds()
    store = storage.open_storage(url)
    figures = sum(len(optuna.artifacts.get_all_artifact_meta(t, storage=store)) for t in trials)
    return wall, [t.params for t in trials], figures, clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of studies (off, on)")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=240,
                        help="train images (20%% become validation); test = images / 5")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--storage", help="an Optuna RDB URL instead of a fresh SQLite file (e.g. postgresql://user@host/db)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="folder for the JPEG files and the runner's logs")
    parser.add_argument("--seed", type=int, default=0)
    add_threads_arg(parser)
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # what `python -m study` does
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    space = build_space(args)
    device = pick_device(args.device)
    threads = set_threads(args.threads, device)
    print_header(
        "dashboard pages (figures and notes) on vs off: study wall time",
        device,
        study=f"dr_focal space, arch=resnet18 pretrained=false pinned ({space.study.sampler}, no pruner), "
              f"{args.trials} trials x {args.epochs} epochs, {args.repeats} repeats of (off, on)",
        torch_threads=threads,
        data=f"synthetic-fundus JPEG {args.image_size} px, {args.images} train ({args.images // 5} test), "
             f"batch {args.batch_size}",
    )
    args.work.mkdir(parents=True, exist_ok=True)
    root, generated = synthetic_jpegs(args.work, args.images, max(args.images // 5, 5), args.image_size, args.seed)
    print(f"JPEG files: {root} ({'generated in %.1f s' % generated if generated > 1 else 'reused'})")
    log = args.work / "overhead.log"
    log.write_text("")
    with tempfile.TemporaryDirectory(prefix="overhead-", dir=args.work) as tmp:
        args.scratch = Path(tmp)
        if args.storage:
            try:
                storage.check_url(args.storage)
            except InputError as exc:
                raise SystemExit(f"{storage.mask(args.storage)}: {exc}") from None

        def url(tag: str) -> str:
            return args.storage or f"sqlite:///{(args.scratch / f'{tag}.db').resolve()}"

        one_study(url("warmup"), space, root, args, True, log)  # the decode cache, imports (matplotlib), font cache
        rows, ratios, same, clocks = [], [], True, []
        for repeat in range(args.repeats):
            off, off_params, off_figures, _ = one_study(url(f"off{repeat}"), space, root, args, False, log)
            on, on_params, on_figures, clock = one_study(url(f"on{repeat}"), space, root, args, True, log)
            same &= off_params == on_params
            ratios.append(on / off - 1)
            clocks.append((on, clock))
            rows.append([repeat, off, on, on - off, percent(on / off - 1), off_figures, on_figures,
                         clock.attach, clock.close, clock.renderer_cpu])
            print(f"repeat {repeat}: off {off:.1f} s, on {on:.1f} s", flush=True)
    print()
    headers = ["repeat", "off s", "on s", "on - off s", "overhead", "figures off", "figures on", "attach s",
               "close s", "renderer CPU s"]
    print(table(headers, rows))
    path = [(c.attach + c.close) / wall for wall, c in clocks]
    print(f"in the training process (attach inside the trials + waiting for the last pages): median "
          f"{percent(statistics.median(path))} of the 'on' wall time; the renderer process used "
          f"{statistics.median(c.renderer_cpu for _, c in clocks) / args.trials:.2f} CPU s per trial at nice 19")
    per_trial = statistics.median(r[3] for r in rows) / args.trials
    print(f"same trials in both arms (params of every trial): {'yes' if same else 'NO (the arms are not comparable)'}")
    print(f"median extra per trial: {per_trial:.3f} s; runner log: {log}")
    median = statistics.median(ratios)
    print(f"range over repeats: {percent(min(ratios))} .. {percent(max(ratios))}; goal < {GOAL:.0%}: "
          f"{'met' if median < GOAL else 'missed'}")
    print(f"overhead: {100 * median:.1f} % of study wall time (figures and notes on vs off)")


if __name__ == "__main__":
    main()
