"""Trials per hour of one small study with 1 worker and with N workers (`run --workers N`),
measured in the same run, on the same data, through the real CLI and a fresh SQLite storage each.

Why: `--workers` should turn spare cores (or GPUs) into trials; on a CPU the threads are divided
between the workers, so the gain is what parallel small-batch training gains over intra-op
threading of one process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE = """schema = 2
[study]
sampler = "random"
pruner = "none"
trials = {trials}
[fixed]
num_classes = 5
hflip = true
vflip = true
epochs = {epochs}
batch_size = 16
image_size = {size}
arch = "resnet18"
pretrained = false
[space]
lr = {{ low = 1e-3, high = 3e-2, log = true }}
loss = {{ choices = ["ce", "focal"] }}
"""


def timed_run(work: Path, data: Path, workers: int, trials: int) -> float:
    """Seconds of `run` from start to exit (each run decodes the small dataset once, in well
    under a second, and pays the same start-up)."""
    results = work / f"results-{workers}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    command = [sys.executable, "-m", "study", "run", str(work / "bench.toml"), "--data", str(data),
               "--results", str(results), "--trials", str(trials), "--workers", str(workers)]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--images", type=int, default=240)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from objectives import synthetic

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = synthetic.generate(work / "data", args.images, args.images // 4, seed=0)
        (work / "bench.toml").write_text(SPACE.format(trials=args.trials, epochs=args.epochs, size=args.size))
        print(f"{args.trials} trials x {args.epochs} epochs, resnet18 at {args.size}px, {args.images} train images, "
              f"{os.cpu_count()} CPU cores")
        one = timed_run(work, data, 1, args.trials)
        many = timed_run(work, data, args.workers, args.trials)
    rate_one, rate_many = args.trials / one * 3600, args.trials / many * 3600
    print(f"1 worker : {one:7.1f} s  {rate_one:7.0f} trials/hour")
    print(f"{args.workers} workers: {many:7.1f} s  {rate_many:7.0f} trials/hour")
    print(f"ratio {args.workers} workers / 1 worker: {rate_many / rate_one:.2f}x")


if __name__ == "__main__":
    main()
