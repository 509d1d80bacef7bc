"""GPU throughput: training images/s end to end, the source lab's recipe against the study's path.

CUDA only (on a machine without CUDA it prints one line and exits 0; ``--cpu-smoke`` runs the very
same code on the CPU at tiny sizes, to show that it works). For ResNet18 and ResNet50 at 224 and
512 px, batch 32 and 128, on synthetic-fundus JPEG files of that size, it times one training epoch
(after warm-up steps, with ``torch.cuda.synchronize`` before the clock starts and after it stops)
of four arms:

- ``seed w0``: the lab's loop: fp32, NCHW, ``cudnn.benchmark`` off, a torch Dataset opening every
  JPEG with PIL each epoch (Resize, two random flips, ToTensor, Normalize) in a DataLoader with
  ``num_workers=0``;
- ``seed w8``: the same with 8 DataLoader workers (``--workers``), the fair baseline;
- ``study``: the decode-once cache (``objectives.data.load_splits``) read by ``DeviceBatches``
  (pinned uint8 copies, flips and normalisation on the GPU) with bf16 autocast, channels_last and
  ``cudnn.benchmark``, the ``Runtime`` a study uses on CUDA (``Runtime.for_device``);
- ``ceiling``: the model alone, one random batch already on the GPU repeated for as many steps as
  the epoch has, same bf16/channels_last/cudnn settings: what the study path could reach if its
  input cost nothing.

Every arm trains through ``objectives.train._train_epoch``, the loop ``fit`` runs. Printed: a table
per configuration, then the study/seed (w0 and fair) ratios and the study's share of the ceiling.
A configuration that runs out of memory in one arm (fp32 ResNet50 at 512 px, batch 128, does on an
80 GB card) is marked OOM and the others still run.

    python benchmarks/gpu_throughput.py                      # on a CUDA machine
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

from common import (
    DEFAULT_WORK,
    add_threads_arg,
    EpochTiming,
    csv_ints,
    csv_strs,
    lab_loader,
    make_trainee,
    percent,
    print_header,
    ratio,
    release,
    set_threads,
    repeated,
    study_batches,
    synthetic_jpegs,
    table,
    timed_epoch,
    times,
    to_device,
)
from objectives.data import find_dataset, load_splits
from objectives.train import Runtime

VAL_FRACTION = 0.2
SMOKE = dict(archs="resnet18,resnet50", sizes="64", batches="4", images=8, workers="2", warmup=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--sizes", default="224,512", help="image sizes in px (default %(default)s)")
    parser.add_argument("--batches", default="32,128", help="batch sizes (default %(default)s)")
    parser.add_argument("--images", type=int, default=1024, help="training images per epoch (default %(default)s)")
    parser.add_argument("--workers", default="8", help="DataLoader workers of the fair seed arm(s), besides 0 (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each timed epoch (default %(default)s)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="folder for the JPEG files, reused across runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-smoke", action="store_true",
                        help=f"run the same code on the CPU at tiny sizes ({', '.join(f'{k}={v}' for k, v in SMOKE.items())})")
    add_threads_arg(parser)
    args = parser.parse_args()

    if args.cpu_smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
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
        "GPU throughput: seed-style loop vs study path vs model-only ceiling" + (" [CPU SMOKE: tiny sizes, timings meaningless]" if args.cpu_smoke else ""),
        device,
        models=", ".join(archs),
        sizes=", ".join(f"{s} px" for s in sizes),
        batches=", ".join(map(str, batches)),
        data=f"synthetic-fundus JPEG at each size, {train_files} train files -> ~{args.images} training rows per epoch",
        seed_arms=f"fp32, PIL DataLoader with num_workers {', '.join(map(str, workers))}",
        study_arm="decode cache + DeviceBatches + bf16 autocast + channels_last + cudnn.benchmark",
        torch_threads=threads,
        timing=f"{args.warmup} warm-up steps, then one timed epoch per arm, synchronised at both ends",
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
            splits = load_splits(files, image_size=size, val_fraction=VAL_FRACTION, split_seed=args.seed, cache_dir=scratch)
            print(f"decode cache build (one time, not in any epoch): {time.perf_counter() - started:.2f} s\n")
            for arch in archs:
                for batch in batches:
                    results.append(((arch, size, batch), run_config(arch, size, batch, splits, files.train.paths, device, workers, args)))
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


def run_config(arch: str, size: int, batch: int, splits, paths, device: torch.device, workers: list[int], args) -> dict[str, EpochTiming | None]:
    """The four arms of one (model, size, batch) configuration; None where an arm ran out of memory."""
    print(f"-- {arch} {size} px batch {batch} --")
    counts = splits.train.class_counts(splits.num_classes)
    mean, std = tuple(splits.mean), tuple(splits.std)
    fast = Runtime(device=device, amp=True, channels_last=True)  # = Runtime.for_device on CUDA; forced so --cpu-smoke runs it too
    lab = Runtime(device=device, amp=False, channels_last=False)
    steps = -(-len(splits.train) // batch)

    def ceiling_batches():
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, splits.num_classes, (batch,), device=device)
        return repeated((x, y), steps)

    arms = {"ceiling": (fast, True, ceiling_batches),
            "study": (fast, True, lambda: study_batches(splits.train, batch_size=batch, device=device, mean=mean, std=std,
                                                         flips=True, channels_last=True, seed=args.seed))}
    for w in workers:
        arms[f"seed w{w}"] = (lab, False, lambda w=w: to_device(
            lab_loader(splits.train, paths, size=size, batch_size=batch, workers=w, mean=mean, std=std, seed=args.seed), device))
    out: dict[str, EpochTiming | None] = {}
    for name, (runtime, benchmark, make) in arms.items():
        torch.backends.cudnn.benchmark = benchmark
        trainee = None
        try:
            trainee = make_trainee(arch, device, channels_last=runtime.channels_last, seed=args.seed, class_counts=counts)
            # No per-step synchronisation: this is the loop as it runs in a study, host and GPU overlapping.
            out[name] = timed_epoch(trainee, make(), runtime, warmup=args.warmup, sync_steps=False)
            print(f"  {name:<8} {out[name].rate:8.1f} img/s", flush=True)
        except torch.OutOfMemoryError:
            out[name] = None
            print(f"  {name:<8}      OOM", flush=True)
        finally:
            del trainee
            release(device)
    torch.backends.cudnn.benchmark = False
    seed0 = out.get("seed w0")
    rows = [[name, t.images, t.seconds, t.rate, percent(t.wait_share), times(_ratio(t, seed0))] if t else [name, "OOM", "", "", "", ""]
            for name, t in out.items()]
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
