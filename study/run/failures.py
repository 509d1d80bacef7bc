"""What a failed trial records as its reason, and exceptions made safe to keep."""

from __future__ import annotations

import torch

from objectives.train import Diverged

CUDA_OOM = "cuda_oom"
CUDA_ERROR = "cuda_error"  # a sticky CUDA error: the process's CUDA context is unusable

# cudaError_t values after which the CUDA context is unusable (every later call fails too):
# ECC uncorrectable, illegal address, launch timeout, context destroyed, device-side assert,
# hardware stack error, illegal instruction, misaligned address, invalid address space,
# invalid PC, launch failure, unknown
_STICKY_CUDA_CODES = frozenset({214, 700, 702, 709, 710, 714, 715, 716, 717, 718, 719, 999})
_STICKY_CUDA_TEXT = (
    "device-side assert triggered",
    "an illegal memory access was encountered",
    "unspecified launch failure",
    "misaligned address",
    "an illegal instruction was encountered",
    "uncorrectable ECC error",
    "hardware stack error",
    "invalid program counter",
    "the launch timed out",
    "context is destroyed",
    "CUDA error: unknown error",
)
# allocation failures outside PyTorch's caching allocator: cudaErrorMemoryAllocation (2) from any
# CUDA call, cuBLAS/cuSOLVER ..._ALLOC_FAILED, cuDNN 9's CUDNN_STATUS_INTERNAL_ERROR_{HOST,DEVICE}_
# ALLOCATION_FAILED (CUDNN_STATUS_ALLOC_FAILED before), cuDNN frontend workspace failures
_CUDA_OOM_TEXT = (
    "out of memory",
    "ALLOC_FAILED",
    "ALLOCATION_FAILED",
    "Not enough memory for workspace",
    "NOT_ENOUGH_WORKSPACE",
)


def failure_reason(exc: BaseException) -> str:
    """What a failed trial records: `nan_loss`; `cuda_oom` for any CUDA allocation failure
    (PyTorch's allocator, or cuBLAS/cuDNN's own); `cuda_error` for a sticky CUDA error (the
    process must end, see `study.exits.CudaContextLost`); otherwise the exception's class and
    first line. CUDA errors reach Python as `torch.AcceleratorError` (with the cudaError_t in
    `error_code`) or, from cuBLAS/cuDNN checks, as a plain RuntimeError with the status in its
    message."""
    if isinstance(exc, Diverged):
        return exc.reason
    if isinstance(exc, torch.OutOfMemoryError):
        return CUDA_OOM
    if isinstance(exc, RuntimeError):
        code, text = getattr(exc, "error_code", None), str(exc)
        if code == 2 or any(fragment in text for fragment in _CUDA_OOM_TEXT):
            return CUDA_OOM
        if code in _STICKY_CUDA_CODES or any(fragment in text for fragment in _STICKY_CUDA_TEXT):
            return CUDA_ERROR
    text = first_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else ""


def without_frames(exc: BaseException) -> BaseException:
    """`exc` with its traceback, and those of the exceptions chained to it, dropped.

    Optuna keeps a failed or pruned trial's exception in a local of the frame that caught it,
    and that frame is on the exception's traceback: a reference cycle through every frame the
    exception passed (`run`, `fit`, the model's forward), so the model, its optimizer state and
    batches would live, on the GPU, until the cyclic garbage collector happened to run.
    """
    chained: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while chained:
        link = chained.pop()
        if link is not None and id(link) not in seen:
            seen.add(id(link))
            link.__traceback__ = None
            chained += [link.__cause__, link.__context__]
    return exc
