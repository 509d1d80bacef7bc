"""Pruning: epochs trained, wall time and best value of one small study run without and with pruners.

The same study (the ``dr_focal`` search space from ``study.registry``, pinned to ResNet18 from
scratch with cross entropy so that only the learning rate is sampled, over 1e-4..1e-1 log, where
it decides between learning nothing and learning well) is run through the real runner
(``study.runner.run_study``) once per pruner: ``none``, ``median`` (``MedianPruner`` with
``n_startup_trials`` / ``n_warmup_steps`` from the TOML's ``startup_trials`` / ``warmup_epochs``,
overridable here) and ``hyperband``. Data: synthetic-fundus JPEG files from
``objectives.synthetic`` at a small size, passed as ``--data`` so the real loading path runs. Each
run has its own SQLite storage in a temporary folder and the same study name and seeds. With the
default ``--sampler random`` (seeded), trial k gets the same learning rate and trains with seed k in
every run, whatever was pruned before it: the runs differ only by what the pruner stops. With
``--sampler tpe`` (a study's default) only the first 10 trials (TPE's random start-up) coincide;
later suggestions follow each run's own, pruned, history.

Measured per run: epochs trained (the sum of the lengths of every trial's ``curves`` user attr,
pruned trials included), wall time of ``run_study``, and the best validation value (kappa);
printed as epochs and time saved against ``none`` and the best value's relative difference.
The issue's goal: >= 50 % of epochs saved with the best value within 1 % of the unpruned study.

    python benchmarks/pruning.py
    python benchmarks/pruning.py --trials 10 --epochs 4 --pruners none,median,median/2/1,hyperband --sampler tpe
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import torch

from common import DEFAULT_WORK, add_threads_arg, set_threads, csv_strs, percent, pick_device, print_header, synthetic_jpegs, table
from optuna.trial import TrialState
from study import registry
from study.runner import Output, RunOptions, run_study

STUDY_NAME = "pruning-bench"
GOAL_SAVED, GOAL_BEST = 0.50, 0.01


def build_space(args):
    """dr_focal with small fixed settings; arch, pretraining and loss pinned, lr sampled."""
    space = registry.resolve("dr_focal")
    space = space.with_settings(epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size)
    for name, value in (("arch", args.arch), ("pretrained", False), ("loss", "ce")):
        space = space.pin(name, value)
    study = space.study
    study = dataclasses.replace(
        study,
        trials=args.trials,
        seed=args.seed,
        sampler=args.sampler,
        startup_trials=study.startup_trials if args.startup_trials is None else args.startup_trials,
        warmup_epochs=study.warmup_epochs if args.warmup_epochs is None else args.warmup_epochs,
    )
    return dataclasses.replace(space, study=study)


def run_space(space, spec: str):
    """(pruner name, space) for one entry of --pruners: ``median/S/W`` overrides the median
    pruner's startup trials S and warmup epochs W for that run only (as [study] startup_trials /
    warmup_epochs of the TOML would)."""
    name, *numbers = spec.split("/")
    if name not in ("none", "median", "hyperband") or len(numbers) not in (0, 2) or (numbers and name != "median"):
        raise SystemExit(f"--pruners: {spec!r} is not none, median, median/STARTUP/WARMUP or hyperband")
    if numbers:
        startup, warmup = (int(v) for v in numbers)
        space = dataclasses.replace(space, study=dataclasses.replace(space.study, startup_trials=startup, warmup_epochs=warmup))
    return name, space


def summarize(study: optuna.Study) -> dict:
    trials = study.get_trials(deepcopy=False)
    epochs = [len(t.user_attrs.get("curves", {}).get("epoch", [])) for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return {
        "trials": trials,
        "epochs": sum(epochs),
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "best": best.value if best else float("nan"),
        "best_trial": best.number if best else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruners", default="none,median,hyperband",
                        help="comma-separated runs, the first is the reference; median/S/W sets the median pruner's "
                             "startup trials S and warmup epochs W for that run (default %(default)s)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sampler", default="random", choices=("random", "tpe"),
                        help="random (default): trial k gets the same lr in every run whatever was pruned, so the runs "
                             "differ only by the pruner; tpe: what a study uses, its later suggestions follow the pruned history")
    parser.add_argument("--images", type=int, default=240, help="train images (20%% become validation); test = images / 5")
    parser.add_argument("--image-size", type=int, default=48, help="px (default %(default)s; 64 px takes about 1.6x as long)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet50"))
    parser.add_argument("--startup-trials", type=int, help="MedianPruner n_startup_trials (default: the TOML's startup_trials)")
    parser.add_argument("--warmup-epochs", type=int, help="MedianPruner n_warmup_steps (default: the TOML's warmup_epochs)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="folder for the JPEG files and the runner's logs")
    parser.add_argument("--seed", type=int, default=0)
    add_threads_arg(parser)
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # what `python -m study` does
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    pruners = csv_strs(args.pruners)
    space = build_space(args)
    device = pick_device(args.device)
    threads = set_threads(args.threads, device)
    print_header(
        "pruning: one study, run once per pruner through study.runner.run_study",
        device,
        study=f"dr_focal space, arch={args.arch} pretrained=false loss=ce pinned, lr sampled "
              f"({space.study.sampler}, seed {args.seed}), target {args.trials} finished trials x {args.epochs} epochs",
        torch_threads=threads,
        data=f"synthetic-fundus JPEG {args.image_size} px, {args.images} train ({args.images // 5} test), batch {args.batch_size}",
        pruners=f"{', '.join(pruners)}; median: n_startup_trials={space.study.startup_trials}, "
                f"n_warmup_steps={space.study.warmup_epochs}; hyperband: min 1, max {args.epochs} epochs, factor 3",
    )
    args.work.mkdir(parents=True, exist_ok=True)
    root, generated = synthetic_jpegs(args.work, args.images, max(args.images // 5, 5), args.image_size, args.seed)
    print(f"JPEG files: {root} ({'generated in %.1f s' % generated if generated > 1 else 'reused'})")

    runs: dict[str, dict] = {}
    scratch = Path(tempfile.mkdtemp(prefix="pruning-", dir=args.work))
    kept = args.work / "pruning-storages"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    try:
        # Not counted: one 1-epoch trial first, so that one-time costs (imports, the first figure,
        # oneDNN kernels, the decode cache) do not land on whichever pruner runs first.
        warm = dataclasses.replace(space.with_settings(epochs=1), study=dataclasses.replace(space.study, trials=1))
        with open(args.work / "pruning-warmup.log", "w") as stream:
            started = time.perf_counter()
            run_study(RunOptions(space=warm, results_dir=scratch / "warmup", study_name=STUDY_NAME, data=root, trials=1,
                                 device=args.device, pruner="none"), Output(stream=stream, err=stream))
        print(f"warm-up (not counted): one 1-epoch trial in {time.perf_counter() - started:.1f} s")
        for label in pruners:
            pruner, run = run_space(space, label)
            safe = label.replace("/", "-")
            results = scratch / safe
            log = args.work / f"pruning-{safe}.log"
            opts = RunOptions(space=run, results_dir=results, study_name=STUDY_NAME,
                              storage_url=f"sqlite:///{(kept / f'{safe}.db').resolve()}", data=root,
                              trials=args.trials, device=args.device, pruner=pruner)
            with open(log, "w") as stream:
                # Whatever a trial draws from torch's global generator starts from the same state
                # in every run (older checkouts built the model before `fit` seeded torch, so
                # trial 0's weights depended on what this process had run before).
                torch.manual_seed(args.seed)
                started = time.perf_counter()
                study = run_study(opts, Output(stream=stream, err=stream))
                wall = time.perf_counter() - started
            runs[label] = {**summarize(study), "wall": wall}
            r = runs[label]
            print(f"  {label:<10} {r['epochs']:3d} epochs, {r['wall']:6.1f} s, best {r['best']:.4f} "
                  f"(trial {r['best_trial']}); runner log: {log}", flush=True)
        print(f"storages kept for inspection: {kept}/<pruner>.db (study {STUDY_NAME})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print()
    ref_name = pruners[0]
    ref = runs[ref_name]
    rows = []
    for name, r in runs.items():
        saved = 1 - r["epochs"] / ref["epochs"] if ref["epochs"] else float("nan")
        faster = 1 - r["wall"] / ref["wall"]
        diff = (r["best"] - ref["best"]) / abs(ref["best"]) if ref["best"] else float("nan")
        rows.append([name, f"{r['complete']}/{r['pruned']}/{r['failed']}", r["epochs"], percent(saved), r["wall"], percent(faster),
                     f"{r['best']:.4f}", r["best_trial"], percent(diff)])
        r.update(saved=saved, diff=diff, faster=faster)
    print(table(["pruner", "complete/pruned/fail", "epochs", "epochs saved", "wall s", "time saved", "best val kappa",
                 "best trial", "best vs " + ref_name], rows))

    print()
    print("per trial (same number = same seed; same lr with --sampler random, or while TPE is in its random start-up); validation kappa per epoch:")
    n = max(len(r["trials"]) for r in runs.values())
    rows = []
    for k in range(n):
        row = [k]
        for r in runs.values():
            t = r["trials"][k] if k < len(r["trials"]) else None
            if t is None:
                row += ["", ""]
                continue
            curve = t.user_attrs.get("curves", {}).get("val_kappa", [])
            mark = {TrialState.PRUNED: " pruned", TrialState.FAIL: " failed"}.get(t.state, "")
            row += [f"{t.params.get('lr', float('nan')):.2g}", " ".join(f"{v:.2f}" for v in curve) + mark]
        rows.append(row)
    print(table(["trial"] + [f"{name} {col}" for name in runs for col in ("lr", "kappa by epoch")], rows))
    print()
    print()
    for name, r in runs.items():
        if name == ref_name:
            continue
        print(f"ratio epochs {name}/{ref_name}: {r['epochs'] / ref['epochs']:.2f} (saved {percent(r['saved'])}); "
              f"wall {name}/{ref_name}: {r['wall'] / ref['wall']:.2f}; best {name} vs {ref_name}: {percent(r['diff'])}")
    for name, r in runs.items():
        if name == ref_name:
            continue
        met = r["saved"] >= GOAL_SAVED and not math.isnan(r["diff"]) and abs(r["diff"]) <= GOAL_BEST
        print(f"goal (>= {GOAL_SAVED:.0%} epochs saved, best within {GOAL_BEST:.0%}) with {name}: {'met' if met else 'missed'} "
              f"({percent(r['saved'])} saved, best {percent(r['diff'])})")


if __name__ == "__main__":
    main()
