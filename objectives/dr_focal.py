"""The DR objective: a torchvision ResNet on fundus grades 0..4, FE then FT, CE or focal loss.

The source lab's questions (does ImageNet pretraining help? how long a frozen-backbone phase?
does focal loss beat cross entropy on a 73 %-majority dataset? ResNet18 or 50? which lr?) are the
fields of `Config`; the search space samples them.
"""

from __future__ import annotations

from dataclasses import dataclass

from objectives.base import DataSource, TrialContext, TrialResult, load_image_splits
from objectives.data import Augment, Splits
from objectives.losses import ALPHA_KINDS, LOSSES, build_loss
from objectives.models import build_model
from objectives.train import FitConfig, fit

EMBEDDED_DATASET = "synthetic-fundus"
NUM_CLASSES = 5
ARCHS = ("resnet18", "resnet50")


@dataclass(frozen=True)
class Config:
    """One DR trial. Defaults are the DR lab's (SGD 0.9, wd 5e-4, batch 32, 15 epochs, 512 px);
    a conditional parameter that is not sampled takes its default here."""

    arch: str = "resnet18"
    pretrained: bool = False
    fe_epochs: int = 0
    lr: float = 0.01
    loss: str = "ce"
    focal_gamma: float = 0.0
    focal_alpha: str = "none"
    epochs: int = 15
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    image_size: int = 512
    val_fraction: float = 0.2
    split_seed: int = 0
    group_by: str = "auto"
    norm_mean: tuple[float, ...] = ()
    norm_std: tuple[float, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("norm_mean", "norm_std"):  # TOML gives lists; tuples keep the config hashable
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if len(self.norm_mean) != len(self.norm_std) or len(self.norm_mean) not in (0, 3) or any(s <= 0 for s in self.norm_std):
            raise ValueError("norm_mean and norm_std must both be empty or 3 values each, std > 0")
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.focal_alpha not in ALPHA_KINDS:
            raise ValueError(f"focal_alpha {self.focal_alpha!r} is not one of {', '.join(ALPHA_KINDS)}")
        if not 0 <= self.fe_epochs <= self.epochs:
            raise ValueError(f"fe_epochs {self.fe_epochs} must lie in 0..epochs ({self.epochs})")
        if self.fe_epochs and not self.pretrained:
            raise ValueError("fe_epochs > 0 freezes a randomly initialised backbone; set pretrained = true")
        if self.epochs < 1 or self.batch_size < 1 or self.image_size < 16:
            raise ValueError("epochs and batch_size must be >= 1 and image_size >= 16")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction {self.val_fraction} must lie strictly between 0 and 1")


def data_key(config: Config) -> tuple:
    """What the decoded splits depend on; trials with the same key share one load."""
    return (config.image_size, config.val_fraction, config.split_seed, config.group_by, config.norm_mean, config.norm_std)


def load_data(config: Config, source: DataSource) -> Splits:
    return load_image_splits(source, num_classes=NUM_CLASSES, image_size=config.image_size,
                             val_fraction=config.val_fraction, split_seed=config.split_seed, group_by=config.group_by,
                             mean=config.norm_mean or None, std=config.norm_std or None)


def run(config: Config, data: Splits, context: TrialContext) -> TrialResult:
    model = build_model(config.arch, data.num_classes, pretrained=config.pretrained, seed=config.seed)
    loss = build_loss(config.loss, class_counts=data.train.class_counts(data.num_classes),
                      gamma=config.focal_gamma, alpha=config.focal_alpha)
    fit_config = FitConfig(
        epochs=config.epochs,
        fe_epochs=config.fe_epochs,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        batch_size=config.batch_size,
        metric=context.metric,
        maximize=context.maximize,
        augment=Augment(hflip=True, vflip=True),  # fundus photographs have no preferred orientation
        seed=config.seed,
    )
    return fit(model, loss, data, fit_config, context.runtime, context.report, context.checkpoint)
