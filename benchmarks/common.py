"""Helpers shared by the benchmark scripts: JPEG data, the source lab's loader, timed epochs, tables.

Everything that trains goes through the project's own code: `objectives.synthetic.generate`
writes the JPEG files, `objectives.data` finds, decodes, caches and batches them,
`objectives.models.build_model` builds the nets, and one epoch is `objectives.train._train_epoch`
(the loop `fit` runs) over the batches wrapped in a clock, so the benchmark
times the exact step a study trains with. The only code written here that a study does not run is
the *baseline*: the source lab's input pipeline (a torch Dataset that opens every JPEG with PIL on
every epoch and runs torchvision transforms in a DataLoader).
"""

from __future__ import annotations

import inspect
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/NAME.py` from anywhere, without PYTHONPATH
    sys.path.insert(0, str(ROOT))

# E402: these project imports must follow the sys.path line above, so a benchmark runs as a plain script
from objectives import synthetic  # noqa: E402
from objectives.data import Augment, DeviceBatches, ImageSet  # noqa: E402
from objectives.losses import build_loss  # noqa: E402
from objectives.models import build_model  # noqa: E402
from objectives.train import FitConfig, Runtime, _start_phase, _train_epoch  # noqa: E402

DEFAULT_WORK = Path(tempfile.gettempdir()) / "study-benchmarks"
NUM_CLASSES = 5  # synthetic-fundus grades 0..4


# ---------------------------------------------------------------- devices and headers


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU (the project's own rule, `study.run.prepare.resolve_device`)."""
    from study.run.prepare import resolve_device

    return resolve_device(name)


def add_threads_arg(parser) -> None:
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads; 0: 1 on the CPU, torch's default with CUDA (default %(default)s)")


def set_threads(n: int, device: torch.device) -> str:
    """Fix torch's intra-op threads and say why. On a CPU that other processes share (this
    project's 2-core machines run tests side by side), two OpenMP threads stall at every
    barrier whenever one core is taken: identical training steps then vary ten-fold. One thread
    is slower but steady, and it leaves a core to DataLoader workers and the decode pool."""
    if n <= 0:
        if device.type == "cuda":
            return f"{torch.get_num_threads()} (torch default)"
        n = 1
    torch.set_num_threads(n)
    return (f"{n} (--threads; 1 by default on the CPU: two OpenMP threads on a shared 2-core machine made steps vary "
            "ten-fold)")


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a host clock reading means what it says (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"cuda: {props.name}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}, "
                f"cuDNN {torch.backends.cudnn.version()}")
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def print_header(title: str, device: torch.device, **sizes: object) -> None:
    """Title, device, library versions, machine load (other processes skew CPU timings), sizes."""
    import torchvision

    print(f"== {title} ==")
    print(f"device: {describe_device(device)}")
    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    try:
        import optuna

        versions += f", optuna {optuna.__version__}"
    except ImportError:
        pass
    print(f"versions: python {platform.python_version()}, {versions}")
    print(f"load: {load_note()}")
    for key, value in sizes.items():
        print(f"{key.replace('_', ' ')}: {value}")
    print(flush=True)


def load_note() -> str:
    """The 1-minute load average against the core count: timings taken on a busy machine drift."""
    try:
        one, _, _ = os.getloadavg()
    except OSError:
        return "unknown"
    cores = os.cpu_count() or 1
    note = f"load average {one:.2f} on {cores} cores"
    if one > cores * 0.75:
        note += " (busy: other processes share the CPU; arms run one after another, so ratios carry that noise)"
    return note


# ---------------------------------------------------------------- data


def synthetic_jpegs(work: Path, train_images: int, test_images: int, size: int, seed: int = 0) -> tuple[Path, float]:
    """(folder, seconds to generate) of a synthetic-fundus dataset (DR lab layout, JPEG files of
    `size` px) under `work/jpeg/`, written once by `objectives.synthetic.generate` and reused by
    later runs (seconds is then ~0)."""
    root = work / "jpeg" / f"synthetic-fundus-pairs-{train_images}-{test_images}-{size}px-seed{seed}"
    started = time.perf_counter()
    synthetic.generate(root, train_images, test_images, size=size, seed=seed)
    return root, time.perf_counter() - started


def study_batches(
    images: ImageSet,
    *,
    batch_size: int,
    device: torch.device,
    mean: Sequence[float],
    std: Sequence[float],
    flips: bool,
    channels_last: bool,
    seed: int,
    shuffle: bool = True,
    drop_last: bool = True,
) -> DeviceBatches:
    """The study's training batches (`objectives.data.DeviceBatches`), with random horizontal and
    vertical flips when `flips`, whichever way this checkout's DeviceBatches spells them; full
    batches only (`drop_last`), as `fit` trains."""
    kwargs = dict(batch_size=batch_size, device=device, mean=mean, std=std, shuffle=shuffle,
                  channels_last=channels_last, seed=seed)
    params = inspect.signature(DeviceBatches).parameters
    if "drop_last" in params:
        kwargs["drop_last"] = drop_last
    if "augment" in params:
        from objectives.data import Augment

        kwargs["augment"] = Augment(hflip=flips, vflip=flips)
    else:
        kwargs["flips"] = flips
    return DeviceBatches(images, **kwargs)


class LabJpegDataset(torch.utils.data.Dataset):
    """The source lab's dataset: every `__getitem__` opens the JPEG with PIL and runs the
    torchvision transforms, on every epoch (no cache)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Callable) -> None:
        self.paths = list(paths)
        self.labels = [int(v) for v in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as img:
            rgb = img.convert("RGB")
        return self.transform(rgb), self.labels[i]


def lab_loader(
    images: ImageSet,
    paths: Sequence[Path],
    *,
    size: int,
    batch_size: int,
    workers: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    drop_last: bool = True,
) -> torch.utils.data.DataLoader:
    """The lab's pipeline over the same rows as `images` (paths[i] is the file of row i):
    Resize, RandomHorizontalFlip, RandomVerticalFlip, ToTensor, Normalize in a DataLoader with
    `workers` processes (the lab's defaults otherwise: no pinned memory, workers restarted per
    epoch). `drop_last` keeps to full batches, the shapes every other arm times."""
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomVerticalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    rows = images.index
    dataset = LabJpegDataset([paths[i] for i in rows], images.labels[rows], transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        drop_last=drop_last and len(rows) >= batch_size,
    )


def to_device(loader: Iterable, device: torch.device) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """The lab's `x.to(device), y.to(device)` after each DataLoader batch (re-iterable)."""

    class _Moved:
        def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for x, y in loader:
                yield x.to(device), y.to(device)

        def __len__(self) -> int:
            return len(loader)

    return _Moved()


def repeated(batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` times the same device batch: a model-only epoch (no input pipeline at all)."""
    return [batch] * steps


# ---------------------------------------------------------------- one timed epoch


@dataclass(frozen=True)
class EpochTiming:
    """One timed pass: `seconds` of wall time for `images` in `steps` batches, `wait` of which the
    loop spent between the end of one step and the next batch being ready. `cold_shapes`: batch
    shapes the timed pass ran that its warm-up did not, so the timing includes their one-time
    costs (cuDNN autotuning with `cudnn.benchmark`, allocator growth); empty when fair."""

    images: int
    steps: int
    seconds: float
    wait: float
    cold_shapes: tuple[tuple[int, ...], ...] = ()

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    @property
    def wait_share(self) -> float:
        return self.wait / self.seconds if self.seconds > 0 else float("nan")

    @property
    def loader_rate(self) -> float:
        """Images per second of data wait alone: the input pipeline's own speed where it runs in
        the training loop's thread (meaningless when DataLoader workers overlap it)."""
        return self.images / self.wait if self.wait > 0 else float("inf")


class _BatchClock:
    """Batches (`clock.over(batches)`) that time how long the loop waits for each of them.

    The clock starts when the loop asks for the next batch (its previous step has been issued;
    with `sync_steps` the device has also finished it) and stops when the batch is yielded (with
    `sync_steps`, once its device-side preparation has run)."""

    def __init__(self, device: torch.device, sync_steps: bool) -> None:
        self.device = device
        self.sync_steps = sync_steps
        self.wait = 0.0
        self.images = 0
        self.steps = 0
        self.shapes: set[tuple[int, ...]] = set()

    def over(self, batches: Iterable) -> Iterable:
        """`batches` (re-iterable, with a length), timed by this clock."""
        return _Timed(self, batches)

    def timed(self, batches: Iterable) -> Iterator:
        clock = time.perf_counter
        if self.sync_steps:
            sync(self.device)
        started = clock()
        iterator = iter(batches)  # a DataLoader starts its workers here: that is waiting too
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                self.wait += clock() - started
                return
            if self.sync_steps:
                sync(self.device)
            self.wait += clock() - started
            self.images += int(batch[1].shape[0])
            self.steps += 1
            self.shapes.add(tuple(batch[0].shape))
            yield batch
            if self.sync_steps:
                sync(self.device)
            started = clock()


class _Timed:
    def __init__(self, clock: _BatchClock, batches: Iterable) -> None:
        self.clock = clock
        self.batches = batches

    def __iter__(self) -> Iterator:
        return self.clock.timed(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class Trainee:
    """A model with its loss, SGD optimizer and loss scaler, as one trial of the study would build them."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None = None


def make_trainee(arch: str, device: torch.device, *, channels_last: bool, lr: float = 0.01, seed: int = 0,
                 class_counts: Sequence[int] = (1,) * NUM_CLASSES, scales_loss: bool = False) -> Trainee:
    """`build_model` + cross entropy from the loss registry + the FT-phase SGD of `objectives.train`,
    the model placed on `device` the way `fit` places it; `scales_loss` for a `Runtime` that
    does (fp16 autocast), as `fit` then builds a GradScaler and a fused SGD."""
    torch.manual_seed(seed)
    model = build_model(arch, NUM_CLASSES, pretrained=False)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    loss_fn = build_loss("ce", class_counts=class_counts).to(device)
    cfg = FitConfig(epochs=1, fe_epochs=0, lr=lr, momentum=0.9, weight_decay=5e-4, batch_size=1, metric="kappa",
                    maximize=True, step_size=0, step_gamma=0.1, augment=Augment(), seed=seed)
    if not scales_loss:  # also what a checkout without loss scaling builds
        return Trainee(model, loss_fn, _start_phase(model, "ft", cfg)[0])
    optimizer, _ = _start_phase(model, "ft", cfg, fused=True)
    return Trainee(model, loss_fn, optimizer, torch.amp.GradScaler(device.type))


def timed_epoch(trainee: Trainee, batches: Iterable, runtime: Runtime, *, warmup: int, sync_steps: bool) -> EpochTiming:
    """`warmup` untimed batches (allocator, cuDNN autotuning, lazy init), then one full timed
    epoch over `batches`, both through `objectives.train._train_epoch`; the timing names every
    batch shape the warm-up did not run (`EpochTiming.cold_shapes`)."""
    extra = (trainee.scaler,) if trainee.scaler is not None else ()
    warm = _BatchClock(runtime.device, sync_steps=False)
    if warmup > 0:
        _train_epoch(
            trainee.model,
            trainee.loss_fn,
            warm.over(_Prefix(batches, warmup)),
            trainee.optimizer,
            "ft",
            runtime,
            "warm-up",
            *extra,
        )
    clock = _BatchClock(runtime.device, sync_steps)
    sync(runtime.device)
    started = time.perf_counter()
    _train_epoch(trainee.model, trainee.loss_fn, clock.over(batches), trainee.optimizer, "ft", runtime, "timed", *extra)
    sync(runtime.device)
    cold = tuple(sorted(clock.shapes - warm.shapes))
    return EpochTiming(clock.images, clock.steps, time.perf_counter() - started, clock.wait, cold)


class _Prefix:
    """The first `n` batches of a re-iterable (a fresh iterator each time)."""

    def __init__(self, batches: Iterable, n: int) -> None:
        self.batches = batches
        self.n = n

    def __iter__(self) -> Iterator:
        return islice(iter(self.batches), self.n)

    def __len__(self) -> int:
        return min(self.n, len(self.batches))


def release(device: torch.device) -> None:
    """Give cached device memory back between arms, so one arm's peak does not cost the next."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- printing


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (first column left, the others right)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")


def times(x: float) -> str:
    """A ratio as '7.3x'."""
    return "-" if x is None or math.isnan(x) else f"{x:.2f}x" if x < 10 else f"{x:.1f}x"


def percent(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def csv_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def csv_strs(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]
