"""`study ablate`: re-train the best configuration of a study with one factor changed at a time
(or a full factorial grid of named factors), over several seeds, as its own Optuna study.

The ablation study is named ``NAME.ablation`` and lives in the same storage. Its trials are the
grid ``variant x seed`` of Optuna's GridSampler, so a re-run (or a second worker) trains only the
cells not yet done. Differences to the baseline are tested against seed noise with Welch's t-test.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from objectives.errors import InputError
from study import registry, runner, storage
from study.analysis import ABLATION_SUFFIX as SUFFIX
from study.analysis import BASELINE, load
from study.space import Param, SearchSpace



@dataclasses.dataclass(frozen=True)
class Variant:
    """One configuration of the ablation: a name (what changed) and the full sampled values."""

    name: str
    values: dict[str, Any]


def parent_space(parent: optuna.Study) -> SearchSpace:
    """The search space the parent study ran with: its file (or named study) plus its pins."""
    source = parent.user_attrs.get("space_file")
    space = registry.resolve(source if source and Path(source).is_file() else parent.study_name)
    fixed = parent.user_attrs.get("fixed", {})
    space = space.with_settings(**{k: v for k, v in fixed.items() if k in space.fixed})
    for name, value in parent.user_attrs.get("pinned", {}).items():
        space = space.pin(name, value)
    return space


def variants(space: SearchSpace, parent: optuna.Study, factors: Sequence[str] | None) -> list[Variant]:
    """The baseline (the best trial's sampled values) and its variants: one factor changed at a
    time to each alternative, or the full grid of `factors`. Parameters whose condition stops
    holding are dropped (they take the config default); ones that become active take their value
    from the best parent trial that sampled them."""
    best = parent.best_trial
    base = {p.name: best.params[p.name] for p in space.params if p.name in best.params}
    fallback = _fallback_values(space, parent)
    if factors:
        unknown = [f for f in factors if space.param(f) is None or space.param(f).choices is None]
        if unknown:
            categorical = [p.name for p in space.params if p.choices is not None]
            raise InputError(f"--factors {','.join(unknown)}: not categorical parameters of the space ({', '.join(categorical)})")
        grid = itertools.product(*(space.param(f).choices for f in factors))
        found = [Variant(",".join(f"{f}={v}" for f, v in zip(factors, combo)), _conditioned(space, {**base, **dict(zip(factors, combo))}, fallback))
                 for combo in grid]
        return found
    found = [Variant(BASELINE, _conditioned(space, base, fallback))]
    for param in space.params:
        if param.name not in base:
            continue
        for alternative in _alternatives(param, base[param.name], space):
            values = _conditioned(space, {**base, param.name: alternative}, fallback)
            if values != found[0].values and all(values != v.values for v in found):
                found.append(Variant(f"{param.name}={alternative}", values))
    return found


def run_ablation(name: str, *, seeds: int, factors: Sequence[str] | None, opts: runner.RunOptions, out: runner.Output) -> optuna.Study:
    store = storage.open_storage(opts.storage_url or storage.default_url(opts.results_dir))
    parent = load(name, store)
    if not any(t.state == TrialState.COMPLETE for t in parent.trials):
        raise InputError(f"study {name} has no complete trial to ablate; run it first")
    space = parent_space(parent)
    found = variants(space, parent, factors)
    dataset = parent.user_attrs.get("dataset", "")
    data = opts.data or (Path(dataset) if Path(dataset).is_dir() else None)
    opts = dataclasses.replace(opts, space=space, data=data, pruner=opts.pruner or "none", trials=len(found) * seeds)
    prep = runner.prepare(opts, out)
    data_cache = runner.load_data(prep, out)
    study = optuna.create_study(study_name=f"{name}{SUFFIX}", storage=store, direction=parent.direction, load_if_exists=True)
    plan = {"parent": name, "seeds": seeds, "variants": {v.name: v.values for v in found}, "metric": prep.space.study.metric,
            "objective": prep.space.study.objective, "dataset": parent.user_attrs.get("dataset"), "mode": "factorial" if factors else "one-at-a-time"}
    recorded = study.user_attrs.get("variants")
    if recorded is None:
        for key, value in plan.items():
            study.set_user_attr(key, value)
    elif recorded != plan["variants"] or study.user_attrs.get("seeds") != seeds:
        raise InputError(f"{name}{SUFFIX} exists with other variants or seeds; delete it (optuna delete-study) or keep its settings")
    out.line(f"ablation of {name}: {len(found)} variants x {seeds} seeds ({plan['mode']}): " + ", ".join(v.name for v in found))
    if not runner.announce(study, prep, out):
        return study
    sampler = optuna.samplers.GridSampler({"variant": [v.name for v in found], "seed": list(range(seeds))}, seed=0)
    objective = _AblationObjective({v.name: v.values for v in found}, seeds, runner.trainer(prep, data_cache, out))
    runner.optimize(study, prep, out, objective, sampler, opts.timeout)
    runner.print_summary(study, prep, out)
    return study


class _AblationObjective:
    def __init__(self, variants: dict[str, dict[str, Any]], seeds: int, trainer: runner.TrialTrainer) -> None:
        self.variants = variants
        self.seeds = seeds
        self.trainer = trainer

    def __call__(self, trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("variant", list(self.variants))
        seed = trial.suggest_int("seed", 0, self.seeds - 1)
        values = {**self.trainer.prep.space.fixed, **self.trainer.prep.space.pinned, **self.variants[name], "seed": seed}
        return self.trainer(trial, values)


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
    ranked = sorted((t for t in parent.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=maximize)
    fallback = {}
    for param in space.params:
        sampled = next((t.params[param.name] for t in ranked if param.name in t.params), None)
        if sampled is None:
            sampled = param.choices[0] if param.choices is not None else param.bounds({**space.fixed, **space.pinned})[0]
        fallback[param.name] = sampled
    return fallback
