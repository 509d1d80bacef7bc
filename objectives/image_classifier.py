"""The one image-classification objective: any torchvision classifier by name (`objectives.models`)
trained on any supported dataset layout, a frozen-backbone (FE) phase then fine-tuning (FT), with any
registered loss.

Every study the tool ships is a TOML file of settings of this objective (see
`objectives.contract`): which classes, model, pretraining, loss, augmentation, schedule and
normalisation, and which of them are searched. `Config` has two frozen parts: `DataConfig`,
everything the decoded splits depend on (so it is the key under which trials share one load),
and `TrainConfig`, everything else.

The defaults are a neutral generic recipe; a study states what its data needs:

- data: 224 px images (what torchvision's ImageNet models were trained at), a stratified 20 %
  validation split seeded 0, grouped where names are ``<id>_left`` / ``<id>_right``;
  normalisation from the pretrained weights where the study may use them, else the training rows'
  channel statistics; the number of classes and their names from the data.
- training: ResNet18 from scratch, no FE phase, SGD with lr 0.01, momentum 0.9 and weight decay
  1e-4 (torchvision's reference recipe), a constant learning rate, 10 epochs of batches of 32,
  cross entropy, and no augmentation: flips and crops only where the study says its images allow
  them (a fundus image has no up, a digit has a left and a right).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, replace

from objectives.contract import CLASSIFIER_GROUPS, CLASSIFIER_ROLES, DataSource, Possible, Settled, TrialContext
from objectives.data import Augment, Splits, find_dataset, load_splits
from objectives.errors import InputError
from objectives.losses import ALPHA_KINDS, LOSSES, build_loss
from objectives.metrics import CONFUSION_METRICS
from objectives.models import (
    build_model,
    check_arch,
    missing_weights,
    size_problem,
    weights_name,
    weights_normalisation,
    weights_of,
)
from objectives.train import CHECKPOINT_KEYS as CHECKPOINT_KEYS  # what `fit` saves: the objective's
from objectives.train import FitConfig, FitResult, fit

# the `objectives.contract.Objective` declarations
EMBEDDED_DATASET = "digits"
ROLES = CLASSIFIER_ROLES  # epochs, fe_epochs, seed, split_seed; loss and focal_gamma change the loss, lr the step
REPORT_GROUPS = CLASSIFIER_GROUPS  # cells arch x pretrained x loss, a figure per arch x pretrained
METRICS = ("loss", *CONFUSION_METRICS)  # `objectives.train.evaluate`'s


@dataclass(frozen=True)
class DataConfig:
    """What the decoded splits depend on.

    `norm_mean` / `norm_std`: fixed normalisation constants (R, G, B on the 0..1 scale); empty
    leaves them to the run (the pretrained weights' own, or the training rows' statistics).
    `num_classes` / `class_names`: what the study expects of the data; 0 / empty take them from
    the data, anything else must match it.
    """

    image_size: int = 224
    val_fraction: float = 0.2
    split_seed: int = 0
    group_by: str = "auto"
    norm_mean: tuple[float, ...] = ()
    norm_std: tuple[float, ...] = ()
    num_classes: int = 0
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # TOML gives lists; tuples keep the part hashable (it keys the shared data load)
        for name, kind in (("norm_mean", float), ("norm_std", float), ("class_names", str)):
            object.__setattr__(self, name, tuple(kind(v) for v in getattr(self, name)))
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction {self.val_fraction} must lie strictly between 0 and 1")
        if self.split_seed < 0:
            raise ValueError(f"split_seed must be >= 0, got {self.split_seed}")
        if len(self.norm_mean) != len(self.norm_std) or len(self.norm_mean) not in (0, 3) \
                or not all(math.isfinite(v) for v in self.norm_mean + self.norm_std) \
                or any(s <= 0 for s in self.norm_std):
            raise ValueError(f"norm_mean {list(self.norm_mean)} and norm_std {list(self.norm_std)} must both be empty "
                             f"or 3 finite values each, std > 0")
        named = len(self.class_names)
        if self.num_classes < 0 or (self.num_classes and named and self.num_classes != named):
            raise ValueError(f"num_classes {self.num_classes} contradicts the {len(self.class_names)} class_names")
        if self.num_classes == 1 or named == 1:
            raise ValueError("a classifier needs at least 2 classes; num_classes and class_names name 1")
        if len(set(self.class_names)) != named:
            raise ValueError(f"class_names {list(self.class_names)} name a class twice")


@dataclass(frozen=True)
class TrainConfig:
    """How one trial trains. `fe_epochs` count inside `epochs` and need pretrained weights;
    `step_size` 0 keeps the learning rate constant, else StepLR multiplies it by `step_gamma` every
    `step_size` epochs of a phase; `focal_gamma` / `focal_alpha` apply to ``loss = "focal"``;
    `crop_padding` is torchvision's RandomCrop(size, padding). A conditional parameter that is not
    sampled takes its default here. A value no trial can train with (lr 0 or NaN, momentum 1, ...)
    fails here, so the study that holds it is refused before its first trial
    (`study.spaces.space.SearchSpace.check_values`)."""

    arch: str = "resnet18"
    pretrained: bool = False
    fe_epochs: int = 0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 10
    batch_size: int = 32
    step_size: int = 0
    step_gamma: float = 0.1
    loss: str = "ce"
    focal_gamma: float = 0.0
    focal_alpha: str = "none"
    hflip: bool = False
    vflip: bool = False
    crop_padding: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_arch(self.arch)
        if self.pretrained and weights_of(self.arch) is None:
            raise ValueError(f"arch {self.arch} has no pretrained weights; set pretrained = false")
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.focal_alpha not in ALPHA_KINDS:
            raise ValueError(f"focal_alpha {self.focal_alpha!r} is not one of {', '.join(ALPHA_KINDS)}")
        for name, ok, expected in (
            ("epochs", self.epochs >= 1, ">= 1"),
            ("fe_epochs", 0 <= self.fe_epochs <= self.epochs, f"in 0..epochs ({self.epochs})"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, "a finite number >= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("step_size", self.step_size >= 0, ">= 0 (0: a constant learning rate)"),
            ("step_gamma", math.isfinite(self.step_gamma) and self.step_gamma > 0, "a finite number > 0"),
            ("focal_gamma", math.isfinite(self.focal_gamma) and self.focal_gamma >= 0, "a finite number >= 0"),
            ("crop_padding", self.crop_padding >= 0, ">= 0"),
            ("seed", 0 <= self.seed < 2**63, "in 0..2**63 - 1"),
        ):
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        if self.fe_epochs and not self.pretrained:
            raise ValueError("fe_epochs > 0 freezes a randomly initialised backbone; set pretrained = true")


@dataclass(frozen=True)
class Config:
    """One trial: its data part and its training part (settings are named uniquely across both).
    An arch that cannot take the image size fails here (`objectives.models.size_problem`), so the
    study is refused before its first trial instead of every trial failing."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        problem = size_problem(self.train.arch, self.data.image_size, self.train.pretrained)
        if problem:
            raise ValueError(problem)


def settle(possible: Possible, *, embedded: bool) -> Settled:
    """Pretrained weights the run may need must be in torchvision's cache before trial one.

    On the embedded default a missing file pins ``pretrained = false`` with a warning, so the
    README's first command works offline; on real data it is an error naming the file. Then
    `pretrained_normalisation`."""
    if True not in possible("pretrained"):
        return Settled()
    missing = missing_weights(a for a in possible("arch") if isinstance(a, str))
    if not missing:
        return Settled(adds=pretrained_normalisation(possible))
    hint = f"{missing[0].name} into {missing[0].parent}/" + (
        f" (and {', '.join(p.name for p in missing[1:])})" if missing[1:] else ""
    )
    if not embedded:
        raise InputError(f"pretrained weights missing and not downloadable: put {hint}, or --set pretrained=false")
    return Settled(pins={"pretrained": False},
                   warnings=(f"pretrained weights not found, running with pretrained=false; to use them put {hint}",))


def pretrained_normalisation(possible: Possible) -> dict[str, list[float]]:
    """Where the run may use pretrained weights and sets no `norm_mean` of its own, both arms of
    `pretrained` are normalised with the weights' own statistics (the settings to add).

    ImageNet weights expect ImageNet-normalised inputs and the FE phase freezes BatchNorm with
    ImageNet statistics, so the dataset's own statistics would handicap the pretrained arm; using
    the weights' values for the scratch arm too keeps `pretrained` a factor that changes one thing.
    The resolved values become settings, so they key the decoded data and enter the study's
    fingerprint."""
    if True not in possible("pretrained") or any(possible("norm_mean")):
        return {}
    found = {stats for a in possible("arch") if isinstance(a, str) and (stats := weights_normalisation(a)) is not None}
    if len(found) != 1:
        return {}  # no arch with weights, or archs whose weights disagree: the data's own statistics
    mean, std = found.pop()
    return {"norm_mean": list(mean), "norm_std": list(std)}


def load_data(data: DataConfig, source: DataSource) -> Splits:
    """Find the dataset under `source.root`, check it against the classes the study fixes, decode
    it once (cached) and split it by `group_by` groups (`objectives.data.splits`)."""
    files = find_dataset(source.root, num_classes=data.num_classes or None, class_names=data.class_names or None,
                         layout=source.layout, group_by=data.group_by)
    total = len(files.train) + len(files.test)
    with source.bar(total, f"decode {total} images at {data.image_size}px") as bar:
        return load_splits(files, image_size=data.image_size, val_fraction=data.val_fraction,
                           split_seed=data.split_seed, cache_dir=source.cache_dir, bar=bar,
                           mean=data.norm_mean or None, std=data.norm_std or None)


def fit_config(train: TrainConfig, *, metric: str, maximize: bool) -> FitConfig:
    """The `FitConfig` of `train`: every field the two share, copied by name (so `TrainConfig`
    holds the one set of defaults), its augmentation, and the study's metric and direction."""
    shared = {f.name for f in dataclasses.fields(FitConfig)} & {f.name for f in dataclasses.fields(TrainConfig)}
    return FitConfig(**{name: getattr(train, name) for name in shared}, metric=metric, maximize=maximize,
                     augment=Augment(hflip=train.hflip, vflip=train.vflip, crop_padding=train.crop_padding))


def run(config: Config, data: Splits, context: TrialContext) -> FitResult:
    """Build the model and loss of `config` and train them (`objectives.train.fit`)."""
    train = config.train
    model = build_model(train.arch, data.num_classes, pretrained=train.pretrained, seed=train.seed)
    loss = build_loss(train.loss, class_counts=data.train.class_counts(data.num_classes), gamma=train.focal_gamma,
                      alpha=train.focal_alpha)
    result = fit(model, loss, data, fit_config(train, metric=context.metric, maximize=context.maximize),
                 context.runtime, context.report, context.checkpoint)
    return replace(result, weights=weights_name(train.arch, train.pretrained))
