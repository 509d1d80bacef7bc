"""The objective contract: what an objective module provides and how the runner calls it.

A study's TOML names its objective in ``[study].objective``: ``"image_classifier"`` (the default:
`objectives.image_classifier`, which every shipped study uses), another module of this package by
its bare name, or a module of your own as ``"package.module"``, imported with importlib from the
Python path of the ``study`` command (its working folder, ``PYTHONPATH``, installed packages).
A module that cannot be imported, or lacks a name below, is a one-line error before anything runs.

An objective module provides:

``Config``
    A frozen dataclass of two parts, ``data`` and ``train``, each a frozen dataclass whose fields
    are settings of the study's TOML (``[fixed]``, ``[space]``, ``--set``), every one with a
    default; a name is unique across the two parts. ``data`` holds everything the loaded data
    depends on, ``train`` everything else. A check that fails raises ValueError with one line.
    The runner reads a few settings by name: ``epochs`` (required: the last epoch, after which a
    trial is never pruned), ``fe_epochs`` (epochs the pruner does not see; 0 when absent),
    ``seed`` (set to the study seed + the trial number unless the study sets it) and
    ``split_seed`` (which ``ablate`` sets to each evaluation seed).
``EMBEDDED_DATASET``
    The embedded dataset (a key of `objectives.data.EMBEDDED`) a run without ``--data`` uses,
    unless the TOML's ``[embedded].dataset`` names another.
``load_data(data, source) -> objectives.data.Splits``
    The decoded splits for ``data`` (a ``Config``'s data part) from `DataSource` ``source``; it
    may report progress through ``source.bar``. The runner calls it once per distinct ``data``
    in a process and gives the result to every trial with that ``data``: because ``data`` is the
    key, nothing the splits depend on can be left out of it. ``Splits.manifest`` (where not None)
    is written as the study's ``split.csv``.
``run(config, splits, context) -> objectives.train.FitResult``
    Trains one trial. ``context`` (`TrialContext`) says where to train (``runtime``), which
    validation metric picks the best epoch and in which direction, and where to checkpoint and
    resume; ``context.report(epoch, row)`` must be called after every epoch with that epoch's
    curve row (``val_<metric>`` among its keys) and may raise to stop the trial (pruning).
    The returned curves, best epoch and validation and test evaluations (and ``weights``, the
    pretrained weights' name, where set) are what the trial records.

How the runner calls it, per run: resolve and import the module; check every setting of the
TOML against `settings` (name and type); build one ``Config`` from the fixed settings and the
pins (`build_config`) so contradictions fail before the first trial; ``load_data`` for it (the
manifest is written); then per trial: the sampler's values plus the fixed settings -> ``Config``
-> ``load_data`` (shared where the data part is equal) -> ``run``. The trial stores the config as
one flat mapping (`flat`). Nothing here imports the CLI or Optuna.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from objectives.progress import BarFactory, no_bar

if TYPE_CHECKING:
    from objectives.train import Checkpointing, Report, Runtime

PARTS = ("data", "train")  # the parts of a Config, in the order their settings are listed
PROVIDES = ("Config", "EMBEDDED_DATASET", "load_data", "run")  # what an objective module defines


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
    """What `module` lacks of the contract: names it does not define, or a Config of another shape."""
    absent = [name for name in PROVIDES if not hasattr(module, name)]
    config_cls = getattr(module, "Config", None)
    if config_cls is not None:
        parts = typing.get_type_hints(config_cls) if dataclasses.is_dataclass(config_cls) else {}
        if not all(dataclasses.is_dataclass(parts.get(part)) for part in PARTS):
            absent.append("a Config of dataclass parts data and train")
        else:
            try:
                settings(config_cls)
            except TypeError as exc:
                absent.append(f"a Config with unique setting names ({exc})")
    return absent
