"""The CUDA path, checked on the CPU: what it computes is the same code the GPU runs (batches,
metrics, the fp32 head, autocast and loss scaling, torch.compile's graphs), and the decisions it
takes are pure functions (failure reasons, worker GPUs, the autocast dtype)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from optuna.trial import TrialState
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion
from torch import nn
from torchvision import models as tvm

from objectives import metrics
from objectives.data import Augment, DeviceBatches, ImageSet
from objectives.losses import build_loss
from objectives.models import build_model, head_name
from objectives.train import Diverged, Runtime, autocast_dtype, fit
from study.exits import CUDA_ERROR_EXIT, CudaContextLost
from study.run import workers
from study.run.failures import failure_reason
from study.run.options import RunOptions
from study.spaces.space_file import load_space

from conftest import ROOT, fit_cfg, repo_env
from support.gpu_path import ALIVE_AT_START, MEMORY_AT_START, MODELS, enqueued, run_trials, tiny_splits

CPU = torch.device("cpu")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (these run where one is lent)")


# ---------------------------------------------------------------- workers and their GPUs


@pytest.mark.parametrize("value, count, gpus", [
    (None, 3, ["0", "1", "2"]),  # unset: every GPU torch sees
    (None, 0, []),
    ("2,3", 8, ["2", "3"]),  # the parent's own list, not 0 and 1
    (" 5 , 1", 8, ["5", "1"]),
    ("GPU-8d3c4e2a-1b2c-4d5e-8f90-123456789abc,GPU-00000000-1111-2222-3333-444444444444", 2,
     ["GPU-8d3c4e2a-1b2c-4d5e-8f90-123456789abc", "GPU-00000000-1111-2222-3333-444444444444"]),
    ("MIG-11111111-2222-3333-4444-555555555555,MIG-66666666-7777-8888-9999-000000000000", 1,
     ["MIG-11111111-2222-3333-4444-555555555555", "MIG-66666666-7777-8888-9999-000000000000"]),
    ("", 4, []),  # empty: no GPU at all
    ("-1", 4, []),
    ("0,1,-1,2", 4, ["0", "1"]),  # CUDA stops at the first invalid entry
    ("0,1,0", 4, []),  # a repeated entry hides every GPU
])
def test_visible_gpus_read_cuda_visible_devices_as_cuda_does(value, count, gpus):
    assert workers.visible_gpus(value, count) == gpus


def test_worker_i_gets_entry_i_mod_n():
    assert workers.worker_gpus(5, ["2", "3"]) == ["2", "3", "2", "3", "2"]
    assert workers.worker_gpus(2, ["MIG-a", "MIG-b", "MIG-c"]) == ["MIG-a", "MIG-b"]
    assert workers.worker_gpus(3, []) == []


def test_a_worker_is_told_its_gpu_and_the_parents_device(tmp_path: Path):
    """Workers start from the run's options as JSON (never this process's command line): the
    device the parent chose, each worker's GPU and its share of the threads travel in them."""
    space = load_space(ROOT / "search_spaces" / "dr_focal.toml", "dr_focal").pin("epochs", 3)
    opts = RunOptions(space=space, device="auto", workers=2, results_dir=tmp_path / "results")
    shared = workers.worker_options(opts, torch.device("cuda"), ["GPU-a", "GPU-b"], cpu_count=16)
    assert shared.device == "cuda" and shared.worker_gpus == ("GPU-a", "GPU-b") and shared.threads == 8
    back = RunOptions.from_json(shared.to_json())
    assert back == shared  # the space too: read from its file, with the run's pins
    assert back.space.pinned == {"epochs": 3} and back.space.fixed["epochs"] == 3
    command = workers.worker_command(tmp_path / "options.json", 1)
    assert command == [sys.executable, "-m", "study.run.worker", str(tmp_path / "options.json"), "--index", "1"]
    cpu = workers.worker_options(opts, CPU, [], cpu_count=1)
    assert cpu.device == "cpu" and cpu.worker_gpus == () and cpu.threads == 1


# ---------------------------------------------------------------- failure reasons


def _accelerator_error(message: str, code: int) -> torch.AcceleratorError:
    """What torch raises for a failed CUDA call: the cudaError_t is in `error_code`."""
    exc = torch.AcceleratorError(message)
    exc.error_code = code
    return exc


@pytest.mark.parametrize(
    "exc, reason",
    [
        (Diverged("training loss is nan"), "nan_loss"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "cuda_oom"),
        (_accelerator_error("CUDA error: out of memory", 2), "cuda_oom"),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), "cuda_oom"),
        (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"), "cuda_oom"),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "cuda_oom"),
        (RuntimeError("CUDA driver error: out of memory"), "cuda_oom"),
        (
            _accelerator_error(
                "CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously reported", 710
            ),
            "cuda_error",
        ),
        (_accelerator_error("CUDA error: an illegal memory access was encountered", 700), "cuda_error"),
        (_accelerator_error("CUDA error: unspecified launch failure", 719), "cuda_error"),
        (RuntimeError("CUDA error: misaligned address"), "cuda_error"),  # a sticky error seen through another check
        (_accelerator_error("CUDA error: invalid argument", 1), "AcceleratorError: CUDA error: invalid argument"),
        (
            RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"),
            "RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED",
        ),
        (
            RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes"),
            "RuntimeError: DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes",
        ),  # host memory: not the GPU's
        (ValueError("bad value\nsecond line"), "ValueError: bad value"),
    ],
)
def test_failure_reasons(exc, reason):
    assert failure_reason(exc) == reason


# ---------------------------------------------------------------- metrics without host syncs


@pytest.mark.parametrize("seed", range(3))
def test_confusion_matrix_without_bincount_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    k = 6
    target = rng.integers(0, k - 1, size=300)  # class 5 never true
    pred = rng.integers(1, k - 2, size=300)  # classes 0, 4 and 5 never predicted
    got = metrics.confusion_matrix(torch.from_numpy(target), torch.from_numpy(pred), k)
    assert got.dtype == torch.long and got.shape == (k, k)
    assert np.array_equal(got.numpy(), sk_confusion(target, pred, labels=range(k)))


# ---------------------------------------------------------------- fp32 head, autocast dtype, fp16


def test_head_gives_float32_logits_under_bf16_autocast_and_keeps_state_dict_keys():
    model = build_model("resnet18", 3, pretrained=False, seed=0).eval()
    plain = tvm.resnet18(num_classes=3)
    assert list(model.state_dict()) == list(plain.state_dict())
    model.load_state_dict(plain.state_dict())  # checkpoints of a plain nn.Linear head still load
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        assert nn.Linear(4, 3)(torch.randn(2, 4)).dtype == torch.bfloat16  # what a plain head would give
    assert logits.dtype == torch.float32
    features = torch.randn(2, model.fc.in_features, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.get_submodule(head_name(model))(features)
    assert torch.equal(out, nn.functional.linear(features.float(), model.fc.weight, model.fc.bias))


@pytest.mark.parametrize("capability, dtype", [
    (None, None),  # CPU
    ((6, 1), None),  # Pascal: no tensor cores, fp32
    ((7, 0), torch.float16), ((7, 5), torch.float16),  # Volta, Turing: fp16 + GradScaler
    ((8, 0), torch.bfloat16), ((8, 9), torch.bfloat16), ((9, 0), torch.bfloat16), ((12, 0), torch.bfloat16),
])
def test_autocast_dtype_follows_native_tensor_core_support(capability, dtype):
    assert autocast_dtype(capability) == dtype


def test_runtime_for_the_cpu_has_no_autocast():
    runtime = Runtime.for_device(CPU)
    assert not runtime.amp and not runtime.scales_loss and runtime.channels_last


def test_fp16_autocast_with_loss_scaling_trains_like_fp32():
    """The pre-Ampere path (fp16 autocast, GradScaler, fused SGD) runs and agrees with fp32."""
    splits = tiny_splits()
    runs = []
    for runtime in (Runtime(), Runtime(amp=True, amp_dtype=torch.float16)):
        cfg = fit_cfg(epochs=2, fe_epochs=0, lr=0.01, momentum=0.9, weight_decay=0.0, batch_size=8, metric="accuracy")
        model = build_model("convnet", 3, pretrained=False, seed=0)
        runs.append(fit(model, build_loss("ce", class_counts=[1, 1, 1]), splits, cfg, runtime, lambda e, r: None))
    assert Runtime(amp=True, amp_dtype=torch.float16).scales_loss
    assert runs[1].curves["train_loss"] == pytest.approx(runs[0].curves["train_loss"], rel=0.02)
    assert runs[1].curves["val_loss"] == pytest.approx(runs[0].curves["val_loss"], rel=0.02)


# ---------------------------------------------------------------- batches


def test_training_batches_drop_the_last_incomplete_batch_only_when_a_full_one_exists():
    images = np.zeros((10, 4, 4, 3), dtype=np.uint8)
    kwargs = dict(device=CPU, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True)
    train = DeviceBatches(ImageSet(images, np.arange(10), np.arange(10)), batch_size=4, drop_last=True, **kwargs)
    assert len(train) == 2 and [len(y) for _, y in train] == [4, 4]
    few = DeviceBatches(ImageSet(images, np.arange(10), np.arange(3)), batch_size=4, drop_last=True, **kwargs)
    assert len(few) == 1 and [len(y) for _, y in few] == [3]
    every = DeviceBatches(ImageSet(images, np.arange(10), np.arange(10)), batch_size=4, **kwargs)
    assert sorted(int(v) for _, y in every for v in y) == list(range(10))


def _variants(image: torch.Tensor, pad: int, black: float) -> dict[tuple[int, int, bool, bool], torch.Tensor]:
    """Every crop offset and flip of one normalised CHW image: (top, left, hflip, vflip) -> image."""
    _, h, w = image.shape
    padded = nn.functional.pad(image, (pad, pad, pad, pad), value=black)
    out = {}
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            for hflip in (False, True):
                for vflip in (False, True):
                    dims = [d for d, flip in ((2, hflip), (1, vflip)) if flip]
                    out[(dy, dx, hflip, vflip)] = padded[:, dy : dy + h, dx : dx + w].flip(dims)
    return out


@pytest.mark.parametrize("pad", [0, 2])
def test_crops_and_both_flips_in_one_gather_keep_their_probabilities(pad):
    """Each image is its own, cropped at one offset and flipped left-right and up-down with
    probability 1/2 each, independently; the same generator state gives the same batches."""
    n, size = 160, 6
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    subset = ImageSet(images, np.arange(n), np.arange(n))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    plain = {
        int(y): x
        for xb, yb in DeviceBatches(subset, batch_size=32, device=CPU, mean=mean, std=std)
        for x, y in zip(xb, yb)
    }
    augmented = DeviceBatches(subset, batch_size=32, device=CPU, mean=mean, std=std, shuffle=True,
                              augment=Augment(hflip=True, vflip=True, crop_padding=pad), seed=5)
    state = augmented.generator.get_state()
    first = list(augmented)
    cases: dict[tuple[bool, bool], int] = {}
    offsets = set()
    for xb, yb in first:
        for x, y in zip(xb, yb):
            found = [
                key for key, v in _variants(plain[int(y)], pad, (0.0 - 0.5) / 0.25).items() if torch.allclose(x, v)
            ]
            assert found, "every image is a crop and/or flip of its own image"
            offsets.add(found[0][:2])
            cases[found[0][2:]] = cases.get(found[0][2:], 0) + 1
    assert set(cases) == {(False, False), (True, False), (False, True), (True, True)}
    assert all(20 <= count <= 60 for count in cases.values()), cases  # 40 expected each
    assert offsets == {(0, 0)} if pad == 0 else len(offsets) > 15  # of 25
    augmented.generator.set_state(state)  # what a resumed checkpoint does
    again = list(augmented)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))


# ---------------------------------------------------------------- memory after every trial
# The studies here run tests/support/gpu_path.py, an objective module whose model's predictions are fixed,
# so which trial completes, is pruned or fails is known in advance.


@pytest.mark.parametrize(
    "runtime",
    [
        Runtime(),
        Runtime(compile=True, compile_backend="eager"),
        pytest.param(
            Runtime.for_device(torch.device("cuda")) if torch.cuda.is_available() else None, marks=cuda, id="cuda"
        ),
    ],
)
def test_complete_pruned_and_failed_trials_leave_no_live_model(tmp_path: Path, runtime: Runtime):
    """On CUDA also: every trial starts with the GPU memory the second one started with (the
    first leaves cuBLAS/cuDNN workspaces behind, which later trials reuse)."""
    study = enqueued(
        [
            {"predict": 0, "fail": ""},
            {"predict": 1, "fail": ""},
            {"predict": 0, "fail": "boom"},
            {"predict": 0, "fail": ""},
        ]
    )
    run_trials(tmp_path, study, runtime)
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    assert study.trials[2].user_attrs["fail_reason"] == "RuntimeError: boom"
    assert len(MODELS) == 4 and ALIVE_AT_START == [0, 0, 0, 0]
    assert MEMORY_AT_START[1:] == [MEMORY_AT_START[1]] * 3


def test_a_sticky_cuda_error_is_recorded_and_ends_the_process(tmp_path: Path):
    study = enqueued([{"predict": 0, "fail": ""}, {"predict": 0, "fail": "cuda"}, {"predict": 0, "fail": ""}])
    with pytest.raises(CudaContextLost) as err:
        run_trials(tmp_path, study, Runtime())
    assert err.value.code == CUDA_ERROR_EXIT
    message = str(err.value)
    assert "\n" not in message and "trial 1 failed with cuda_error" in message and "illegal memory access" in message
    assert "run the same command again" in message
    assert [(t.state, t.user_attrs.get("fail_reason")) for t in study.trials] == [
        (TrialState.COMPLETE, None),
        (TrialState.FAIL, "cuda_error"),
        (TrialState.WAITING, None),
    ]  # none started after it
    assert len(MODELS) == 2 and ALIVE_AT_START == [0, 0]


# ---------------------------------------------------------------- the GPU benchmark's helpers


@pytest.fixture
def bench():
    """benchmarks/common.py and gpu_throughput.py, imported as the scripts import them."""
    folder = str(ROOT / "benchmarks")
    sys.path.insert(0, folder)
    try:
        import gpu_throughput

        import common

        yield common, gpu_throughput
    finally:
        sys.path.remove(folder)


def test_the_gpu_benchmark_warms_up_every_shape_it_times(bench, tmp_path: Path):
    """Every arm times full batches only, which its warm-up has run; a remainder batch (what
    1,025 training rows gave before) is reported as a cold shape."""
    common, _ = bench
    splits = tiny_splits(train=10)
    trainee = common.make_trainee("convnet", CPU, channels_last=True)
    runtime = Runtime(channels_last=True)
    args = dict(batch_size=4, device=CPU, mean=splits.mean, std=splits.std, flips=True, channels_last=True, seed=0)
    timing = common.timed_epoch(
        trainee, common.study_batches(splits.train, **args), runtime, warmup=1, sync_steps=False
    )
    assert (timing.images, timing.steps, timing.cold_shapes) == (8, 2, ())
    ragged = common.study_batches(splits.train, **args, drop_last=False)
    assert common.timed_epoch(trainee, ragged, runtime, warmup=1, sync_steps=False).cold_shapes == ((2, 3, 16, 16),)
    paths = []
    for row, image in enumerate(splits.train.images[:10]):
        paths.append(tmp_path / f"{row}.png")
        Image.fromarray(image).save(paths[-1])
    loader = common.to_device(common.lab_loader(splits.train, paths, size=16, batch_size=4, workers=0, mean=splits.mean,
                                                std=splits.std, seed=0), CPU)
    timing = common.timed_epoch(
        common.make_trainee("convnet", CPU, channels_last=False), loader, Runtime(), warmup=1, sync_steps=False
    )
    assert (timing.images, timing.cold_shapes) == (8, ())


def test_the_gpu_benchmark_states_its_goals(bench):
    common, gpu_throughput = bench

    def timing(rate: float):
        return common.EpochTiming(images=1000, steps=10, seconds=1000 / rate, wait=0.0)

    results = [
        (
            ("resnet18", 224, 128),
            {"ceiling": timing(10000), "study": timing(9500), "seed w0": timing(1000), "seed w8": timing(3500)},
        ),
        (
            ("resnet50", 224, 32),
            {"ceiling": timing(3000), "study": timing(2900), "seed w0": timing(500), "seed w8": timing(900)},
        ),
        (
            ("resnet50", 224, 128),
            {"ceiling": timing(3500), "study": timing(3100), "seed w0": None, "seed w8": timing(1000)},
        ),
    ]
    fair, ceiling, resnet50 = gpu_throughput.goal_lines(results, "cuda: NVIDIA H100 80GB HBM3, 79 GiB")
    assert (
        fair
        == "goal study >= 3x the fair seed loop: missed in 1 of 3 configurations (lowest 2.71x, resnet18 224px b128)"
    )
    assert (
        ceiling
        == "goal study >= 90% of the model-only ceiling: missed in 1 of 3 configurations (lowest 88.6%, resnet50 "
           "224px b128)"
    )
    assert resnet50 == "goal ResNet50 at 224 px >= 3,000 img/s: met (3,100 img/s, resnet50 224px b128)"
    elsewhere = gpu_throughput.goal_lines(results, "cuda: NVIDIA A100-SXM4-40GB, 39 GiB")[2]
    assert elsewhere.endswith("(the goal is stated for an H100; this is cuda: NVIDIA A100-SXM4-40GB)")
    assert gpu_throughput.goal_lines(results[:1], "cuda: NVIDIA H100")[2].endswith(
        "not measured (no resnet50 224 px configuration ran)"
    )


# ---------------------------------------------------------------- on a real GPU (skipped without one)


@cuda
def test_on_cuda_batches_equal_the_cpus_and_neither_they_nor_the_confusion_matrix_sync():
    """torch.cuda.set_sync_debug_mode("error") raises on any operation that waits for the GPU:
    a blocking copy from pageable memory, nonzero, bincount, .item()."""
    n = 40
    images = np.random.default_rng(0).integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    subset = ImageSet(images, np.arange(n) % 3, np.arange(n))
    for augment in (Augment(hflip=True, vflip=True), Augment(hflip=True, crop_padding=2), Augment()):
        kwargs = dict(
            batch_size=16,
            mean=(0.5,) * 3,
            std=(0.25,) * 3,
            shuffle=True,
            augment=augment,
            channels_last=True,
            seed=3,
            drop_last=True,
        )
        on_cpu = list(DeviceBatches(subset, device=CPU, **kwargs))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            on_gpu = list(DeviceBatches(subset, device=torch.device("cuda"), **kwargs))
            counts = metrics.confusion_matrix(on_gpu[0][1], on_gpu[1][1], 3)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert len(on_gpu) == len(on_cpu) == 2
        for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(on_cpu, on_gpu):
            assert torch.equal(y_cpu, y_gpu.cpu()) and torch.allclose(x_cpu, x_gpu.cpu(), atol=1e-5)
        assert torch.equal(counts.cpu(), metrics.confusion_matrix(on_cpu[0][1], on_cpu[1][1], 3))


@cuda
def test_on_cuda_the_autocast_dtype_is_the_one_the_gpu_computes_natively():
    runtime = Runtime.for_device(torch.device("cuda"))
    capability = torch.cuda.get_device_capability()
    assert runtime.amp == (capability >= (7, 0))
    if runtime.amp:
        assert (runtime.amp_dtype == torch.bfloat16) == torch.cuda.is_bf16_supported(including_emulation=False)


@cuda
def test_on_cuda_a_device_side_assert_is_a_cuda_error_and_an_allocation_failure_cuda_oom():
    """In a child process, since a device-side assert breaks its CUDA context for good."""
    script = "\n".join([
        "import torch",
        "from study.run.failures import failure_reason",
        "try:",
        "    torch.empty(1 << 50, dtype=torch.uint8, device='cuda')",  # a petabyte
        "except Exception as exc:",
        "    print('oom', failure_reason(exc))",
        "x = torch.zeros(4, device='cuda')",
        "try:",
        "    x[torch.tensor([10], device='cuda')] = 1.0",
        "    torch.cuda.synchronize()",
        "except Exception as exc:",
        "    print('assert', type(exc).__name__, failure_reason(exc))",
    ])
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=repo_env())
    lines = done.stdout.splitlines()
    assert "oom cuda_oom" in lines, done.stdout + done.stderr
    assert any(line.startswith("assert ") and line.endswith(" cuda_error") for line in lines), done.stdout + done.stderr
