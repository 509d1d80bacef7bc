"""The model registry: every torchvision classification model by name (``list_models(module=
torchvision.models)``, with its weights from ``get_model_weights``), plus ResNet18 adapted to 32 px
images and the CIFAR lab's ConvNet, each with a new classifier layer (`Head`) of the study's classes.

Pretrained weights come only from torchvision's local cache (``$TORCH_HOME/hub/checkpoints``),
through the weights API; `missing_weights` tells before a study starts which files are absent so
the run can stop (or fall back) with the exact file name instead of failing inside a trial, and
`build_model` never downloads. `size_problem` tells, when a config is built, that an architecture
cannot take the study's image size (a ViT takes only 224 px), instead of failing inside a trial.
"""

from __future__ import annotations

import difflib
import functools
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models import WeightsEnum
from torchvision.models.googlenet import InceptionAux as GoogLeNetAux
from torchvision.models.inception import InceptionAux


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


class _Float32(nn.Module):
    """Computes its layer in float32 even inside an autocast region, so the logits and every metric
    taken from their argmax are not rounded to bf16 or fp16. Mixed in before the layer (`Head`,
    `ConvHead`), whose own `forward` is what `super()` reaches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # bf16 keeps 8 bits of mantissa: rounded logits flip the argmax of images near a tie,
        # and this one small layer is a negligible share of a step
        if not torch.amp.is_autocast_available(x.device.type):  # the meta device (`size_problem`)
            return super().forward(x.float())
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


class Head(_Float32, nn.Linear):
    """The classifier layer where the architecture's was an `nn.Linear` (almost all): the same
    parameters and state-dict keys, computed in float32."""


class ConvHead(_Float32, nn.Conv2d):
    """The classifier layer where the architecture's was a `Conv2d` (SqueezeNet's 1x1 conv to the
    classes, pooled afterwards), computed in float32."""


def resnet18_32() -> nn.Module:
    """torchvision's ResNet18 for 32 px images (the usual CIFAR adaptation): a 3x3 stride-1 stem
    and no max-pool, so layer1 sees 32x32 instead of ImageNet's 8x8 from a 32 px input. The
    changed stem has no ImageNet weights, hence no pretrained variant."""
    model = tvm.resnet18()
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


OWN: dict[str, Callable[[], nn.Module]] = {"resnet18_32": resnet18_32, "convnet": ConvNet}  # no weights
# The weights a study of these archs has always used: torchvision's DEFAULT for resnet50 is V2 (another
# file, another recipe, another result). Every other arch takes its DEFAULT; a trial records which.
PINNED_WEIGHTS = {"resnet18": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V1"}
# Builders with auxiliary classifiers: trained with them, they return a namedtuple in train mode
AUX_LOGITS = frozenset({"googlenet", "inception_v3"})


@functools.cache
def architectures() -> tuple[str, ...]:
    """Every name `arch` accepts: the project's own nets, then torchvision's classifiers."""
    return (*OWN, *tvm.list_models(module=tvm))


def check_arch(arch: str) -> None:
    """A ValueError with one line (and the nearest names) where `arch` is no architecture."""
    if arch in architectures():
        return
    near = difflib.get_close_matches(arch, architectures(), n=3)
    hint = f"did you mean {' or '.join(near)}? " if near else ""
    raise ValueError(f"arch {arch!r} is not a model: {hint}expected {', '.join(OWN)} or a name of "
                     f"torchvision.models.list_models(module=torchvision.models)")


def weights_of(arch: str) -> WeightsEnum | None:
    """The pretrained weights `arch` uses (`PINNED_WEIGHTS`, else torchvision's DEFAULT); None for
    the project's own nets, which have none."""
    check_arch(arch)
    if arch in OWN:
        return None
    weights = tvm.get_model_weights(arch)
    return weights[PINNED_WEIGHTS[arch]] if arch in PINNED_WEIGHTS else weights.DEFAULT


def weights_name(arch: str, pretrained: bool) -> str | None:
    """What a trial records of its starting weights: the enum's name (``ResNet50_Weights.IMAGENET1K_V1``),
    None from scratch."""
    weights = weights_of(arch) if pretrained else None
    return None if weights is None else f"{type(weights).__name__}.{weights.name}"


def build_model(arch: str, num_classes: int, *, pretrained: bool, seed: int | None = None) -> nn.Module:
    """`arch` with a freshly initialised classifier layer (`head_name`) of `num_classes` outputs.

    With `seed`, the random initial weights are drawn from it (without touching the global
    generator), so a trial's seed decides its whole run; without it they depend on whatever ran
    before in the process (the first trial of a run differed from run to run). Built inside
    ``with torch.device("meta")`` it allocates nothing (for a look at its layers).
    """
    weights = weights_of(arch)
    if pretrained:
        if weights is None:
            raise ValueError(f"{arch} has no pretrained weights")
        path = weights_file(arch)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights of {arch} missing: put {path.name} into {path.parent}/")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = _build(arch, weights if pretrained else None)
        name = find_head(model, len(weights.meta["categories"]) if weights is not None else None)
        model.set_submodule(name, _new_head(model.get_submodule(name), num_classes))
    return model


def _build(arch: str, weights: WeightsEnum | None, **kwargs: Any) -> nn.Module:
    """torchvision's builder (or our own), returning plain logits in train mode as in eval mode."""
    if arch in OWN:
        return OWN[arch]()
    if arch not in AUX_LOGITS:
        return tvm.get_model(arch, weights=weights, **kwargs)
    if weights is None:  # init_weights: the builders' own init, without their warning that it will change
        return tvm.get_model(arch, aux_logits=False, init_weights=True, **kwargs)
    # with weights torchvision refuses aux_logits=False (its checkpoints hold the auxiliary heads):
    # drop them after loading, as its googlenet builder does
    model = tvm.get_model(arch, weights=weights, **kwargs)
    model.aux_logits = False
    for name, child in list(model.named_children()):
        if isinstance(child, (InceptionAux, GoogLeNetAux)):
            setattr(model, name, None)
    return model


def find_head(model: nn.Module, categories: int | None) -> str:
    """The name of `model`'s classifier layer: its last `nn.Linear` (``fc``, ``classifier.1``,
    ``heads.head``), else its last `Conv2d` with `categories` (the weights' class count) outputs
    (SqueezeNet's ``classifier.1``). Modules are in registration order, which for every torchvision
    classifier ends with the classifier."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [name for name, module in model.named_modules()
             if isinstance(module, nn.Conv2d) and module.out_channels == categories]
    if convs:
        return convs[-1]
    raise ValueError(f"{type(model).__name__} has no nn.Linear and no Conv2d of {categories} outputs to replace")


def _new_head(old: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(old, nn.Linear):
        return Head(old.in_features, num_classes)
    assert isinstance(old, nn.Conv2d)
    # torch types a Conv2d's sizes as tuple[int, ...]; a 2-d convolution's are pairs
    pair = tuple[int, int]
    return ConvHead(old.in_channels, num_classes, cast(pair, old.kernel_size), cast(pair, old.stride),
                    cast("str | pair", old.padding))


def head_name(model: nn.Module) -> str:
    """The name of the classifier layer `build_model` put in: the one module FE trains."""
    names = [name for name, module in model.named_modules() if isinstance(module, (Head, ConvHead))]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Head layer: build it with objectives.models.build_model")
    return names[-1]


def in_head(name: str, head: str) -> bool:
    """Whether module or parameter `name` belongs to layer `head` (``classifier.1.weight`` does,
    ``classifier.10.weight`` does not)."""
    return name == head or name.startswith(head + ".")


@functools.cache
def size_problem(arch: str, image_size: int, pretrained: bool = False) -> str:
    """'' where `arch` takes `image_size` px square images, else one line saying what it needs
    (``vit_b_16 needs image_size 224``, ``alexnet needs image_size >= 63``).

    Decided by an eval-mode forward of a (2, 3, S, S) batch through the model built on the meta
    device (no memory, no weights, milliseconds), so it holds for whatever the builder does. RegNet
    builders read tensor values while building, which the meta device has not: for them the
    weights' recorded ``min_size`` decides."""
    weights = weights_of(arch)
    least = int(weights.meta["min_size"][0]) if weights is not None and "min_size" in weights.meta else None
    try:
        model = _meta_model(arch, weights if pretrained else None)
    except Exception:  # noqa: BLE001 - whatever a builder raises on the meta device
        return "" if least is None or image_size >= least else f"{arch} needs image_size >= {least}"
    if _takes(model, image_size):
        return ""
    if least is None or not _takes(model, least):
        return f"{arch} cannot take image_size {image_size}"
    if _takes(model, least + 1) or _takes(model, 2 * least):
        return f"{arch} needs image_size >= {least}"
    return f"{arch} needs image_size {least}"


@functools.lru_cache(maxsize=4)
def _meta_model(arch: str, weights: WeightsEnum | None) -> nn.Module:
    """`arch` on the meta device, in eval mode, with the input size its `weights` fix: a ViT's
    weights set its image_size (vit_h_14's are 518 px)."""
    kwargs = {"image_size": int(weights.meta["min_size"][0])} if weights is not None and arch.startswith("vit_") else {}
    with torch.device("meta"):
        return _build(arch, None, **kwargs).eval()


def _takes(model: nn.Module, size: int) -> bool:
    try:
        with torch.no_grad():
            model(torch.empty(2, 3, size, size, device="meta"))
        return True
    except Exception:  # noqa: BLE001 - a size assert, a too-small kernel input, a view that does not fit
        return False


def weights_normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) the pretrained weights of `arch` were trained with (torchvision's own
    preprocessing), None where `arch` has no pretrained weights."""
    weights = weights_of(arch)
    if weights is None:
        return None
    preset = weights.transforms()
    return tuple(float(m) for m in preset.mean), tuple(float(s) for s in preset.std)


def weights_file(arch: str) -> Path:
    """Where torchvision's weights API looks for the pretrained checkpoint of `arch`: the file
    name of its weights' URL under ``$TORCH_HOME/hub/checkpoints``."""
    weights = weights_of(arch)
    if weights is None:
        raise ValueError(f"{arch} has no pretrained weights")
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def missing_weights(archs: Iterable[str]) -> list[Path]:
    """Checkpoint files of `archs` that are neither cached nor downloadable right now."""
    pretrained = {a: w for a in archs if (w := weights_of(a)) is not None}
    missing = [a for a in sorted(pretrained) if not weights_file(a).is_file()]
    if missing and _can_download(pretrained[missing[0]].url):
        for arch in missing:
            pretrained[arch].get_state_dict(progress=True, check_hash=True)
    return [weights_file(a) for a in missing if not weights_file(a).is_file()]


def _can_download(url: str, timeout: float = 3.0) -> bool:
    """True when the weights' host answers; offline machines fail fast instead of hanging."""
    host = urlparse(url).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
