"""Pruning: epochs trained, wall time and best value of one small study run without and with pruners.

The same study (the ``dr_focal`` search space from ``study.registry``, pinned to ResNet18 from
scratch with cross entropy so that only the learning rate is sampled, over 1e-4..1e-1 log, where
it decides between learning nothing and learning well) is run through the real runner
(``study.run.session.run_study``) once per pruner: ``none``, ``median`` (``MedianPruner`` with
``n_startup_trials`` / ``n_warmup_steps`` from the TOML's ``startup_trials`` / ``warmup_epochs``,
overridable here) and ``hyperband``, and that for several study seeds. The protocol keeps the
study's proportions: 15 epochs per trial as ``dr_focal``, a warm-up of at most a third of them
(the pruner counts fine-tuning epochs, and a trial's last epoch is never pruned). Data:
synthetic-fundus JPEG files from ``objectives.synthetic`` at a small size, passed as ``--data`` so
the real loading path runs. Each run has its own SQLite storage and the same study name. With the
default ``--sampler random`` (seeded), trial k gets the same learning rate and trains with the same
seed in every run of one study seed, whatever was pruned before it: the runs differ only by what
the pruner stops. With ``--sampler tpe`` only TPE's random start-up trials coincide.

Measured per run: epochs trained (the sum of the lengths of every trial's ``curves`` user attr,
pruned trials included), wall time of ``run_study``, and the best validation value (kappa);
printed per seed as epochs and time saved against ``none`` and the best value's relative
difference, then as mean and range over the seeds. The goal: >= 50 % of epochs saved with the
best value within 1 % of the unpruned study, at every seed.

    python benchmarks/pruning.py
    python benchmarks/pruning.py --seeds 0,1,2,3 --pruners none,median/4/3,median/4/5,hyperband
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
from optuna.trial import TrialState

from study import registry
from study.run.options import RunOptions
from study.run.output import Output
from study.run.session import run_study

from common import (
    DEFAULT_WORK,
    add_threads_arg,
    csv_strs,
    percent,
    pick_device,
    print_header,
    set_threads,
    synthetic_jpegs,
    table,
)

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
        space = dataclasses.replace(
            space, study=dataclasses.replace(space.study, startup_trials=startup, warmup_epochs=warmup)
        )
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


def run_seed(args, space, pruners: list[str], root: Path, seed: int, kept: Path) -> dict[str, dict]:
    """Every pruner of `pruners` on the study seeded `seed` (sampler, trial seeds), each in its
    own storage: {label: summary with wall time}."""
    seeded = dataclasses.replace(space, study=dataclasses.replace(space.study, seed=seed))
    runs: dict[str, dict] = {}
    scratch = Path(tempfile.mkdtemp(prefix="pruning-", dir=args.work))
    try:
        for label in pruners:
            pruner, run = run_space(seeded, label)
            safe = f"{label.replace('/', '-')}-seed{seed}"
            log = args.work / f"pruning-{safe}.log"
            opts = RunOptions(space=run, results_dir=scratch / safe, study_name=STUDY_NAME,
                              storage_url=f"sqlite:///{(kept / f'{safe}.db').resolve()}", data=root,
                              trials=args.trials, device=args.device, pruner=pruner)
            with open(log, "w") as stream:
                torch.manual_seed(seed)  # whatever a trial draws from the global generator starts alike in every run
                started = time.perf_counter()
                study = run_study(opts, Output(stream=stream, err=stream))
                wall = time.perf_counter() - started
            runs[label] = {**summarize(study), "wall": wall}
            r = runs[label]
            print(f"  seed {seed} {label:<12} {r['epochs']:3d} epochs, {r['wall']:6.1f} s, best {r['best']:.4f} "
                  f"(trial {r['best_trial']}); runner log: {log}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ref = runs[pruners[0]]
    for r in runs.values():
        r["saved"] = 1 - r["epochs"] / ref["epochs"] if ref["epochs"] else float("nan")
        r["faster"] = 1 - r["wall"] / ref["wall"]
        r["diff"] = (r["best"] - ref["best"]) / abs(ref["best"]) if ref["best"] else float("nan")
    return runs


def spread(values: list[float]) -> str:
    """mean [min, max] as percentages."""
    return f"{percent(sum(values) / len(values))} [{percent(min(values))}, {percent(max(values))}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruners", default="none,median,hyperband",
                        help="comma-separated runs, the first is the reference; median/S/W sets the median pruner's "
                             "startup trials S and warmup epochs W for that run (default %(default)s)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=15, help="epochs per trial (default %(default)s, as dr_focal)")
    parser.add_argument(
        "--seeds",
        default="0,1,2",
        help="study seeds (sampler and trial seeds), each a full set of runs; >= 3 for a mean and range",
    )
    parser.add_argument(
        "--sampler",
        default="random",
        choices=("random", "tpe"),
        help="random (default): trial k gets the same lr in every run whatever was pruned, so the runs "
        "differ only by the pruner; tpe: what a study uses, its later suggestions follow the pruned history",
    )
    parser.add_argument(
        "--images", type=int, default=240, help="train images (20%% become validation); test = images / 5"
    )
    parser.add_argument("--image-size", type=int, default=32, help="px (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet50"))
    parser.add_argument(
        "--startup-trials", type=int, help="MedianPruner n_startup_trials (default: the TOML's startup_trials)"
    )
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        help="MedianPruner n_warmup_steps in fine-tuning epochs (default: the TOML's, at most a third of --epochs)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help="folder for the JPEG files and the runner's logs"
    )
    add_threads_arg(parser)
    args = parser.parse_args()
    if args.warmup_epochs is None:  # the study's proportions: warm-up at most a third of the epochs
        args.warmup_epochs = min(registry.resolve("dr_focal").study.warmup_epochs, max(args.epochs // 3, 1))

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # what `python -m study` does
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    pruners = csv_strs(args.pruners)
    seeds = [int(v) for v in csv_strs(args.seeds)]
    args.seed = seeds[0]
    space = build_space(args)
    device = pick_device(args.device)
    threads = set_threads(args.threads, device)
    print_header(
        "pruning: one study, run once per pruner and seed through study.run.session.run_study",
        device,
        study=f"dr_focal space, arch={args.arch} pretrained=false loss=ce pinned, lr sampled "
        f"({space.study.sampler}), target {args.trials} finished trials x {args.epochs} epochs, seeds {seeds}",
        torch_threads=threads,
        data=f"synthetic-fundus JPEG {args.image_size} px, {args.images} train ({args.images // 5} test), batch "
             f"{args.batch_size}",
        pruners=f"{', '.join(pruners)}; median: n_startup_trials={space.study.startup_trials}, "
        f"n_warmup_steps={space.study.warmup_epochs} (fine-tuning epochs); hyperband: min 1, max {args.epochs} epochs, "
        "factor 3; a trial's last epoch is never pruned",
    )
    args.work.mkdir(parents=True, exist_ok=True)
    root, generated = synthetic_jpegs(args.work, args.images, max(args.images // 5, 5), args.image_size, 0)
    print(f"JPEG files: {root} ({'generated in %.1f s' % generated if generated > 1 else 'reused'})")
    kept = args.work / "pruning-storages"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)

    # Not counted: one 1-epoch trial first, so that one-time costs (imports, the first figure,
    # oneDNN kernels, the decode cache) do not land on whichever pruner runs first.
    warm = dataclasses.replace(space.with_settings(epochs=1), study=dataclasses.replace(space.study, trials=1))
    scratch = Path(tempfile.mkdtemp(prefix="pruning-warmup-", dir=args.work))
    with open(args.work / "pruning-warmup.log", "w") as stream:
        started = time.perf_counter()
        run_study(RunOptions(space=warm, results_dir=scratch, study_name=STUDY_NAME, data=root, trials=1,
                             device=args.device, pruner="none"), Output(stream=stream, err=stream))
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"warm-up (not counted): one 1-epoch trial in {time.perf_counter() - started:.1f} s")
    by_seed = {seed: run_seed(args, space, pruners, root, seed, kept) for seed in seeds}
    print(f"storages kept for inspection: {kept}/<pruner>-seed<S>.db (study {STUDY_NAME})")

    print()
    ref_name = pruners[0]
    rows = []
    for seed, runs in by_seed.items():
        for name, r in runs.items():
            rows.append(
                [
                    seed,
                    name,
                    f"{r['complete']}/{r['pruned']}/{r['failed']}",
                    r["epochs"],
                    percent(r["saved"]),
                    r["wall"],
                    percent(r["faster"]),
                    f"{r['best']:.4f}",
                    r["best_trial"],
                    percent(r["diff"]),
                ]
            )
    print(
        table(
            [
                "seed",
                "pruner",
                "complete/pruned/fail",
                "epochs",
                "epochs saved",
                "wall s",
                "time saved",
                "best val kappa",
                "best trial",
                "best vs " + ref_name,
            ],
            rows,
        )
    )
    print()
    first = by_seed[seeds[0]]
    print(
        f"seed {seeds[0]}, per trial (same number = same seed and lr with --sampler random); validation kappa per "
        "epoch:"
    )
    n = max(len(r["trials"]) for r in first.values())
    rows = []
    for k in range(n):
        row = [k]
        for r in first.values():
            t = r["trials"][k] if k < len(r["trials"]) else None
            if t is None:
                row += ["", ""]
                continue
            curve = t.user_attrs.get("curves", {}).get("val_kappa", [])
            mark = {TrialState.PRUNED: " pruned", TrialState.FAIL: " failed"}.get(t.state, "")
            row += [f"{t.params.get('lr', float('nan')):.2g}", " ".join(f"{v:.2f}" for v in curve) + mark]
        rows.append(row)
    print(table(["trial"] + [f"{name} {col}" for name in first for col in ("lr", "kappa by epoch")], rows))
    print()
    print(f"over {len(seeds)} seeds, mean [min, max]:")
    rows = []
    for name in pruners:
        if name == ref_name:
            continue
        saved = [by_seed[s][name]["saved"] for s in seeds]
        faster = [by_seed[s][name]["faster"] for s in seeds]
        diff = [by_seed[s][name]["diff"] for s in seeds]
        met = all(v >= GOAL_SAVED for v in saved) and all(not math.isnan(d) and abs(d) <= GOAL_BEST for d in diff)
        rows.append([name, spread(saved), spread(faster), spread(diff), "met" if met else "missed"])
    print(table(["pruner", "epochs saved", "time saved", f"best vs {ref_name}",
                 f"goal (>= {GOAL_SAVED:.0%} saved, best within {GOAL_BEST:.0%}, every seed)"], rows))
    for name in pruners:
        if name == ref_name:
            continue
        ratio = [by_seed[s][name]["epochs"] / by_seed[s][ref_name]["epochs"] for s in seeds]
        print(f"ratio epochs {name}/{ref_name}: {sum(ratio) / len(ratio):.2f} (mean over {len(seeds)} seeds)")


if __name__ == "__main__":
    main()
