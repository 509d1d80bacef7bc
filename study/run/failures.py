"""What a failed trial records as its reason, which errors are the environment's rather than the
trial's, and exceptions made safe to keep.

Importing this module imports no torch (a plug-in objective that does not use it never loads it):
an exception of torch, or of `objectives.train`, can only exist once its module is loaded, so
each check looks for the module in `sys.modules` first.
"""

from __future__ import annotations

import errno
import sys

import optuna
import sqlalchemy.exc

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
    train, torch = sys.modules.get("objectives.train"), sys.modules.get("torch")
    if train is not None and isinstance(exc, train.Diverged):
        return exc.reason
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return CUDA_OOM
    if isinstance(exc, RuntimeError):
        code, text = getattr(exc, "error_code", None), str(exc)
        if code == 2 or any(fragment in text for fragment in _CUDA_OOM_TEXT):
            return CUDA_OOM
        if code in _STICKY_CUDA_CODES or any(fragment in text for fragment in _STICKY_CUDA_TEXT):
            return CUDA_ERROR
    text = first_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_environment(exc: BaseException) -> bool:
    """Whether `exc` is an error of the run's own environment, not of the trial: any OSError (a
    results folder or cache that is read-only, full, gone or failing; a full disk surfaces as
    ENOSPC, EDQUOT, EROFS, EIO, EACCES) except ENOMEM, which a trial's own size causes like
    `cuda_oom`; or an error of the storage (SQLAlchemy's, or Optuna's StorageInternalError that
    wraps them). Another trial would fail the same way, so the run stops (`study.run.loop`)."""
    if isinstance(exc, OSError):
        return exc.errno != errno.ENOMEM
    return isinstance(exc, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError))


def environment_cause(exc: BaseException) -> BaseException | None:
    """The error of the environment (`is_environment`) that `exc` is or that led to it, following
    its cause and context: an error of Optuna's own bookkeeping can hide the storage's (Optuna 5's
    `_run_trial` ends in UnboundLocalError when the storage fails both telling and reading a trial)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if is_environment(link):
            return link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return None


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
