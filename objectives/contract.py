"""The objective contract: the typed interface (`Objective`) an objective module provides, and
what the runner does with it.

A study's TOML names its objective in ``[study].objective``: ``"image_classifier"`` (the default:
`objectives.image_classifier`, which every shipped study uses), another module of this package by
its bare name, or a module of your own as ``"package.module"``, imported with importlib from the
Python path of the ``study`` command (its working folder, ``PYTHONPATH``, installed packages).
A module that cannot be imported, or does not provide the interface, is a one-line error before
anything runs.

`Objective` is a `typing.Protocol` (as Optuna states samplers and storages): a module satisfies
it by defining its names at module level; no base class, no registration. It is
runtime-checkable, so `objective` can tell a full module from one written against the contract's
first form (``Config``, ``EMBEDDED_DATASET``, ``load_data``, ``run`` only), which it wraps with
the defaults of `legacy` (the image classifier's setting names, checkpoint keys and metrics), so
such a module keeps working unchanged.

The runner (``study/``) reads no setting of a particular objective by name: the epoch count, the
FE epochs, the seed and the split seed are whichever settings `ROLES` names, checkpoints are
checked against `CHECKPOINT_KEYS`, the study's metric against `METRICS`. How a trial trains (an
image classifier's `objectives.train.FitConfig`, built from its `TrainConfig`) is the objective's
own business: the runner never builds it, so the interface does not name it.

How the runner calls it, per run: resolve and import the module (`objective`); check every
setting of the TOML against `settings` (name and type); build one ``Config`` from the fixed
settings and the pins (`build_config`) so contradictions fail before the first trial;
``load_data`` for it (the manifest is written); then per trial: the sampler's values plus the
fixed settings (and ``ROLES.seed`` set to the study seed + the trial number, unless the space
sets it) -> ``Config`` -> ``load_data`` (shared where the data part is equal) -> ``run``. The
trial stores the config as one flat mapping (`flat`). Nothing here imports the CLI, Optuna or torch.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from objectives.progress import BarFactory, no_bar

if TYPE_CHECKING:
    from objectives.train import Checkpointing, Report, Runtime

PARTS = ("data", "train")  # the parts of a Config, in the order their settings are listed
PROVIDES = ("Config", "EMBEDDED_DATASET", "load_data", "run")  # what every objective module defines
RESUMES_FROM = frozenset({"epoch", "curves"})  # what the runner itself reads of a checkpoint (the epochs it replays)


@dataclass(frozen=True)
class ReportGroups:
    """The settings a study's report groups its trials by, where the study's file leaves
    ``[report]`` ``cells``, ``figures`` or ``labels`` out: an objective's optional
    ``REPORT_GROUPS`` (none: no cells table and only the best trial's figures). The report shows
    a factor only where the study's trials vary it. `labels`: setting -> value as TOML writes it
    (``true``) -> the label in figure names (``pretrained``)."""

    cells: tuple[str, ...] = ()
    figures: tuple[str, ...] = ()
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


# The image classifier's DR comparison (architecture x pretraining x loss): its REPORT_GROUPS, the
# groups of a module of the contract's first form (`legacy`), and what a study made before studies
# recorded their [report] is grouped by (every such study ran the image classifier).
CLASSIFIER_GROUPS = ReportGroups(cells=("arch", "pretrained", "loss"), figures=("arch", "pretrained"),
                                 labels={"pretrained": {"true": "pretrained", "false": "scratch"}})


def report_groups(module: Any) -> ReportGroups:
    """What `module` (an objective, or its `Legacy` wrapper) declares as `REPORT_GROUPS`, else none."""
    groups = getattr(module, "REPORT_GROUPS", None)
    return groups if isinstance(groups, ReportGroups) else ReportGroups()


@dataclass(frozen=True)
class DataSource:
    """Where a trial's data lives: a folder in a known layout, the decoded-image cache and the bar
    that shows decoding."""

    root: Path
    cache_dir: Path | None = None
    bar: BarFactory = field(default=no_bar)
    layout: str | None = None  # forced layout (`--layout`); None detects it


@dataclass(frozen=True)
class TrialContext:
    """What the runner gives a trial besides its config: how to train and whom to report to."""

    runtime: Runtime
    report: Report
    metric: str
    maximize: bool
    checkpoint: Checkpointing | None = None  # per-epoch state, and where to resume from


@dataclass(frozen=True)
class Setting:
    """One setting of an objective: its type hint, its default and the part of Config it belongs to."""

    name: str
    hint: Any
    default: Any
    part: str


def settings(config_cls: type) -> dict[str, Setting]:
    """Every setting of `config_cls` by name, data part first; a TypeError if both parts use a name."""
    parts = typing.get_type_hints(config_cls)
    found: dict[str, Setting] = {}
    for part in PARTS:
        part_cls = parts[part]
        hints = typing.get_type_hints(part_cls)
        for f in dataclasses.fields(part_cls):
            if f.name in found:
                raise TypeError(f"setting {f.name} is in both parts of {config_cls.__qualname__}")
            found[f.name] = Setting(f.name, hints[f.name], f.default, part)
    return found


def build_config(config_cls: type, values: Mapping[str, Any]) -> Any:
    """The `config_cls` of the flat settings `values` (the rest at their defaults). An unknown name
    is a TypeError; a failed check of a part, its ValueError."""
    known = settings(config_cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}")
    parts = typing.get_type_hints(config_cls)
    return config_cls(**{part: parts[part](**{k: v for k, v in values.items() if known[k].part == part})
                         for part in PARTS})


def flat(config: Any) -> dict[str, Any]:
    """Every setting of `config` by name, as one mapping (what a trial records as its config)."""
    return {k: v for part in PARTS for k, v in dataclasses.asdict(getattr(config, part)).items()}


def missing(module: ModuleType) -> list[str]:
    """What `module` lacks of the contract: names every objective defines (`PROVIDES`), a Config
    of another shape, or roles (`Roles`) naming no setting; the declarations of `Objective`
    beyond `PROVIDES` are optional (`legacy` supplies them)."""
    absent = [name for name in PROVIDES if not hasattr(module, name)]
    config_cls = getattr(module, "Config", None)
    if config_cls is not None:
        parts = typing.get_type_hints(config_cls) if dataclasses.is_dataclass(config_cls) else {}
        if not all(dataclasses.is_dataclass(parts.get(part)) for part in PARTS):
            absent.append("a Config of dataclass parts data and train")
        else:
            try:
                names = settings(config_cls)
            except TypeError as exc:
                absent.append(f"a Config with unique setting names ({exc})")
            else:
                roles = getattr(module, "ROLES", Roles())
                absent += roles.problems(names) if hasattr(module, "ROLES") else \
                    [] if roles.epochs in names else [f"a setting {roles.epochs!r} (or ROLES naming its epoch count)"]
    return absent


@dataclass(frozen=True)
class Roles:
    """Which of an objective's settings play the parts the runner needs, by name; None where the
    objective has no such setting.

    ``epochs`` (required): the last epoch, after which a trial is never pruned, and the pruner's
    largest resource; ``fe_epochs``: leading epochs the pruner does not see (0 when None);
    ``seed``: set to the study seed + the trial number unless the space sets it, and to each
    evaluation seed by ``ablate``; ``split_seed``: what else ``ablate`` sets to each evaluation
    seed, so a seed also draws the validation split. ``loss``: the settings whose change changes
    the loss function, and ``step_size`` the learning rate: an ablation whose variants change a
    ``loss`` setting gets the caption's caveat that the loss also moves the effective step size,
    which retuning ``step_size`` mostly removes (none by default)."""

    epochs: str = "epochs"
    fe_epochs: str | None = "fe_epochs"
    seed: str | None = "seed"
    split_seed: str | None = "split_seed"
    loss: tuple[str, ...] = ()
    step_size: str | None = None

    def epoch_count(self, config: Any) -> int:
        """The epochs a trial of `config` trains."""
        return int(flat(config)[self.epochs])

    def fe_epoch_count(self, config: Any) -> int:
        """The leading epochs of `config` the pruner does not see."""
        return int(flat(config)[self.fe_epochs]) if self.fe_epochs else 0

    def split_seed_of(self, config: Any) -> int | None:
        """The seed of `config`'s validation split; None where the objective has none."""
        return flat(config).get(self.split_seed) if self.split_seed else None

    def seeded(self, values: Mapping[str, Any], seed: int, split: bool) -> dict[str, Any]:
        """`values` run with `seed`, which also draws the validation split where `split`."""
        named = {self.seed: seed} if self.seed else {}
        if split and self.split_seed:
            named[self.split_seed] = seed
        return {**values, **named}

    def problems(self, names: Mapping[str, Any]) -> list[str]:
        """The roles naming a setting that is not among `names` (an objective's `settings`)."""
        wanted = [*((role, getattr(self, role)) for role in NAMED_ROLES), *(("loss", n) for n in self.loss),
                  ("step_size", self.step_size)]
        return [f"ROLES.{role} = {name!r}, which is not a setting of its Config"
                for role, name in wanted if name is not None and name not in names]


NAMED_ROLES = ("epochs", "fe_epochs", "seed", "split_seed")  # the roles of `Roles` that name one setting each
# The image classifier's roles: ROLES of `objectives.image_classifier`, the defaults of a module of the
# contract's first form (`legacy`, where its Config has the setting) and what an ablation recorded
# before ablations recorded their loss roles is read with (every such ablation ran the image classifier).
CLASSIFIER_ROLES = Roles(epochs="epochs", fe_epochs="fe_epochs", seed="seed", split_seed="split_seed",
                         loss=("loss", "focal_gamma"), step_size="lr")


@dataclass(frozen=True)
class Settled:
    """What an objective's `settle` decides about a run's settings before its first trial:
    settings to pin (recorded as pins), settings to add to the fixed ones (they enter the
    study's fingerprint), and one-line warnings to show."""

    pins: Mapping[str, Any] = field(default_factory=dict)
    adds: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


Possible = Callable[[str], tuple[Any, ...]]  # every value a setting may take in a run (() for ranges)


@runtime_checkable
class Objective(Protocol):
    """What an objective module provides: module-level names, checked by `isinstance`.

    ``Config``
        A frozen dataclass of two parts, ``data`` and ``train``, each a frozen dataclass whose
        fields are settings of the study's TOML (``[fixed]``, ``[space]``, ``--set``), every one
        with a default; a name is unique across the two parts. ``data`` holds everything the
        loaded data depends on, ``train`` everything else. A check that fails raises ValueError
        with one line.
    ``EMBEDDED_DATASET``
        The embedded dataset (a key of `objectives.data.EMBEDDED`) a run without ``--data``
        uses, unless the TOML's ``[embedded].dataset`` names another.
    ``ROLES``
        Which settings are the epoch count, the FE epochs, the seed and the split seed (`Roles`).
    ``CHECKPOINT_KEYS``
        The keys of every state ``run`` gives ``context.checkpoint.save`` (`RESUMES_FROM` among
        them): a saved state that lacks one is not resumed (the trial restarts from epoch 1).
    ``REPORT_GROUPS`` (optional)
        The settings the report groups trials by where the file's ``[report]`` does not say
        (`ReportGroups`; `report_groups` reads it, none where a module leaves it out).
    ``METRICS``
        The validation metrics ``run`` reports (``val_<name>`` in every curve row, the keys of
        its evaluations' ``metrics``; ``loss`` is its evaluations' ``loss``): a study may pick
        one of them as its metric.
    ``settle(possible, embedded) -> Settled``
        Checks and rules that need the whole run, before its first trial: ``possible(name)`` is
        every value setting ``name`` may take (pinned, fixed or choices; () for a range) and
        ``embedded`` whether the run uses the embedded dataset. The image classifier checks
        that pretrained weights it may need are present (on the embedded data it pins
        ``pretrained = false`` with a warning instead) and normalises both arms of
        ``pretrained`` with the weights' statistics. A problem is an `InputError`.
    ``load_data(data, source) -> objectives.data.Splits``
        The decoded splits for ``data`` (a ``Config``'s data part) from `DataSource` ``source``;
        it may report progress through ``source.bar``. The runner calls it once per distinct
        ``data`` in a process and gives the result to every trial with that ``data``: because
        ``data`` is the key, nothing the splits depend on can be left out of it. What the runner
        reads of the result: ``class_names``, ``manifest`` (None, or written as the study's
        ``split.csv``) and, where ``run`` returns probabilities, the rows of each split.
    ``run(config, splits, context) -> objectives.train.FitResult``
        Trains one trial. ``context`` (`TrialContext`) says where to train (``runtime``), which
        validation metric picks the best epoch and in which direction, and where to checkpoint
        and resume; ``context.report(epoch, row)`` must be called after every epoch with that
        epoch's curve row (``val_<metric>`` among its keys) and may raise to stop the trial
        (pruning). What the trial records of the result: ``curves`` (name -> one value per
        epoch), ``best_epoch``, ``val`` and ``test`` (each with ``loss``, ``metrics`` and
        ``confusion``, and optionally ``probabilities``), and ``weights`` (the pretrained weights'
        name) where set.
    """

    # read-only (properties): the runner only reads them, and a frozen `Legacy` provides them too
    @property
    def Config(self) -> type: ...  # noqa: N802 - the contract's name

    @property
    def EMBEDDED_DATASET(self) -> str: ...  # noqa: N802 - the contract's name

    @property
    def ROLES(self) -> Roles: ...  # noqa: N802 - the contract's name

    @property
    def CHECKPOINT_KEYS(self) -> frozenset[str]: ...  # noqa: N802 - the contract's name

    @property
    def METRICS(self) -> tuple[str, ...]: ...  # noqa: N802 - the contract's name

    def settle(self, possible: Possible, *, embedded: bool) -> Settled: ...

    def load_data(self, data: Any, source: DataSource) -> Any: ...

    def run(self, config: Any, splits: Any, context: TrialContext) -> Any: ...


@dataclass(frozen=True)
class Legacy:
    """An objective module of the contract's first form (``Config``, ``EMBEDDED_DATASET``,
    ``load_data``, ``run``) as an `Objective`: what it does not declare takes the image
    classifier's defaults (`legacy`), which is what the runner assumed of every module then."""

    module: ModuleType
    ROLES: Roles
    CHECKPOINT_KEYS: frozenset[str]
    METRICS: tuple[str, ...]
    REPORT_GROUPS: ReportGroups = CLASSIFIER_GROUPS

    @property
    def Config(self) -> type:  # noqa: N802 - the contract's name
        return self.module.Config

    @property
    def EMBEDDED_DATASET(self) -> str:  # noqa: N802 - the contract's name
        return self.module.EMBEDDED_DATASET

    def settle(self, possible: Possible, *, embedded: bool) -> Settled:
        """Nothing to settle: a module of the first form keeps its settings as they are."""
        return Settled()

    @property
    def load_data(self) -> Callable[..., Any]:
        return self.module.load_data

    @property
    def run(self) -> Callable[..., Any]:
        return self.module.run


def legacy(module: ModuleType) -> Legacy:
    """`module` with the defaults of the contract's first form: the roles of `Roles` whose
    settings its Config has, `objectives.train`'s checkpoint keys, the metrics
    `objectives.metrics.summarize` computes and the loss, and the image classifier's loss roles and report groups."""
    from objectives.metrics import CONFUSION_METRICS
    from objectives.train import CHECKPOINT_KEYS  # torch: a module of the first form trains with `fit`

    names = settings(module.Config)
    named = {role: getattr(CLASSIFIER_ROLES, role) for role in NAMED_ROLES if role != "epochs"}
    present: dict[str, Any] = {role: name if name in names else None for role, name in named.items()}  # optional roles
    roles = Roles(**present,
                  loss=tuple(n for n in CLASSIFIER_ROLES.loss if n in names),
                  step_size=CLASSIFIER_ROLES.step_size if CLASSIFIER_ROLES.step_size in names else None)
    return Legacy(module, roles, CHECKPOINT_KEYS, ("loss", *CONFUSION_METRICS))


def objective(module: ModuleType) -> Objective:
    """`module` as an `Objective`: itself where it declares the whole interface, else `legacy`;
    a TypeError listing what it lacks (`missing`)."""
    lacking = missing(module)
    if lacking:
        raise TypeError(f"it lacks {', '.join(lacking)}")
    return module if isinstance(module, Objective) else legacy(module)
