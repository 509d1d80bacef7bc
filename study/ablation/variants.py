"""The plan of an ablation: its variants of the parent's best configuration, their names, the
fresh evaluation and tuning seeds, and the retune candidates (see `study.ablation.ablate` for the design).
Pure functions of the parent study and its space: nothing here trains or writes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from objectives.errors import InputError
from study import tables
from study.records import TrialRecord, complete_value
from study.spaces import registry
from study.spaces.space import Param, SearchSpace

BASELINE = "baseline"  # the ablation variant that is the parent study's best configuration
MIN_SEEDS = 3  # 2 seeds leave one degree of freedom: a t interval as wide as the metric's range
DEFAULT_SEEDS = 5
DEFAULT_RETUNE_TRIALS = 8  # C: candidates of the retuned parameter per variant
MIN_RETUNE_TRIALS = 2
DEFAULT_RETUNE_SEEDS = 2  # r: tuning seeds every candidate runs (budget r x C per variant, baseline included)
MIN_RETUNE_SEEDS = 1
EVAL_SEED_START = 1000  # above the seeds a search uses (study seed + trial number)
TUNE_SEED_START = 2000


@dataclasses.dataclass(frozen=True)
class Variant:
    """One configuration of the ablation: a name that says everything it changes, the full
    sampled values, and (factorial mode) its level of each factor."""

    name: str
    values: dict[str, Any]
    levels: dict[str, Any] = dataclasses.field(default_factory=dict)


def check_seeds(seeds: int) -> None:
    if seeds < MIN_SEEDS:
        raise InputError(f"--seeds / --trials-per-cell {seeds}: at least {MIN_SEEDS} seeds per variant "
                         f"(fewer leave a t interval too wide to read)")


def check_retune_trials(trials: int) -> None:
    if trials < MIN_RETUNE_TRIALS:
        raise InputError(f"--retune-trials {trials}: at least {MIN_RETUNE_TRIALS} candidates")


def check_retune_seeds(seeds: int) -> None:
    if seeds < MIN_RETUNE_SEEDS:
        raise InputError(f"--retune-seeds {seeds}: at least {MIN_RETUNE_SEEDS} tuning seed per candidate")


def pick_by_mean(results: Mapping[Any, Sequence[float]], seeds: int, *, maximize: bool) -> Any | None:
    """The candidate with the best mean validation value over its `seeds` tuning seeds, among
    those that finished on all of them (a candidate that diverged on one seed is not picked: its
    mean would be over its lucky seeds). Ties go to the first candidate in `results`' order (the
    smaller value). None when no candidate finished on every seed. One seed per candidate (the
    version-2 design) mostly picked the candidate whose seed drew the easiest validation split;
    every candidate now runs the same seeds, so they share that luck."""
    best, best_mean = None, math.nan
    for candidate, values in results.items():
        finite = [float(v) for v in values if v is not None and math.isfinite(v)]
        if len(finite) < seeds or len(values) != len(finite):
            continue
        mean = float(np.mean(finite))
        if best is None or (mean > best_mean if maximize else mean < best_mean):
            best, best_mean = candidate, mean
    return best


def parent_space(parent: optuna.Study, objective: str | None = None) -> SearchSpace:
    """The search space the parent study ran with, plus its settings and pins: the TOML text the
    study recorded (`registry.recorded_space`: the same on any machine, whatever happened to the
    file since); a study made before studies recorded it falls back to the named study of its name.
    Either way its objective must be built in or the one the user named (`objective`): a storage
    never decides what is imported, and neither does a file path it records."""
    recorded = registry.recorded_space(parent, objective=objective)
    if recorded is not None:
        return recorded
    try:
        space = registry.resolve(parent.study_name) if parent.study_name in registry.named_studies() else None
    except InputError:
        space = None
    if space is None:
        raise InputError(f"study {parent.study_name} recorded no search space (made by an older version) and is not "
                         f"a named study; it cannot be ablated")
    registry.trusted_objective(space.study.objective, parent.study_name, objective)
    return registry.with_recorded_settings(space, parent)


def variants(space: SearchSpace, parent: optuna.Study, factors: Sequence[str] | None) -> list[Variant]:
    """The baseline (the best trial's sampled values) and its variants: one factor changed at a
    time to each alternative, or the full grid of `factors` (the cell with the best trial's levels
    first). Parameters whose condition stops holding are dropped (they take the config default);
    ones that become active take their value from the best parent trial that sampled them. Each
    name lists those coupled changes too (`loss=ce (focal_gamma 2.1 -> unused)`)."""
    best = parent.best_trial
    fallback = _fallback_values(space, parent)
    base = _conditioned(space, {p.name: best.params[p.name] for p in space.params if p.name in best.params}, fallback)
    if factors:
        choices = {f: p.choices for f in factors if (p := space.param(f)) is not None and p.choices is not None}
        unknown = [f for f in factors if f not in choices]
        if unknown:
            categorical = [p.name for p in space.params if p.choices is not None]
            raise InputError(
                f"--factors {','.join(unknown)}: not categorical parameters of the space ({', '.join(categorical)})"
            )
        reference = {f: base.get(f, fallback[f]) for f in factors}
        combos = sorted(itertools.product(*(choices[f] for f in factors)),
                        key=lambda combo: combo != tuple(reference[f] for f in factors))
        found: list[Variant] = []
        for combo in combos:
            levels = dict(zip(factors, combo))
            values = _conditioned(space, {**base, **levels}, fallback)
            twin = next((v for v in found if v.values == values), None)
            if twin is not None or any(f not in values for f in factors):
                raise InputError(
                    f"--factors {','.join(factors)}: cell {levels} leaves a factor inactive"
                    + (f" (the same configuration as {twin.levels})" if twin else "")
                    + "; choose factors that are always active"
                )
            found.append(Variant(label(levels, base, values), values, levels))
        return found
    found = [Variant(BASELINE, base)]
    for param in space.params:
        if param.name not in base:
            continue
        for alternative in _alternatives(param, base[param.name], space):
            values = _conditioned(space, {**base, param.name: alternative}, fallback)
            if all(values != v.values for v in found):
                found.append(Variant(label({param.name: alternative}, base, values), values))
    return found


def label(changed: Mapping[str, Any], base: Mapping[str, Any], values: Mapping[str, Any]) -> str:
    """`changed` as ``a=x,b=y`` plus every coupled change against `base`: a parameter whose
    condition stops holding (``fe_epochs 10 -> unused``), one that becomes active with a fallback
    value (``focal_gamma unused -> 2.1``) or one that otherwise differs."""
    coupled = []
    for name in dict.fromkeys([*base, *values]):
        if name in changed:
            continue
        if name not in values:
            coupled.append(f"{name} {text(base[name])} -> unused")
        elif name not in base:
            coupled.append(f"{name} unused -> {text(values[name])}")
        elif values[name] != base[name]:
            coupled.append(f"{name} {text(base[name])} -> {text(values[name])}")
    head = ",".join(f"{k}={text(v)}" for k, v in changed.items())
    return head + (f" ({', '.join(coupled)})" if coupled else "")


def parent_seeds(parent: optuna.Study, study_seed: int, settings: Iterable[str | None]) -> set[int]:
    """Every seed the parent may have used: each trial's recorded seed `settings` (the objective's
    ``ROLES.seed`` and ``ROLES.split_seed``; None: it has no such setting),
    and ``study seed + trial number`` of every trial (the runner's seed where the space samples
    none; also covers trials that failed before recording a config)."""
    used: set[int] = set()
    names = [k for k in settings if k is not None]
    for trial in parent.get_trials(deepcopy=False):
        config = TrialRecord.from_trial(trial).config
        used.update(int(config[k]) for k in names if isinstance(config.get(k), int))
        used.add(study_seed + trial.number)
    return used


def fresh_seeds(count: int, avoid: set[int], start: int) -> list[int]:
    """The `count` smallest integers >= `start` not in `avoid`: deterministic, so two workers
    (or a re-run that lost its record) pick the same."""
    return list(itertools.islice((s for s in itertools.count(start) if s not in avoid), count))


def retune_param(space: SearchSpace, name: str) -> Param:
    """The numeric [space] parameter `--retune` names, or a one-line error."""
    param = space.param(name)
    numeric = ", ".join(p.name for p in space.params if p.choices is None) or "none"
    if param is None:
        raise InputError(f"--retune {name}: not a sampled parameter of {space.name} (numeric ones: {numeric})")
    if param.choices is not None:
        raise InputError(f"--retune {name}: categorical; only a numeric parameter can be retuned ({numeric})")
    return param


def candidates(param: Param, context: Mapping[str, Any], count: int) -> list[int | float]:
    """`count` values spread over `param`'s range (log-spaced for a log range), snapped to its
    step and type; fewer where an integer range has fewer values."""
    low, high = param.bounds(context)
    raw = np.geomspace(low, high, count) if param.log else np.linspace(low, high, count)
    if param.step:
        raw = low + np.round((raw - low) / param.step) * param.step
    if param.is_int:
        return sorted({int(round(v)) for v in raw})
    return sorted({min(max(float(f"{v:.4g}"), float(low)), float(high)) for v in raw})


def _alternatives(param: Param, value: Any, space: SearchSpace) -> list[Any]:
    if param.choices is not None:
        return [c for c in param.choices if c != value]
    low, _ = param.bounds({**space.fixed, **space.pinned})
    return [low] if low == 0 and value != 0 else []  # fe_epochs -> 0, focal_gamma -> 0


def _conditioned(space: SearchSpace, values: dict[str, Any], fallback: dict[str, Any]) -> dict[str, Any]:
    context = {**space.fixed, **space.pinned}
    out: dict[str, Any] = {}
    for param in space.params:
        if param.name in space.pinned or not param.active({**context, **out}):
            continue
        out[param.name] = values[param.name] if param.name in values else fallback[param.name]
    return out


def _fallback_values(space: SearchSpace, parent: optuna.Study) -> dict[str, Any]:
    """For each parameter, its value in the best complete trial that sampled it, else the first
    choice / the lower bound."""
    maximize = parent.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(
        (t for t in parent.trials if t.state == TrialState.COMPLETE), key=complete_value, reverse=maximize
    )
    fallback = {}
    for param in space.params:
        sampled = next((t.params[param.name] for t in ranked if param.name in t.params), None)
        if sampled is None:
            sampled = (
                param.choices[0] if param.choices is not None else param.bounds({**space.fixed, **space.pinned})[0]
            )
        fallback[param.name] = sampled
    return fallback


def text(value: Any) -> str:
    """A value as a variant name or a line shows it (floats to 4 significant places)."""
    return tables.cell(value) if isinstance(value, float) and not math.isnan(value) else str(value)
