"""GPU throughput: training images/s end to end, the source lab's recipe against the study's path.

CUDA only (on a machine without CUDA it prints one line and exits 0; ``--cpu-smoke`` runs the very
same code on the CPU at tiny sizes, to show that it works). For ResNet18 and ResNet50 at 224 and
512 px, batch 32 and 128, on synthetic-fundus JPEG files of that size, it times one training epoch
(after warm-up steps, with ``torch.cuda.synchronize`` before the clock starts and after it stops)
of four arms:

- ``seed w0``: the lab's loop: fp32 (TF32 convolutions: cuDNN's default on Ampere and later, which
  the lab got too), NCHW, ``cudnn.benchmark`` off, a torch Dataset opening every JPEG with PIL each
  epoch (Resize, two random flips, ToTensor, Normalize) in a DataLoader with ``num_workers=0``;
- ``seed w8``: the same with 8 DataLoader workers (``--workers``), the fair baseline;
- ``study``: the decode-once cache (``objectives.data.load_splits``) read by ``DeviceBatches``
  (pinned uint8 copies, flips and normalisation on the GPU) with autocast (bf16, or fp16 with loss
  scaling on GPUs without native bf16), channels_last and ``cudnn.benchmark``: the ``Runtime`` a
  study uses on CUDA (``Runtime.for_device``);
- ``ceiling``: the model alone, one random batch already on the GPU repeated for as many steps as
  the epoch has, same autocast/channels_last/cudnn settings: what the study path could reach if
  its input cost nothing.

Every arm trains through ``objectives.train._train_epoch``, the loop ``fit`` runs, on full batches
only (the training split's remainder is dropped in every arm, as ``fit`` drops it), so every arm
times the same shapes and its warm-up has run each of them: a shape met for the first time inside
the timed epoch (with ``cudnn.benchmark``, an autotuning run) would be reported as ``cold``.
Printed: a table per configuration, then the study/seed (w0 and fair) ratios, the study's share of
the ceiling, and the goals (>= 3x the fair seed loop, >= 90 % of the ceiling, ResNet50 at 224 px
>= 3,000 img/s on an H100) as met or missed. A configuration that runs out of memory in one arm
(fp32 ResNet50 at 512 px, batch 128, does on an 80 GB card) is marked OOM and the others still run.

    python benchmarks/gpu_throughput.py                      # on a CUDA machine
    python benchmarks/gpu_throughput.py --quick              # 224 px only, 3 warm-up steps: a short GPU lease
    python benchmarks/gpu_throughput.py --images 2048 --archs resnet50 --sizes 512 --batches 64,128
    python benchmarks/gpu_throughput.py --cpu-smoke          # the same code on the CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from objectives.data import find_dataset, load_splits
from objectives.train import Runtime
from study.run.failures import CUDA_OOM, failure_reason

from common import (
    DEFAULT_WORK,
    EpochTiming,
    add_threads_arg,
    csv_ints,
    csv_strs,
    describe_device,
    lab_loader,
    make_trainee,
    percent,
    print_header,
    ratio,
    release,
    repeated,
    set_threads,
    study_batches,
    synthetic_jpegs,
    table,
    timed_epoch,
    times,
    to_device,
)

VAL_FRACTION = 0.2
SMOKE = dict(archs="resnet18,resnet50", sizes="64", batches="4", images=8, workers="2", warmup=1)
QUICK = dict(sizes="224", warmup=3)  # the goals' configurations only: a few minutes of GPU time at most
GOAL_FAIR = 3.0  # study >= 3x the fair seed-style loop
GOAL_CEILING = 0.9  # study >= 90 % of the model-only ceiling
GOAL_RESNET50_224 = 3000.0  # img/s, on an H100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--sizes", default="224,512", help="image sizes in px (default %(default)s)")
    parser.add_argument("--batches", default="32,128", help="batch sizes (default %(default)s)")
    parser.add_argument("--images", type=int, default=1024, help="training images per epoch (default %(default)s)")
    parser.add_argument(
        "--workers", default="8", help="DataLoader workers of the fair seed arm(s), besides 0 (default %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed steps before each timed epoch (default %(default)s)"
    )
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="folder for the JPEG files, reused across runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"only what the goals need, for a short GPU lease ({', '.join(f'{k}={v}' for k, v in QUICK.items())})",
    )
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help=f"run the same code on the CPU at tiny sizes ({', '.join(f'{k}={v}' for k, v in SMOKE.items())})",
    )
    add_threads_arg(parser)
    args = parser.parse_args()

    for preset, values in ((args.quick, QUICK), (args.cpu_smoke, SMOKE)):
        if preset:
            for key, value in values.items():
                setattr(args, key, value)
    if args.cpu_smoke:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("gpu_throughput: needs CUDA (torch.cuda.is_available() is False); nothing measured. "
              "Run it on a GPU machine, or with --cpu-smoke to exercise its code on the CPU.")
        return
    else:
        device = torch.device("cuda")

    threads = set_threads(args.threads, device)
    archs, sizes, batches = csv_strs(args.archs), csv_ints(args.sizes), csv_ints(args.batches)
    workers = [0] + [w for w in csv_ints(args.workers) if w != 0]
    train_files = math.ceil(args.images / (1 - VAL_FRACTION))
    print_header(
        "GPU throughput: seed-style loop vs study path vs model-only ceiling"
        + (" [CPU SMOKE: tiny sizes, timings meaningless]" if args.cpu_smoke else ""),
        device,
        models=", ".join(archs),
        sizes=", ".join(f"{s} px" for s in sizes),
        batches=", ".join(map(str, batches)),
        data=f"synthetic-fundus JPEG at each size, {train_files} train files -> ~{args.images} training rows per epoch",
        seed_arms=f"fp32 ({_tf32_note()}), NCHW, PIL DataLoader with num_workers {', '.join(map(str, workers))}",
        study_arm=f"decode cache + DeviceBatches + {_autocast_note(device)} + channels_last + cudnn.benchmark",
        torch_threads=threads,
        timing=f"{args.warmup} warm-up steps, then one timed epoch of full batches per arm, synchronised at both ends",
    )
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for size in sizes:
        root, generated = synthetic_jpegs(args.work, train_files, 8, size, args.seed)
        print(f"JPEG files {size} px: {root} ({'generated in %.1f s' % generated if generated > 1 else 'reused'})")
        files = find_dataset(root, num_classes=5)
        scratch = Path(tempfile.mkdtemp(prefix="cache-", dir=args.work))
        try:
            started = time.perf_counter()
            splits = load_splits(
                files, image_size=size, val_fraction=VAL_FRACTION, split_seed=args.seed, cache_dir=scratch
            )
            print(f"decode cache build (one time, not in any epoch): {time.perf_counter() - started:.2f} s\n")
            for arch in archs:
                for batch in batches:
                    results.append(
                        (
                            (arch, size, batch),
                            run_config(arch, size, batch, splits, files.train.paths, device, workers, args),
                        )
                    )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    print("== summary ==")
    rows = []
    for (arch, size, batch), r in results:
        seed0, study, ceiling = r.get("seed w0"), r.get("study"), r.get("ceiling")
        fair = _best([t for k, t in r.items() if k.startswith("seed")])
        rows.append([f"{arch} {size}px b{batch}", _rate(seed0), _rate(fair), _rate(study), _rate(ceiling),
                     times(_ratio(study, seed0)), times(_ratio(study, fair)), percent(_ratio(study, ceiling))])
    print(table(["config", "seed w0 img/s", "seed fair img/s", "study img/s", "ceiling img/s",
                 "study/seed w0", "study/seed fair", "study/ceiling"], rows))
    print()
    for (arch, size, batch), r in results:
        seed0, study, ceiling = r.get("seed w0"), r.get("study"), r.get("ceiling")
        fair = _best([t for k, t in r.items() if k.startswith("seed")])
        print(f"ratio study/seed ({arch} {size}px b{batch}): {times(_ratio(study, seed0))} vs workers 0, "
              f"{times(_ratio(study, fair))} vs fair; study/ceiling share: {percent(_ratio(study, ceiling))}")
    print()
    for line in goal_lines(results, describe_device(device)):
        print(line)
    cold = sorted(
        {
            f"{arch} {size}px b{batch} {name}"
            for (arch, size, batch), r in results
            for name, t in r.items()
            if t and t.cold_shapes
        }
    )
    print(
        "warm-up: every timed shape was warmed up in every arm"
        if not cold
        else f"warm-up: COLD shapes timed in {', '.join(cold)}"
    )


def goal_lines(results: list[tuple[tuple[str, int, int], dict[str, EpochTiming | None]]], device: str) -> list[str]:
    """The three goals, each met or missed, from the summary's measurements."""
    fair, share, r50 = [], [], []
    for (arch, size, batch), r in results:
        study = r.get("study")
        name = f"{arch} {size}px b{batch}"
        fair.append((_ratio(study, _best([t for k, t in r.items() if k.startswith("seed")])), name))
        share.append((_ratio(study, r.get("ceiling")), name))
        if arch == "resnet50" and size == 224 and study is not None:
            r50.append((study.rate, name))
    lines = [_goal(f"study >= {GOAL_FAIR:g}x the fair seed loop", fair, GOAL_FAIR, times),
             _goal(f"study >= {GOAL_CEILING:.0%} of the model-only ceiling", share, GOAL_CEILING, percent)]
    where = "" if "H100" in device else f" (the goal is stated for an H100; this is {device.split(',')[0]})"
    if r50:
        rate, name = max(r50)
        verdict = "met" if rate >= GOAL_RESNET50_224 else "missed"
        lines.append(
            f"goal ResNet50 at 224 px >= {GOAL_RESNET50_224:,.0f} img/s: {verdict} ({rate:,.0f} img/s, {name}){where}"
        )
    else:
        lines.append(
            f"goal ResNet50 at 224 px >= {GOAL_RESNET50_224:,.0f} img/s: not measured (no resnet50 224 px "
            "configuration ran)"
        )
    return lines


def _goal(text: str, values: list[tuple[float, str]], goal: float, show) -> str:
    measured = [(v, name) for v, name in values if not math.isnan(v)]
    if not measured:
        return f"goal {text}: not measured"
    worst, name = min(measured)
    missed = sum(v < goal for v, _ in measured)
    verdict = "met" if not missed else f"missed in {missed} of {len(measured)} configurations"
    return f"goal {text}: {verdict} (lowest {show(worst)}, {name})"


def _tf32_note() -> str:
    """What "fp32" means on this machine: cuDNN lets convolutions use TF32 unless told not to."""
    conv = torch.backends.cudnn.allow_tf32
    matmul = torch.backends.cuda.matmul.allow_tf32
    return (f"TF32 convolutions {'allowed' if conv else 'off'}, TF32 matmuls {'allowed' if matmul else 'off'}; TF32 "
            "needs Ampere or later")


def _autocast_note(device: torch.device) -> str:
    runtime = _study_runtime(device)
    return f"{str(runtime.amp_dtype).removeprefix('torch.')} autocast" + (
        " with loss scaling" if runtime.scales_loss else ""
    )


def _study_runtime(device: torch.device) -> Runtime:
    """What a study trains with on `device` (`Runtime.for_device`); on the CPU (--cpu-smoke) with
    bf16 autocast forced, so that path runs too."""
    return Runtime.for_device(device) if device.type == "cuda" else Runtime(device=device, amp=True, channels_last=True)


def run_config(
    arch: str, size: int, batch: int, splits, paths, device: torch.device, workers: list[int], args
) -> dict[str, EpochTiming | None]:
    """The four arms of one (model, size, batch) configuration; None where an arm ran out of memory."""
    print(f"-- {arch} {size} px batch {batch} --")
    counts = splits.train.class_counts(splits.num_classes)
    mean, std = tuple(splits.mean), tuple(splits.std)
    fast = _study_runtime(device)
    lab = Runtime(device=device, amp=False, channels_last=False)
    steps = max(len(splits.train) // batch, 1)  # full batches, as in the other arms

    def ceiling_batches():
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, splits.num_classes, (batch,), device=device)
        return repeated((x, y), steps)

    arms = {
        "ceiling": (fast, True, ceiling_batches),
        "study": (
            fast,
            True,
            lambda: study_batches(
                splits.train,
                batch_size=batch,
                device=device,
                mean=mean,
                std=std,
                flips=True,
                channels_last=True,
                seed=args.seed,
            ),
        ),
    }
    for w in workers:
        arms[f"seed w{w}"] = (
            lab,
            False,
            lambda w=w: to_device(
                lab_loader(
                    splits.train, paths, size=size, batch_size=batch, workers=w, mean=mean, std=std, seed=args.seed
                ),
                device,
            ),
        )
    out: dict[str, EpochTiming | None] = {}
    for name, (runtime, benchmark, make) in arms.items():
        torch.backends.cudnn.benchmark = benchmark
        trainee = None
        try:
            trainee = make_trainee(
                arch,
                device,
                channels_last=runtime.channels_last,
                seed=args.seed,
                class_counts=counts,
                scales_loss=runtime.scales_loss,
            )
            # No per-step synchronisation: this is the loop as it runs in a study, host and GPU overlapping.
            out[name] = timed_epoch(trainee, make(), runtime, warmup=args.warmup, sync_steps=False)
            cold = f"  COLD shapes timed: {list(out[name].cold_shapes)}" if out[name].cold_shapes else ""
            print(f"  {name:<8} {out[name].rate:8.1f} img/s{cold}", flush=True)
        except RuntimeError as exc:  # torch.OutOfMemoryError, or cuBLAS/cuDNN failing to allocate
            if failure_reason(exc) != CUDA_OOM:
                raise
            out[name] = None
            print(f"  {name:<8}      OOM", flush=True)
        finally:
            del trainee
            release(device)
    torch.backends.cudnn.benchmark = False
    seed0 = out.get("seed w0")
    rows = [
        [name, t.images, t.seconds, t.rate, percent(t.wait_share), times(_ratio(t, seed0))]
        if t
        else [name, "OOM", "", "", "", ""]
        for name, t in out.items()
    ]
    print(table(["arm", "images", "epoch s", "img/s", "host wait", "vs seed w0"], rows))
    print()
    return out


def _rate(t: EpochTiming | None) -> float | str:
    return t.rate if t is not None else "OOM"


def _ratio(a: EpochTiming | None, b: EpochTiming | None) -> float:
    return ratio(a.rate, b.rate) if a is not None and b is not None else float("nan")


def _best(timings: list[EpochTiming | None]) -> EpochTiming | None:
    found = [t for t in timings if t is not None]
    return max(found, key=lambda t: t.rate) if found else None


if __name__ == "__main__":
    main()
