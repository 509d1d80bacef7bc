"""The CUDA path's slow checks, on the CPU: a worker that stops on a CUDA error is replaced a bounded
number of times (real processes), and torch.compile builds a bounded number of graphs per trial
(the unit half: tests/unit/test_gpu_path.py)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from optuna.trial import TrialState
from torch._dynamo.testing import CompileCounterWithBackend

from objectives.train import Runtime
from study.exits import CUDA_ERROR_EXIT
from study.run import workers
from study.run.output import Output

from support.gpu_path import FRAMES_AT_START, enqueued, run_trials

ARCH_SPACE = """schema = 2
[study]
objective = "test_gpu_path"  # not used, as above
direction = "maximize"
metric = "accuracy"
sampler = "random"
pruner = "none"
[fixed]
epochs = 2
fe_epochs = 1
lr = 0.01
[space]
arch = { choices = ["resnet18", "resnet50"] }
batch_size = { choices = [4, 8] }
"""


# At most 2 per phase (FE, FT): one for training, one for evaluation (any batch size but 1). Torch 2.14
# builds 4 here; torch 2.11 on the H200 machine built 3 (which one it reused was not examined): a bound.
GRAPHS_PER_TRIAL = 4


@pytest.mark.slow
def test_a_worker_that_stops_on_a_cuda_error_is_replaced_a_bounded_number_of_times():
    """Worker 0 stops on a CUDA error twice, then finishes; worker 1 always does; worker 2 fails
    otherwise (never restarted). Real processes."""
    starts: list[int] = []

    def start(index: int) -> subprocess.Popen:
        starts.append(index)
        code = {0: CUDA_ERROR_EXIT if starts.count(0) <= 2 else 0, 1: CUDA_ERROR_EXIT, 2: 1}[index]
        return subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])

    out = io.StringIO()
    codes = workers.supervise(3, start, Output(out, io.StringIO()), max_restarts=3, poll_s=0.05)
    assert codes == [0, CUDA_ERROR_EXIT, 1]
    assert (starts.count(0), starts.count(1), starts.count(2)) == (3, 4, 1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and all(
        "stopped on a CUDA error; starting a fresh worker in its place" in line for line in lines
    )
    assert sum("worker 1 " in line for line in lines) == 3 and lines[-1].endswith("(restart 3 of 3)")


@pytest.mark.slow  # compiles two ResNets
def test_compile_builds_a_bounded_number_of_graphs_per_trial_and_never_hits_the_recompile_limit(tmp_path: Path):
    """ResNet18, ResNet50, then ResNet18 at another batch size, each with FE and FT phases and
    evaluations that end in a partial batch (8 rows in batches of 3): 4 graphs each. ResNet18
    and ResNet50 share ResNet.forward, so without a fresh dynamo cache per trial the third
    trial's first new graph would be that function's 9th, past dynamo's recompile limit (8):
    dynamo would run it eagerly from then on (here, raise and fail the trial)."""
    counter = CompileCounterWithBackend("eager")
    study = enqueued(
        [
            {"arch": "resnet18", "batch_size": 8},
            {"arch": "resnet50", "batch_size": 8},
            {"arch": "resnet18", "batch_size": 4},
        ]
    )
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        run_trials(tmp_path, study, Runtime(compile=True, compile_backend=counter, eval_batch_size=3), space=ARCH_SPACE)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3, [
        t.user_attrs.get("fail_reason") for t in study.trials
    ]
    per_trial = np.diff([*FRAMES_AT_START, counter.frame_count]).tolist()
    assert len(set(per_trial)) == 1 and 1 <= per_trial[0] <= GRAPHS_PER_TRIAL, per_trial
