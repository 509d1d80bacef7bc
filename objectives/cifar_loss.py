"""The CIFAR loss objective: which loss trains a small image classifier best?

The second source lab trained its small ConvNet on CIFAR-10 with L1 on one-hot targets, cross
entropy and focal loss (gamma 0.5 and 2), with a copy of the train and test functions per loss
(test accuracy about 10 %, 55 %, 59 %, 58 %). Here the loss is one field of `Config`, every loss
comes from the one registry (`objectives.losses`) and trains through the one loop
(`objectives.train.fit`); the search space samples loss, focal gamma, learning rate and model.

The data is whatever `--data` holds (CIFAR-10 batches, an ImageFolder tree, ...): the number of
classes and their names come from it unless the study fixes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from objectives.base import DataSource, TrialContext, TrialResult, load_image_splits
from objectives.data import Augment, Splits
from objectives.losses import LOSSES, build_loss
from objectives.models import MODELS, build_model
from objectives.train import FitConfig, fit

EMBEDDED_DATASET = "digits"


@dataclass(frozen=True)
class Config:
    """One trial. Defaults are the lab's recipe (SGD momentum 0.9, StepLR every 5 epochs by 0.5,
    batch 128, 30 epochs, RandomCrop(32, padding 4) and left-right flips); a conditional
    parameter that is not sampled takes its default here (focal_gamma 0).

    `norm_mean` / `norm_std`: fixed normalisation constants (R, G, B on the 0..1 scale); empty
    computes them from the training rows. `num_classes` / `class_names`: what the study expects
    of the data; 0 / empty take them from the data.
    """

    arch: str = "convnet"
    loss: str = "ce"
    focal_gamma: float = 0.0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 30
    batch_size: int = 128
    step_size: int = 5
    step_gamma: float = 0.5
    image_size: int = 32
    crop_padding: int = 4
    hflip: bool = True
    norm_mean: tuple[float, ...] = ()
    norm_std: tuple[float, ...] = ()
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    val_fraction: float = 0.1
    split_seed: int = 0
    group_by: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        # TOML gives lists; tuples keep the config hashable (it keys the shared data load).
        for name, kind in (("norm_mean", float), ("norm_std", float), ("class_names", str)):
            object.__setattr__(self, name, tuple(kind(v) for v in getattr(self, name)))
        if self.arch not in MODELS:
            raise ValueError(f"arch {self.arch!r} is not one of {', '.join(MODELS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if self.epochs < 1 or self.batch_size < 1 or self.image_size < 16 or self.step_size < 0 or self.crop_padding < 0:
            raise ValueError("epochs and batch_size must be >= 1, image_size >= 16, step_size and crop_padding >= 0")
        if len(self.norm_mean) != len(self.norm_std) or len(self.norm_mean) not in (0, 3) or any(s <= 0 for s in self.norm_std):
            raise ValueError("norm_mean and norm_std must both be empty (computed from train) or 3 values each, std > 0")
        if self.num_classes < 0 or (self.num_classes and self.class_names and self.num_classes != len(self.class_names)):
            raise ValueError(f"num_classes {self.num_classes} contradicts the {len(self.class_names)} class_names")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction {self.val_fraction} must lie strictly between 0 and 1")


def data_key(config: Config) -> tuple:
    """What the decoded splits depend on; trials with the same key share one load."""
    return (config.image_size, config.val_fraction, config.split_seed, config.group_by, config.norm_mean, config.norm_std,
            config.num_classes, config.class_names)


def load_data(config: Config, source: DataSource) -> Splits:
    return load_image_splits(
        source,
        image_size=config.image_size,
        val_fraction=config.val_fraction,
        split_seed=config.split_seed,
        group_by=config.group_by,
        num_classes=config.num_classes or None,
        class_names=config.class_names or None,
        mean=config.norm_mean or None,
        std=config.norm_std or None,
    )


def run(config: Config, data: Splits, context: TrialContext) -> TrialResult:
    model = build_model(config.arch, data.num_classes, pretrained=False, seed=config.seed)
    loss = build_loss(config.loss, class_counts=data.train.class_counts(data.num_classes), gamma=config.focal_gamma)
    fit_config = FitConfig(
        epochs=config.epochs,
        fe_epochs=0,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        batch_size=config.batch_size,
        metric=context.metric,
        maximize=context.maximize,
        step_size=config.step_size,
        step_gamma=config.step_gamma,
        augment=Augment(hflip=config.hflip, crop_padding=config.crop_padding),
        seed=config.seed,
    )
    return fit(model, loss, data, fit_config, context.runtime, context.report, context.checkpoint)
