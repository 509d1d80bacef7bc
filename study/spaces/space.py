"""Search spaces: a parsed ``search_spaces/*.toml`` (read by `study.spaces.space_file`), pinned, and the
typed configs it suggests.

A study is one TOML file. ``schema = 2`` at the top names the format this module writes about; a
file without it is schema 1, the format before it: refused as a file (``python -m study migrate``
converts it), read only from the text a study recorded (as `study.spaces.schema1` describes).
``[study]`` says what is optimised and how, including the objective module (``objective``,
``"image_classifier"`` by default; see `objectives.contract`); ``[fixed]`` holds settings every
trial shares; ``[space]`` holds the sampled parameters, each either ``{choices = [...]}`` or
``{low = .., high = .., log = .., step = ..}`` (int when both bounds are ints), optionally with
``when = {other = value}`` so it is sampled only where the condition holds (otherwise the
config's default applies); ``[embedded]`` overrides settings (or pins parameters) when no
``--data`` is given; ``[report]`` (schema 2) names the factors whose combinations form the
report's cells, those whose cells get a confusion figure, and labels for their values
(`study.spaces.report_layout`).
A bound may name a setting with an offset (``high = "epochs - 1"``). Every problem is reported as
one line naming file, parameter and problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import optuna

from objectives import contract
from objectives.errors import InputError
from study.spaces.report_layout import ReportLayout

SCHEMA = 2  # the format of search-space files; a file without `schema` is schema 1: an error
SCHEMAS = (1, 2)  # what a study's recorded space text may be
DEFAULT_OBJECTIVE = "image_classifier"
SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "percentile", "catchup", "asha", "hyperband", "none")
PRUNER_FEEDS = ("raw", "best", "ema")  # what the rule is fed: the epoch's value, the best so far, or an EMA
DIRECTIONS = ("maximize", "minimize")
EMBEDDED_STUDY_KEYS = {
    "trials",
    "startup_trials",
    "warmup_epochs",
    "sampler_startup_trials",
}  # [study] settings [embedded] may change
# What a study's settings mean (splits by group, cross-entropy validation loss, class weights with mean
# 1, the pretrained weights' normalisation, FT-only pruning steps): a study made under an earlier
# recipe gets another fingerprint, so `run` never adds trials of the new meaning to it.
RECIPE_VERSION = 2
EMBEDDED_DATA_KEYS = {"dataset", "train_images", "test_images", *EMBEDDED_STUDY_KEYS}
_BOUND = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:([+-])\s*(\d+))?\s*$")


class SpaceError(InputError):
    """A search-space file or a pin is invalid."""


@dataclass(frozen=True)
class Param:
    """One sampled parameter: categorical (`choices`) or a numeric range."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: int | float | str | None = None
    high: int | float | str | None = None
    log: bool = False
    step: int | float | None = None
    when: tuple[tuple[str, Any], ...] = ()

    @property
    def is_int(self) -> bool:
        return self.choices is None and not any(isinstance(b, float) for b in (self.low, self.high, self.step))

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(k in values and values[k] == v for k, v in self.when)

    def bounds(self, values: Mapping[str, Any]) -> tuple[int | float, int | float]:
        return _resolve_bound(self.low, values), _resolve_bound(self.high, values)

    def admits(self, value: Any, values: Mapping[str, Any]) -> bool:
        if self.choices is not None:
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        low, high = self.bounds(values)
        return low <= value <= high and (not self.is_int or float(value).is_integer())


@dataclass(frozen=True)
class StudySettings:
    objective: str = DEFAULT_OBJECTIVE
    direction: str = "maximize"
    metric: str = "kappa"
    sampler: str = "tpe"
    pruner: str = "median"
    trials: int = 20
    seed: int = 0
    startup_trials: int = 4  # the median pruner's: trials that complete before it may stop one
    warmup_epochs: int = 1  # fine-tuning epochs every trial trains before it may be pruned
    sampler_startup_trials: int = 10  # TPE's random start-up trials (Optuna's default)
    # the pruner's further settings (`study.run.samplers.pruner_settings`); at these defaults they
    # are left out of the fingerprint, so studies made before them keep theirs
    pruner_percentile: float = 25.0  # percentile: stop a trial below this percentile of the complete trials
    pruner_patience: int = 0  # > 0: ask the rule only after patience + 1 FT epochs without a new best (PatientPruner)
    pruner_reduction_factor: int = 3  # asha and hyperband: 1 in this many trials goes on to the next rung
    pruner_min_resource: int = 1  # asha and hyperband: FT epochs every trial trains before the first rung
    pruner_feed: str = "raw"  # what the rule compares: raw | best (so far) | ema (see `pruner_ema`)
    pruner_ema: float = 0.5  # ema's weight of the newest epoch: fed = a * value + (1 - a) * fed before
    description: str = ""


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search-space file plus the pins of this run. `defaults` lie underneath [fixed]: the
    settings a schema-1 objective implied (`study.spaces.schema1`; a stored schema-1 space, or a file
    `study migrate` wrote, which names it in ``schema1_objective``), which every config of the
    study is built over (`with_defaults`)."""

    name: str
    path: Path
    study: StudySettings
    fixed: Mapping[str, Any]
    params: tuple[Param, ...]
    embedded: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    pinned: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    schema: int = SCHEMA
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # settings underneath [fixed]
    report: ReportLayout = field(default_factory=ReportLayout)
    text: str = ""  # the TOML it was parsed from: the study records it, so it runs the same anywhere

    def names(self) -> set[str]:
        return set(self.fixed) | {p.name for p in self.params}

    def with_defaults(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """What a config of this study is built from: `values` (a trial's, or the fixed settings and
        pins) over the space's `defaults`."""
        return {**self.defaults, **values}

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def possible_values(self, name: str) -> tuple[Any, ...]:
        """Every value `name` may take in this run (pinned, fixed or choices); () for ranges."""
        if name in self.pinned:
            return (self.pinned[name],)
        if name in self.fixed:
            return (self.fixed[name],)
        p = self.param(name)
        return tuple(p.choices) if p is not None and p.choices is not None else ()

    def with_settings(self, *, add: bool = False, **changes: Any) -> SearchSpace:
        """Override [fixed] settings (not sampled ones) and return the new space; `add` allows
        settings the file does not list (a rule of the tool resolving a config field)."""
        unknown = set(changes) - set(self.fixed) - (set(changes) if add else set())
        if unknown:
            raise SpaceError(f"{self.path}: cannot set {', '.join(sorted(unknown))}: not in [fixed]")
        return dataclasses.replace(self, fixed=MappingProxyType({**self.fixed, **changes}))

    def pin(self, name: str, value: Any) -> SearchSpace:
        """Fix `name` to `value` for this run: a [fixed] setting is overridden, a [space]
        parameter is no longer sampled. The value is checked against the declared choices/range.
        Pins are recorded, so the [embedded] overrides do not undo them."""
        if name in self.fixed:
            space = self.with_settings(**{name: value})
            return dataclasses.replace(space, pinned=MappingProxyType({**self.pinned, name: value}))
        param = self.param(name)
        if param is None:
            known = ", ".join(sorted(self.names()))
            raise SpaceError(f"--set {name}: unknown parameter of {self.name} (known: {known})")
        context = {**self.fixed, **self.pinned}
        if not param.admits(value, context):
            allowed = param.choices if param.choices is not None else "{}..{}".format(*param.bounds(context))
            raise SpaceError(f"--set {name}={value!r}: outside the declared {allowed}")
        return dataclasses.replace(self, pinned=MappingProxyType({**self.pinned, name: value}))

    def embedded_run(self) -> SearchSpace:
        """This space with the [embedded] overrides applied (the run on the embedded dataset):
        [fixed] settings replaced, [space] parameters pinned, except what this run pinned itself."""
        overrides = {k: v for k, v in self.embedded.items() if k not in EMBEDDED_DATA_KEYS and k not in self.pinned}
        study = dataclasses.replace(self.study, **{k: v for k, v in self.embedded.items() if k in EMBEDDED_STUDY_KEYS})
        space = dataclasses.replace(self, study=study)
        space = space.with_settings(**{k: v for k, v in overrides.items() if k in self.fixed})
        for name, value in overrides.items():
            if name not in self.fixed:
                space = space.pin(name, value)
        return space

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Fixed and pinned settings plus the active sampled parameters of `trial`."""
        values: dict[str, Any] = {**self.fixed, **self.pinned}
        for p in self.params:
            if not p.active(values):
                values.pop(p.name, None)  # a pin of an inactive parameter does not apply
                continue
            if p.name in self.pinned:
                continue
            if p.choices is not None:
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
                continue
            low, high = p.bounds(values)
            if p.is_int:
                values[p.name] = trial.suggest_int(p.name, int(low), int(high), step=int(p.step or 1), log=p.log)
            else:
                values[p.name] = trial.suggest_float(p.name, float(low), float(high), step=p.step, log=p.log)
        return values

    def grid(self) -> dict[str, list[Any]]:
        """The grid for Optuna's GridSampler: every categorical and stepped range, unpinned."""
        grid: dict[str, list[Any]] = {}
        context = {**self.fixed, **self.pinned}
        for p in self.params:
            if p.name in self.pinned:
                continue
            if p.choices is not None:
                grid[p.name] = list(p.choices)
            elif p.is_int:
                low, high = p.bounds(context)
                grid[p.name] = list(range(int(low), int(high) + 1, int(p.step or 1)))
            elif p.step:
                low, high = p.bounds(context)
                count = int(round((high - low) / p.step)) + 1
                grid[p.name] = [low + i * p.step for i in range(count)]
            else:
                raise SpaceError(f"{self.path}: [space].{p.name}: the grid sampler needs choices or a step")
        return grid

    def fingerprint(self, defaults: Mapping[str, Any] = MappingProxyType({})) -> str:
        """Hash of what defines the study's trials (not the trial count): a changed file or pin
        must not silently mix with the trials already stored.

        Settings at their default value (`StudySettings`' and the config's `defaults`, over which
        the space's own `defaults` lie) are left out, so a setting added to the tool later, or
        written out at its default, does not change the fingerprint; `RECIPE_VERSION` changes it
        when the tool changes what settings mean."""
        defaults = {**defaults, **self.defaults}
        settings = {k: v for k, v in dataclasses.asdict(self.study).items()
                    if k not in ("trials", "description") and not _is_default(v, _STUDY_DEFAULTS.get(k, _MISSING))}

        def explicit(values: Mapping[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in values.items() if not _is_default(v, defaults.get(k, _MISSING))}

        doc = {
            "recipe": RECIPE_VERSION,
            "study": settings,
            "fixed": explicit(self.fixed),
            "pinned": explicit(self.pinned),
            "params": [dataclasses.asdict(p) for p in self.params],
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def check_config(self, config_cls: type) -> None:
        """Every setting and parameter must be a setting of the objective's config, of its type
        (and so is every factor [report] names: those are settings of the file), and a value the
        config accepts (`check_values`)."""
        hints = {name: s.hint for name, s in contract.settings(config_cls).items()}
        for name in sorted(self.names() | set(self.pinned)):
            if name not in hints:
                fields = ", ".join(sorted(hints))
                raise SpaceError(
                    f"{self.path}: {name}: not a setting of objective {self.study.objective} (its settings: {fields})"
                )
            for value in self.possible_values(name) or _range_samples(self.param(name)):
                if not _has_type(value, hints[name]):
                    raise SpaceError(f"{self.path}: {name}: {value!r} is not of type {_type_name(hints[name])}")
        self.check_values(config_cls)

    def check_values(self, config_cls: type) -> None:
        """The objective's config must accept the fixed settings and pins, and every sampled
        parameter at each of its choices and both ends of its range: a value the config refuses
        would fail every trial that samples it, so the study is refused before its first trial.

        Each value is tried with the parameters it depends on (`when`) set as it needs, and the
        others at their default (where the space admits it), first or last value; it is refused
        only where all three fail. Only `run` and `ablate` call this (through `check_config`), not
        the reading of a file or a stored space: a stored study stays readable by `report` and
        `list` whatever its ranges."""
        base = {**self.fixed, **self.pinned}
        try:
            _build(config_cls, self.with_defaults(base))
        except (TypeError, ValueError) as exc:
            raise SpaceError(f"{self.path}: {exc}") from None
        defaults = {**config_defaults(config_cls), **self.defaults}
        for param in self.params:
            if param.name in self.pinned:
                continue
            values = param.choices or param.bounds(base)
            infinite = [b for b in values if param.choices is None and not math.isfinite(b)]
            if infinite:
                raise SpaceError(f"{self.path}: [space].{param.name}: bound {infinite[0]!r} is not a finite number")
            for value in values:
                failure = self._refusal(config_cls, param, value, defaults)
                if failure:
                    raise SpaceError(f"{self.path}: [space].{param.name} = {value!r} would fail every trial that "
                                     f"samples it: {failure}")

    def _refusal(self, config_cls: type, param: Param, value: Any, defaults: Mapping[str, Any]) -> str:
        """Why the config refuses `param` = `value` in every trial of the kinds `check_values`
        tries; '' where one accepts it, or where no trial can sample it."""
        forced = self._conditions(param, {param.name: value})
        if forced is None:
            return ""
        failure = ""
        for pick in ("default", "first", "last"):
            values = self._values_at(forced, pick, defaults)
            if values.get(param.name, _MISSING) is _MISSING:
                return ""  # its `when` never holds
            try:
                _build(config_cls, self.with_defaults(values))
                return ""
            except (TypeError, ValueError) as exc:
                failure = failure or str(exc)
        return failure

    def _conditions(self, param: Param, forced: dict[str, Any]) -> dict[str, Any] | None:
        """`forced` plus the values `param`'s `when` (and theirs, recursively) needs of other
        parameters; None where they contradict each other or a fixed setting or pin."""
        for name, needed in param.when:
            if name in self.fixed or name in self.pinned:
                if {**self.fixed, **self.pinned}[name] != needed:
                    return None
                continue
            if name in forced:
                if forced[name] != needed:
                    return None
                continue
            other = self.param(name)
            if other is None:
                return None
            deeper = self._conditions(other, {**forced, name: needed})
            if deeper is None:
                return None
            forced = deeper
        return forced

    def _values_at(self, forced: Mapping[str, Any], pick: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """The settings of a trial that samples `forced`, and for every other active parameter its
        default where admitted (`pick` "default"), else its first or last value, as `suggest` would."""
        values: dict[str, Any] = {**self.fixed, **self.pinned}
        for p in self.params:
            if not p.active(values):
                values.pop(p.name, None)
            elif p.name in forced:
                values[p.name] = forced[p.name]
            elif p.name not in self.pinned:
                ends = p.choices or p.bounds(values)
                default = defaults.get(p.name, _MISSING)
                if pick == "default" and default is not _MISSING and p.admits(default, values):
                    values[p.name] = default
                else:
                    values[p.name] = ends[-1] if pick == "last" else ends[0]
        return values


_MISSING = object()
_STUDY_DEFAULTS = {f.name: f.default for f in dataclasses.fields(StudySettings)}


def _is_default(value: Any, default: Any) -> bool:
    """Equal to a default, reading TOML lists as the tuples config defaults are."""
    if default is _MISSING or default is dataclasses.MISSING:
        return False
    as_tuple = tuple(value) if isinstance(value, list) else value
    return type(as_tuple) is type(default) and as_tuple == default


def config_defaults(config_cls: type) -> dict[str, Any]:
    """The default value of every setting of an objective's config."""
    settings = contract.settings(config_cls).values()
    return {s.name: s.default for s in settings if s.default is not dataclasses.MISSING}


def parse_value(raw: str) -> Any:
    """A `--set` value as TOML reads it (1e-3, true, 4, "x"); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def build_config(config_cls: type, values: Mapping[str, Any]) -> Any:
    """The frozen config of one trial from flat settings; ints widen to float settings, nothing
    else is coerced."""
    try:
        return _build(config_cls, values)
    except (TypeError, ValueError) as exc:
        raise SpaceError(f"invalid {config_cls.__module__} config: {exc}") from None


def _build(config_cls: type, values: Mapping[str, Any]) -> Any:
    """`build_config` with the objective's own TypeError or ValueError."""
    hints = {name: s.hint for name, s in contract.settings(config_cls).items()}
    kwargs = {
        k: float(v) if hints.get(k) is float and isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in values.items()
    }
    return contract.build_config(config_cls, kwargs)


def _resolve_bound(bound: int | float | str | None, values: Mapping[str, Any]) -> int | float:
    if not isinstance(bound, str):
        return bound  # type: ignore[return-value]  # None only for a categorical parameter, which has no bounds
    match = _BOUND.match(bound)
    assert match, bound
    base = values[match.group(1)]
    offset = int(match.group(3) or 0)
    return base - offset if match.group(2) == "-" else base + offset


def _range_samples(param: Param | None) -> tuple[Any, ...]:
    if param is None or param.choices is not None:
        return ()
    return tuple(b for b in (param.low, param.high) if not isinstance(b, str))


def _has_type(value: Any, hint: Any) -> bool:
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
