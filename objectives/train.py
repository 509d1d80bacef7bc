"""The one training loop: a feature-extraction (FE) phase, then fine-tuning (FT), any loss.

FE trains only the new head on a truly frozen backbone (``requires_grad=False`` and BatchNorm in
eval mode, so neither weights nor running statistics move). FT then trains every parameter with a
fresh optimizer. `fe_epochs` count inside `epochs`. After every validation pass
`report(epoch, row)` is called with that epoch's curve row (``train_loss``, ``val_loss``,
``val_kappa`` ...); it may raise (pruning). The bar of `Runtime.bar` counts each epoch's batches.
The best epoch is chosen on validation only; the test split is evaluated once, with the weights of
that epoch, for reporting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from objectives import metrics
from objectives.data import Augment, DeviceBatches, ImageSet, Splits
from objectives.models import head_name, in_head
from objectives.progress import BarFactory, no_bar

Report = Callable[[int, Mapping[str, float | str]], None]
# a torch.compile backend: "inductor", "eager", or a callable (dynamo's test counters)
CompileBackend = str | Callable[..., Any]


class Diverged(RuntimeError):
    """The training loss became NaN or infinite; `reason` is what the trial records."""

    reason = "nan_loss"


# what `fit` saves after an epoch and resumes from: the one list (the objective's `CHECKPOINT_KEYS`,
# which `study.run.checkpoints` checks a saved state against)
CHECKPOINT_KEYS = frozenset({"epoch", "phase", "model", "optimizer", "scheduler", "curves", "best_score", "best_epoch",
                             "best_model", "best_val", "torch_rng", "batch_rng"})


@dataclass(frozen=True)
class FitConfig:
    """What to train: epochs and phases, optimiser settings, augmentation, the metric that picks
    the best epoch. No defaults: a study's are its objective's settings
    (`objectives.image_classifier.TrainConfig`, which `image_classifier.fit_config` copies here
    by name), so there is one set of them."""

    epochs: int
    fe_epochs: int
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    metric: str
    maximize: bool
    step_size: int  # StepLR period in epochs within a phase; 0 keeps the rate constant
    step_gamma: float
    augment: Augment
    seed: int


@dataclass(frozen=True)
class Runtime:
    """How to train: device and its fast paths, evaluation batch, and the bar over each epoch's
    training batches (`objectives.progress`; a terminal shows one)."""

    device: torch.device = torch.device("cpu")
    amp: bool = False  # autocast in `amp_dtype`; float16 also scales the loss (GradScaler)
    amp_dtype: torch.dtype = torch.bfloat16
    channels_last: bool = False
    compile: bool = False  # torch.compile the model: pays back its compile time only over long trials
    compile_backend: CompileBackend = "inductor"
    eval_batch_size: int = 256
    bar: BarFactory = field(default=no_bar)

    @classmethod
    def for_device(cls, device: torch.device, **kwargs: Any) -> Runtime:
        """channels_last everywhere (NHWC is how batches arrive; README, Performance), autocast on
        CUDA in the dtype `autocast_dtype` picks for the GPU."""
        dtype = autocast_dtype(torch.cuda.get_device_capability(device) if device.type == "cuda" else None)
        return cls(device=device, amp=dtype is not None, amp_dtype=dtype or torch.bfloat16, channels_last=True,
                   **kwargs)

    @property
    def scales_loss(self) -> bool:
        """fp16 autocast: gradients too small for fp16 would underflow to zero without loss scaling."""
        return self.amp and self.amp_dtype == torch.float16


def autocast_dtype(capability: tuple[int, int] | None) -> torch.dtype | None:
    """The autocast dtype for a CUDA GPU of compute `capability` (None: no GPU, no autocast).

    bf16 from Ampere (8.0) on, where tensor cores compute it natively; fp16, trained with loss
    scaling, on Volta and Turing (7.x), whose tensor cores have fp16 but no bf16 (bf16 is emulated
    there, slower than fp32); None (fp32) on older GPUs, which have no tensor cores, so fp16 would
    risk underflow for little or no speed.
    """
    if capability is None or tuple(capability) < (7, 0):
        return None
    return torch.bfloat16 if tuple(capability) >= (8, 0) else torch.float16


@dataclass(frozen=True)
class Evaluation:
    """One split's loss, metrics and confusion matrix, and each image's softmax probabilities
    (n x K float32, in the ImageSet's row order: what endpoints, calibration and the test
    intervals are computed from). Not compared by value (arrays)."""

    loss: float
    metrics: dict[str, float | list[float]]
    confusion: list[list[int]]
    probabilities: np.ndarray | None = field(default=None, compare=False, repr=False)

    def checkpointed(self) -> dict[str, Any]:
        """The checkpoint form: plain fields, probabilities as a float16 tensor (a weights-only
        `torch.load` reads tensors, not numpy arrays; float16 halves a big split's share)."""
        plain = {"loss": self.loss, "metrics": self.metrics, "confusion": self.confusion}
        if self.probabilities is not None:
            plain["probabilities"] = torch.from_numpy(np.asarray(self.probabilities, dtype=np.float16))
        return plain

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any]) -> Evaluation:
        """An `Evaluation` from `checkpointed` (or an older checkpoint without probabilities)."""
        probabilities = state.get("probabilities")
        if probabilities is not None:
            probabilities = np.asarray(probabilities.float().numpy() if torch.is_tensor(probabilities)
                                       else probabilities, dtype=np.float32)
        return cls(loss=state["loss"], metrics=state["metrics"], confusion=state["confusion"],
                   probabilities=probabilities)


@dataclass(frozen=True)
class FitResult:
    """Per-epoch curves, the best (validation) epoch, and val/test evaluations at that epoch;
    `weights`: the pretrained weights the model started from (`objectives.models.weights_name`:
    torchvision's DEFAULT of an arch can change between versions), None from scratch."""

    curves: dict[str, list[Any]]
    best_epoch: int
    val: Evaluation
    test: Evaluation
    weights: str | None = None


@dataclass(frozen=True)
class Checkpointing:
    """Mid-trial resume: `save` receives the state after a finished epoch once `every_s` seconds
    have passed since the trial started or last saved (0: after every epoch); `resume` is such a
    state to continue from (a trial whose worker died or was interrupted).

    Why a time interval: a ResNet checkpoint with its optimizer state is ~140 MB, which costs far
    more than a seconds-long CPU epoch but nothing next to a minutes-long GPU one; a kill loses at
    most `every_s` seconds of training plus one epoch.
    """

    save: Callable[[dict[str, Any]], None]
    resume: dict[str, Any] | None = None
    every_s: float = 0.0


def fit(model: nn.Module, loss_fn: nn.Module, splits: Splits, cfg: FitConfig, runtime: Runtime, report: Report,
        checkpoint: Checkpointing | None = None) -> FitResult:
    device = runtime.device
    torch.manual_seed(cfg.seed)
    # Module.to takes a device and a memory_format together; torch's overloads list them apart
    model = model.to(device, memory_format=torch.channels_last if runtime.channels_last  # type: ignore[call-overload]
                     else torch.contiguous_format)
    loss_fn = loss_fn.to(device)
    batches = DeviceBatches(
        splits.train,
        batch_size=cfg.batch_size,
        device=device,
        mean=splits.mean,
        std=splits.std,
        shuffle=True,
        augment=cfg.augment,
        channels_last=runtime.channels_last,
        seed=cfg.seed,
        drop_last=True,
    )
    if runtime.compile:
        # Each trial starts from an empty dynamo cache: trials of ResNet18 and ResNet50 (which
        # share ResNet.forward) never add up to dynamo's recompile limit, past which it would
        # silently run that function eagerly.
        torch._dynamo.reset()
    # the compiled module shares the parameters, so state dicts stay plain
    # (torch.compile of a Module returns an OptimizedModule, a Module; its stub says only Callable)
    step = cast(nn.Module, torch.compile(model, backend=runtime.compile_backend)) if runtime.compile else model
    scaler = torch.amp.GradScaler(device.type, enabled=runtime.scales_loss)
    curves: dict[str, list[Any]] = {}
    last_saved = time.monotonic()
    best: tuple[float, int, dict[str, torch.Tensor], Evaluation] | None = None
    optimizer: torch.optim.SGD | None = None
    scheduler: torch.optim.lr_scheduler.StepLR | None = None
    state = checkpoint.resume if checkpoint is not None else None
    first = 1 if state is None else int(state["epoch"]) + 1
    if state is not None:
        model.load_state_dict(state["model"])
        curves = {k: list(v) for k, v in state["curves"].items()}
        best = (state["best_score"], state["best_epoch"], state["best_model"],
                Evaluation.from_checkpoint(state["best_val"]))
        torch.set_rng_state(state["torch_rng"])
        batches.generator.set_state(state["batch_rng"])
    for epoch in range(first, cfg.epochs + 1):
        phase = "fe" if epoch <= cfg.fe_epochs else "ft"
        if epoch == first or epoch == cfg.fe_epochs + 1:
            optimizer, scheduler = _start_phase(model, phase, cfg, fused=scaler.is_enabled())
            if state is not None and epoch == first and state["phase"] == phase:  # same phase: same optimizer
                optimizer.load_state_dict(state["optimizer"])
                if scheduler is not None:
                    scheduler.load_state_dict(state["scheduler"])
        assert optimizer is not None  # the first epoch starts a phase
        started = time.perf_counter()
        train_loss, train_acc = _train_epoch(step, loss_fn, batches, optimizer, phase, runtime,
                                             f"epoch {epoch}/{cfg.epochs} {phase}", scaler)
        if scheduler is not None:
            scheduler.step()
        val = evaluate(step, splits.val, splits, runtime)
        row = {
            "epoch": epoch,
            "phase": phase,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val.loss,
            **{f"val_{k}": v for k, v in val.metrics.items() if k != "recall"},
            "seconds": time.perf_counter() - started,
        }
        for key, value in row.items():
            curves.setdefault(key, []).append(value)
        score = val.loss if cfg.metric == "loss" else _scalar(val.metrics[cfg.metric])
        if best is None or (score > best[0] if cfg.maximize else score < best[0]):
            weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            best = (score, epoch, weights, val)
        report(epoch, row)
        if checkpoint is not None and time.monotonic() - last_saved >= checkpoint.every_s:
            checkpoint.save({  # CHECKPOINT_KEYS
                "epoch": epoch, "phase": phase, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else {}, "curves": curves,
                "best_score": best[0], "best_epoch": best[1], "best_model": best[2],
                "best_val": best[3].checkpointed(),
                "torch_rng": torch.get_rng_state(), "batch_rng": batches.generator.get_state(),
            })
            last_saved = time.monotonic()
    assert best is not None, "fit needs at least one epoch"
    model.load_state_dict(best[2])
    test = evaluate(step, splits.test, splits, runtime)
    return FitResult(curves=curves, best_epoch=best[1], val=best[3], test=test)


def freeze_backbone(model: nn.Module, frozen: bool) -> None:
    """Set `requires_grad` of every parameter outside the head (`objectives.models.head_name`: the
    one layer `build_model` replaced; mobilenet_v3's 576->1024 Linear or vgg's FC6/FC7 are backbone)
    to ``not frozen``."""
    head = head_name(model) if frozen else ""
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen or in_head(name, head))


def _scalar(value: float | list[float]) -> float:
    """A metric that picks the best epoch: one number (TrainConfig's metric is never the per-class recall)."""
    assert not isinstance(value, list), "a per-class metric cannot pick the best epoch"
    return float(value)


def _start_phase(model: nn.Module, phase: str, cfg: FitConfig, *,
                 fused: bool = False) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.StepLR | None]:
    """Freeze or unfreeze the backbone and build the phase's SGD (`fused`: one kernel that also
    takes a GradScaler's scale and inf check on the device, so scaled steps need no host sync)."""
    freeze_backbone(model, frozen=phase == "fe")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                fused=fused or None)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.step_gamma) if cfg.step_size else None
    return optimizer, scheduler


def _set_train_mode(model: nn.Module, phase: str) -> None:
    """Train mode, except that in FE the backbone's BatchNorm layers keep their statistics."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper: the names are the model's
    model.train()
    if phase == "fe":
        head = head_name(model)
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not in_head(name, head):
                module.eval()


def _train_epoch(model: nn.Module, loss_fn: nn.Module, batches: DeviceBatches, optimizer: torch.optim.Optimizer,
                 phase: str, runtime: Runtime, desc: str,
                 scaler: torch.amp.GradScaler | None = None) -> tuple[float, float]:
    """One pass over the training set; sums stay on the device until the epoch ends (one sync).
    `scaler` scales the loss of fp16 steps (a disabled one, or None, leaves steps as they are)."""
    _set_train_mode(model, phase)
    scaler = scaler if scaler is not None else torch.amp.GradScaler(runtime.device.type, enabled=False)
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    seen = 0
    with runtime.bar(len(batches), desc) as bar:
        for x, y in batches:
            with torch.autocast(runtime.device.type, dtype=runtime.amp_dtype, enabled=runtime.amp):
                logits = model(x)
                loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # skips a step whose scaled gradients overflowed
            scaler.update()
            loss_sum += loss.detach() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            bar.update(1)
    mean_loss = loss_sum.item() / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise Diverged(f"training loss is {mean_loss} in the {phase} phase")
    return mean_loss, correct.item() / max(seen, 1)


@torch.inference_mode()
def evaluate(model: nn.Module, images: ImageSet, splits: Splits, runtime: Runtime) -> Evaluation:
    """Loss and metrics on one split, confusion matrix accumulated on the device.

    The loss is the cross entropy of the softmax for every trial, whatever loss it trains with:
    focal, alpha-weighted or L1 training losses are different quantities, and a validation loss
    that selects epochs, prunes and ranks trials must be the same quantity for all of them."""
    model.eval()
    k = splits.num_classes
    confusion = torch.zeros((k, k), dtype=torch.long, device=runtime.device)
    loss_sum = torch.zeros((), device=runtime.device)
    probabilities: list[torch.Tensor] = []
    batches = DeviceBatches(
        images,
        batch_size=runtime.eval_batch_size,
        device=runtime.device,
        mean=splits.mean,
        std=splits.std,
        channels_last=runtime.channels_last,
    )
    for x, y in batches:
        if runtime.compile:  # one graph for every batch size, the last, partial batch included
            torch._dynamo.maybe_mark_dynamic(x, 0)
        with torch.autocast(runtime.device.type, dtype=runtime.amp_dtype, enabled=runtime.amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        confusion += metrics.confusion_matrix(y, logits.argmax(1), k)
        probabilities.append(torch.softmax(logits.float(), dim=1))  # stays on the device until the end
    counts = confusion.cpu().numpy()
    loss = loss_sum.item() / max(len(images), 1)
    probs = (torch.cat(probabilities).cpu().numpy() if probabilities else np.zeros((0, k))).astype(np.float32)
    return Evaluation(loss=loss, metrics=metrics.summarize(counts), confusion=counts.astype(np.int64).tolist(),
                      probabilities=probs)
