"""`--workers N`: N worker processes on one study, each started from the run's serialised
options (`python -m study.run.worker OPTIONS.json --index i`), never from this process's command
line; their GPUs, supervision and restarts."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from study import log
from study.exits import CUDA_ERROR_EXIT, WorkerFailed
from study.run.options import RunOptions
from study.run.output import Output

MAX_WORKER_RESTARTS = 3  # fresh workers started in place of one that stopped on a CUDA error


def worker_options(opts: RunOptions, device: torch.device, gpus: Sequence[str], cpu_count: int) -> RunOptions:
    """What every worker is asked: the parent's run with the device it chose made explicit (a
    worker that finds no GPU then stops with an error instead of training on the CPU), each
    worker's GPU (entry i mod n of the parent's GPUs, `worker_gpus`) and its share of the
    machine's CPU threads."""
    return dataclasses.replace(opts, device=device.type, worker_gpus=tuple(worker_gpus(opts.workers, gpus)),
                               threads=max(1, cpu_count // opts.workers))


def worker_command(options_file: Path, index: int) -> list[str]:
    """The worker's command line, with this process's -q / -v (`study.log.verbosity`)."""
    flag = {log.QUIET: ["-q"], log.VERBOSE: ["-v"]}.get(log.verbosity(), [])
    return [sys.executable, "-m", "study.run.worker", str(options_file), "--index", str(index), *flag]


def run_workers(opts: RunOptions, device: torch.device, out: Output) -> None:
    """Start `opts.workers` worker processes on the same study and supervise them until all have
    exited (`supervise`). Ctrl-C/SIGTERM reach all of them."""
    gpus = (
        visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count()) if device.type == "cuda" else []
    )
    shared = worker_options(opts, device, gpus, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="study-workers-") as folder:
        options_file = Path(folder) / "options.json"
        options_file.write_text(shared.to_json())
        shown = "GPU " + ", ".join(shared.worker_gpus) if shared.worker_gpus else f"{shared.threads} CPU thread(s) each"
        out.line(f"started {opts.workers} workers ({shown})")
        codes = supervise(opts.workers, lambda index: subprocess.Popen(worker_command(options_file, index)), out)
    if any(codes):
        raise WorkerFailed(max(codes))


def visible_gpus(value: str | None, device_count: int) -> list[str]:
    """This process's GPUs as entries a child's CUDA_VISIBLE_DEVICES can name: `value` (this
    process's CUDA_VISIBLE_DEVICES) read as CUDA reads it, indices, ``GPU-`` UUIDs or ``MIG-``
    ids up to the first entry that is none of these (so "" and "-1" mean no GPU) and nothing when
    an entry repeats; or 0 .. `device_count` - 1 when it is unset."""
    if value is None:
        return [str(i) for i in range(device_count)]
    entries: list[str] = []
    for entry in (part.strip() for part in value.split(",")):
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        if entry in entries:
            return []
        entries.append(entry)
    return entries


def worker_gpus(count: int, gpus: Sequence[str]) -> list[str]:
    """The GPU of each of `count` workers: worker i gets entry i mod len(`gpus`); [] without GPUs."""
    return [gpus[i % len(gpus)] for i in range(count)] if gpus else []


def supervise(count: int, start: Callable[[int], subprocess.Popen[bytes]], out: Output, *,
              max_restarts: int = MAX_WORKER_RESTARTS, poll_s: float = 0.5) -> list[int]:
    """Run workers 0 .. `count` - 1 (`start(i)` starts worker i) until all have exited; one that
    stops on a CUDA error (exit code `CUDA_ERROR_EXIT`) is replaced by a fresh process, at most
    `max_restarts` times per worker. Returns each worker's last exit code. On an exception
    (Ctrl-C, SIGTERM) every running worker gets SIGTERM and is waited for."""
    running = {index: start(index) for index in range(count)}
    codes = [0] * count
    restarts = [0] * count
    try:
        while running:
            for index, child in list(running.items()):
                code = child.poll()
                if code is None:
                    continue
                del running[index]
                codes[index] = code
                if code == CUDA_ERROR_EXIT and restarts[index] < max_restarts:
                    restarts[index] += 1
                    out.line(f"worker {index} stopped on a CUDA error; starting a fresh worker in its place "
                             f"(restart {restarts[index]} of {max_restarts})")
                    running[index] = start(index)
            if running:
                time.sleep(poll_s)
    except BaseException:
        for child in running.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in running.values():
            child.wait()
        raise
    return codes
