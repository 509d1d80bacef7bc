"""The model registry: torchvision ResNet18/ResNet50 with a new head, ResNet18 adapted to 32 px
images, and the CIFAR lab's ConvNet.

Pretrained weights come only from torchvision's local cache (``$TORCH_HOME/hub/checkpoints``),
through the weights API; `missing_weights` tells before a study starts which files are absent so
the run can stop (or fall back) with the exact file name instead of failing inside a trial.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models import ResNet18_Weights, ResNet50_Weights, WeightsEnum


class ConvNet(nn.Module):
    """The CIFAR lab's small net: conv 3->4 3x3, pool, conv 4->8 3x3, pool, fc 288->32->classes."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 8, 3), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(6)  # 32 px input gives 6x6 already; other sizes are pooled to it
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(288, 32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.classifier(self.pool(self.features(x))))


class Head(nn.Linear):
    """The classifier layer (`HEAD`): an `nn.Linear`, with the same parameters and state-dict
    keys, that computes in float32 even inside an autocast region, so the logits and every metric
    taken from their argmax are not rounded to bf16 or fp16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # bf16 keeps 8 bits of mantissa: rounded logits flip the argmax of images near a tie,
        # and this one small matrix product is a negligible share of a step
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def resnet18_32() -> nn.Module:
    """torchvision's ResNet18 for 32 px images (the usual CIFAR adaptation): a 3x3 stride-1 stem
    and no max-pool, so layer1 sees 32x32 instead of ImageNet's 8x8 from a 32 px input. The
    changed stem has no ImageNet weights, hence no pretrained variant."""
    model = tvm.resnet18()
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture; `weights` is None where no pretrained weights exist."""

    build: Callable[[WeightsEnum | None], nn.Module]
    weights: WeightsEnum | None


MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(lambda w: tvm.resnet18(weights=w), ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": ModelSpec(lambda w: tvm.resnet50(weights=w), ResNet50_Weights.IMAGENET1K_V1),
    "resnet18_32": ModelSpec(lambda w: resnet18_32(), None),
    "convnet": ModelSpec(lambda w: ConvNet(), None),
}
HEAD = "fc"  # every registered model names its classifier `fc`; FE trains only this module


def build_model(arch: str, num_classes: int, *, pretrained: bool, seed: int | None = None) -> nn.Module:
    """`arch` with a freshly initialised `fc` of `num_classes` outputs.

    With `seed`, the random initial weights are drawn from it (without touching the global
    generator), so a trial's seed decides its whole run; without it they depend on whatever ran
    before in the process (the first trial of a run differed from run to run).
    """
    spec = _spec(arch)
    if pretrained and spec.weights is None:
        raise ValueError(f"{arch} has no pretrained weights")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = spec.build(spec.weights if pretrained else None)
        model.fc = Head(model.fc.in_features, num_classes)
    return model


def weights_normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) the pretrained weights of `arch` were trained with (torchvision's own
    preprocessing), None where `arch` has no pretrained weights."""
    weights = _spec(arch).weights
    if weights is None:
        return None
    preset = weights.transforms()
    return tuple(float(m) for m in preset.mean), tuple(float(s) for s in preset.std)


def weights_file(arch: str) -> Path:
    """Where torchvision's weights API looks for the pretrained checkpoint of `arch`."""
    weights = _spec(arch).weights
    if weights is None:
        raise ValueError(f"{arch} has no pretrained weights")
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def missing_weights(archs: Iterable[str]) -> list[Path]:
    """Checkpoint files of `archs` that are neither cached nor downloadable right now."""
    missing = [weights_file(a) for a in sorted(set(archs)) if _spec(a).weights is not None]
    missing = [p for p in missing if not p.is_file()]
    if missing and _can_download(_spec("resnet18").weights.url):
        for arch in sorted(set(archs)):
            if weights_file(arch) in missing:
                _spec(arch).weights.get_state_dict(progress=True, check_hash=True)
        missing = [p for p in missing if not p.is_file()]
    return missing


def _can_download(url: str, timeout: float = 3.0) -> bool:
    """True when the weights' host answers; offline machines fail fast instead of hanging."""
    host = urlparse(url).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _spec(arch: str) -> ModelSpec:
    try:
        return MODELS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(MODELS)}") from None
