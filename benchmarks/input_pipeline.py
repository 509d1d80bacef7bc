"""Input pipeline: images/s of one training epoch, the source lab's loader against the study's.

What is measured, per configuration (image size + model), on the same JPEG files, training rows,
model, batch size, SGD settings, precision (fp32) and device:

(a) baseline, the way the source lab did it: a torch Dataset that opens each JPEG with PIL on every
    epoch and runs ``Resize``, ``RandomHorizontalFlip``, ``RandomVerticalFlip``, ``ToTensor``,
    ``Normalize`` in a DataLoader, once with ``num_workers=0`` and once with each other
    ``--workers`` count (2 by default, to be fair to the baseline);
(b) the study pipeline: the decode-once cache (``objectives.data.load_splits`` ->
    ``decode_all`` with a cache folder) read through ``DeviceBatches`` (uint8 gathered from the
    memory-mapped cache, flipped, converted and normalised on the device), twice: ``study input``
    with the baseline's fp32 NCHW model (only the input pipeline differs) and ``study`` with the
    ``Runtime`` a study actually trains with (``Runtime.for_device``: channels_last everywhere,
    bf16 autocast on CUDA).

Both arms train through ``objectives.train._train_epoch``, the loop ``fit`` runs. After a warm-up
of a few batches one full epoch is timed; "data wait" is the time from the end of one step to the
next batch being ready (the device is synchronised around each step so both ends are real), and
its share of the epoch says whether the input pipeline or the model is the bottleneck. "loader
img/s" is images / data wait: the pipeline's own speed where it runs in the training thread.
The one-time cost of building the cache (decoding every image once, on a thread pool) and of
opening it again (what every later trial and worker pays) is reported separately: it is not part
of any epoch.

Why: the issue "Speed: decode once, keep the GPU busy, prune hard" claims decoding dominates the
lab's epochs at 512 px and that, with the cache, the input pipeline stops being the bottleneck.

    python benchmarks/input_pipeline.py                    # both default configurations
    python benchmarks/input_pipeline.py --images 1024 --configs 512:convnet --workers 0,2,4
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from objectives.data import find_dataset, load_splits
from objectives.train import Runtime

from common import (
    DEFAULT_WORK,
    EpochTiming,
    add_threads_arg,
    csv_ints,
    csv_strs,
    lab_loader,
    make_trainee,
    percent,
    pick_device,
    print_header,
    ratio,
    release,
    set_threads,
    study_batches,
    synthetic_jpegs,
    table,
    timed_epoch,
    times,
    to_device,
)

VAL_FRACTION = 0.2
GOAL_512 = 5.0


@dataclass(frozen=True)
class Setup:
    size: int
    arch: str

    @property
    def name(self) -> str:
        return f"{self.size} px {self.arch}"


def parse_setup(text: str) -> Setup:
    size, _, arch = text.partition(":")
    return Setup(int(size), arch or "resnet18")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="128:resnet18,512:convnet", help="SIZE:ARCH,... (default: %(default)s)")
    parser.add_argument("--images", type=int, default=256, help="training images per epoch (default %(default)s)")
    parser.add_argument(
        "--source-size", type=int, default=768, help="px of the generated JPEG files (default %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--workers", default="0,2", help="DataLoader num_workers of the baseline, comma-separated (default %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed batches before each timed epoch (default %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed epochs per arm, best kept (default %(default)s)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--work",
        type=Path,
        default=DEFAULT_WORK,
        help="folder for the JPEG files, reused across runs (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_threads_arg(parser)
    args = parser.parse_args()

    device = pick_device(args.device)
    threads = set_threads(args.threads, device)
    setups = [parse_setup(s) for s in csv_strs(args.configs)]
    workers = csv_ints(args.workers)
    largest = max(s.size for s in setups)
    if args.source_size < largest:
        parser.error(f"--source-size {args.source_size} is smaller than the largest target size {largest}")
    train_files = math.ceil(args.images / (1 - VAL_FRACTION))
    print_header(
        "input pipeline: lab's PIL DataLoader vs decode-once cache + DeviceBatches",
        device,
        configurations=", ".join(s.name for s in setups),
        data=f"synthetic-fundus JPEG {args.source_size} px, {train_files} train files -> ~{args.images} training rows "
             f"(validation {VAL_FRACTION:.0%} carved out), batch {args.batch_size}, fp32 for both arms",
        baseline_workers=", ".join(map(str, workers)),
        torch_threads=threads,
        timing=f"{args.warmup} warm-up batches, then {args.repeats} timed epoch(s) per arm (best kept)",
    )
    args.work.mkdir(parents=True, exist_ok=True)
    root, generated = synthetic_jpegs(args.work, train_files, 8, args.source_size, args.seed)
    print(f"JPEG files: {root} ({'generated in %.1f s' % generated if generated > 1 else 'reused'})\n")
    files = find_dataset(root, num_classes=5)

    summary = []
    for setup in setups:
        summary.append(run_setup(setup, files, device, workers, args))
    print("== summary ==")
    for setup, result in summary:
        base0 = result.get("baseline w0")
        fair = max((t for k, t in result.items() if k.startswith("baseline")), key=lambda t: t.rate)
        study = result["study"]
        print(
            f"{setup.name}: study {study.rate:.1f} img/s, baseline w0 {base0.rate:.1f} img/s, best baseline "
            f"{fair.rate:.1f} img/s; "
            f"data wait: study {percent(study.wait_share)}, baseline w0 {percent(base0.wait_share)}"
        )
    for setup, result in summary:
        base0 = result["baseline w0"]
        fair = max((t for k, t in result.items() if k.startswith("baseline")), key=lambda t: t.rate)
        study, inputs = result["study"], result["study input"]
        print(f"ratio study/baseline ({setup.name}, workers 0): {times(ratio(study.rate, base0.rate))}; "
              f"vs best baseline: {times(ratio(study.rate, fair.rate))}; "
              f"input pipeline only (same fp32 NCHW model): {times(ratio(inputs.rate, base0.rate))}; "
              f"loader-only: {times(ratio(inputs.loader_rate, base0.loader_rate))}")
        if setup.size >= 512:
            got = ratio(study.rate, base0.rate)
            print(f"goal >= {GOAL_512:g}x at {setup.name}: {'met' if got >= GOAL_512 else 'missed'} ({times(got)})")
        else:
            print(
                f"goal 'input pipeline not the bottleneck' at {setup.name}: study data wait "
                f"{percent(study.wait_share)} of step time"
            )


def run_setup(
    setup: Setup, files, device: torch.device, workers: list[int], args
) -> tuple[Setup, dict[str, EpochTiming]]:
    print(f"-- {setup.name} --")
    scratch = Path(tempfile.mkdtemp(prefix="cache-", dir=args.work))
    try:
        started = time.perf_counter()
        splits = load_splits(
            files, image_size=setup.size, val_fraction=VAL_FRACTION, split_seed=args.seed, cache_dir=scratch
        )
        built = time.perf_counter() - started
        started = time.perf_counter()
        splits = load_splits(
            files, image_size=setup.size, val_fraction=VAL_FRACTION, split_seed=args.seed, cache_dir=scratch
        )
        reopened = time.perf_counter() - started
        decoded = len(files.train.paths) + len(files.test.paths)
        print(
            f"decode cache build (one time): {built:.2f} s for {decoded} images ({decoded / built:.0f} img/s, "
            "thread pool), channel statistics included; reopening it (statistics read from the cache too): "
            f"{reopened:.3f} s"
        )
        result = measure(setup, splits, files.train.paths, device, workers, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    base0 = result["baseline w0"]
    for name, t in result.items():
        rows.append([name, t.images, t.seconds, t.rate, t.wait, percent(t.wait_share),
                     t.loader_rate if name in ("study", "study input", "baseline w0") else float("nan"),
                     times(ratio(t.rate, base0.rate))])
    print(table(["arm", "images", "epoch s", "img/s", "data wait s", "wait share", "loader img/s", "vs w0"], rows))
    print()
    return setup, result


def measure(setup: Setup, splits, paths, device: torch.device, workers: list[int], args) -> dict[str, EpochTiming]:
    """Every arm `args.repeats` times, round-robin (so a change in machine load hits all arms),
    keeping each arm's fastest epoch."""
    plain = Runtime(device=device, amp=False, channels_last=False)  # the baseline's fp32 NCHW training
    own = Runtime.for_device(device)
    counts = splits.train.class_counts(splits.num_classes)
    mean, std = tuple(splits.mean), tuple(splits.std)
    arms = {}
    for w in workers:
        arms[f"baseline w{w}"] = (
            plain,
            lambda w=w: to_device(
                lab_loader(
                    splits.train,
                    paths,
                    size=setup.size,
                    batch_size=args.batch_size,
                    workers=w,
                    mean=mean,
                    std=std,
                    seed=args.seed,
                ),
                device,
            ),
        )
    for name, runtime in (("study input", plain), ("study", own)):
        arms[name] = runtime, lambda runtime=runtime: study_batches(
            splits.train, batch_size=args.batch_size, device=device, mean=mean, std=std, flips=True,
            channels_last=runtime.channels_last, seed=args.seed)
    if "baseline w0" not in arms:
        raise SystemExit("--workers must include 0 (the lab's default and the reference of the ratios)")
    best: dict[str, EpochTiming] = {}
    for _ in range(args.repeats):
        for name, (runtime, make) in arms.items():
            trainee = make_trainee(
                setup.arch, device, channels_last=runtime.channels_last, seed=args.seed, class_counts=counts
            )
            timing = timed_epoch(trainee, make(), runtime, warmup=args.warmup, sync_steps=True)
            if name not in best or timing.rate > best[name].rate:
                best[name] = timing
            print(f"  {name:<12} {timing.images} images in {timing.seconds:6.2f} s = {timing.rate:7.1f} img/s, "
                  f"data wait {percent(timing.wait_share)}", flush=True)
            del trainee
            release(device)
    return best


if __name__ == "__main__":
    main()
