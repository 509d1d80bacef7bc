"""`study ablate`: re-train the best configuration of a study with one factor changed at a time
(or a full factorial grid of named factors), over fresh seeds shared by every variant.

The ablation is its own Optuna study (``NAME.ablation`` unless ``--study-name`` names another) in
the parent's storage. Its trials are the grid ``variant x seed`` of Optuna's GridSampler, so a
re-run (or a second worker) trains only the cells not yet done.

Seeds. The evaluation seeds are the smallest integers from `EVAL_SEED_START` on that the parent
never used (neither as a trial's ``seed`` nor as its ``split_seed``), so the parent's best trial
(whose seed was lucky enough to win the search) is never replayed and counted. They are chosen
once, recorded in the study's user attrs and reused on every re-run. Every variant runs the same
seeds, and seed s sets both the trial's ``seed`` (initialisation, batch order, augmentation) and,
where the space has one, its ``split_seed`` (the validation split; the test set never depends on
it): seed s of a variant and seed s of the baseline share all of that, so the report pairs them,
and the spread over seeds includes the split (Bouthillier et al. 2021).

Retuning (``--retune PARAM``). Without it every variant reuses the baseline's values of the other
parameters, which favours the baseline (its learning rate was tuned for it). With it, every variant,
the baseline included, first searches PARAM on validation with the same budget: the same
``--retune-trials`` candidates spread over the parameter's range (log-spaced for a log range),
candidate j trained on tuning seed j, where the tuning seeds are disjoint from the evaluation
seeds and the parent's. The search of variant V is its own study ``ABLATION.retune.V``; a re-run
finds it there (finished or not) and goes on, so the retune phase resumes like the rest. A variant
then trains its evaluation seeds at its own best candidate. A grid rather than a sampler because
every variant must get exactly the same candidates and conditions: only its pick may differ.

An ablation study from before this design (reused seeds 0..K-1, no seed list) is refused, never
mixed with new trials: its seeds may include the parent's own.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from objectives.errors import InputError
from study import registry, runner, storage, tables
from study.analysis import ABLATION_SUFFIX as SUFFIX
from study.analysis import ABLATION_VERSION, BASELINE, RETUNE_SUFFIX, load
from study.space import Param, SearchSpace

MIN_SEEDS = 3  # 2 seeds leave one degree of freedom: a t interval as wide as the metric's range
DEFAULT_SEEDS = 5
DEFAULT_RETUNE_TRIALS = 8
EVAL_SEED_START = 1000  # above the seeds a search uses (study seed + trial number)
TUNE_SEED_START = 2000


@dataclasses.dataclass(frozen=True)
class Variant:
    """One configuration of the ablation: a name that says everything it changes, the full
    sampled values, and (factorial mode) its level of each factor."""

    name: str
    values: dict[str, Any]
    levels: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AblationOptions:
    """What `ablate` was asked for, besides how to run trials (`runner.RunOptions`)."""

    seeds: int = DEFAULT_SEEDS
    factors: tuple[str, ...] = ()
    retune: str | None = None
    retune_trials: int = DEFAULT_RETUNE_TRIALS
    study_name: str | None = None

    def __post_init__(self) -> None:
        if self.seeds < MIN_SEEDS:
            raise InputError(f"--seeds / --trials-per-cell {self.seeds}: at least {MIN_SEEDS} seeds per variant "
                             f"(fewer leave a t interval too wide to read)")
        if self.retune_trials < 2:
            raise InputError(f"--retune-trials {self.retune_trials}: at least 2 candidates")


def parent_space(parent: optuna.Study) -> SearchSpace:
    """The search space the parent study ran with, plus its settings and pins (`registry.recorded_space`);
    a study made before studies recorded their TOML falls back to its file, or the named study."""
    recorded = registry.recorded_space(parent)
    if recorded is not None:
        return recorded
    source = parent.user_attrs.get("space_file")
    space = registry.resolve(source if source and Path(source).is_file() else parent.study_name)
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
        unknown = [f for f in factors if space.param(f) is None or space.param(f).choices is None]
        if unknown:
            categorical = [p.name for p in space.params if p.choices is not None]
            raise InputError(f"--factors {','.join(unknown)}: not categorical parameters of the space ({', '.join(categorical)})")
        reference = {f: base.get(f, fallback[f]) for f in factors}
        combos = sorted(itertools.product(*(space.param(f).choices for f in factors)),
                        key=lambda combo: combo != tuple(reference[f] for f in factors))
        found = []
        for combo in combos:
            levels = dict(zip(factors, combo))
            values = _conditioned(space, {**base, **levels}, fallback)
            twin = next((v for v in found if v.values == values), None)
            if twin is not None or any(f not in values for f in factors):
                raise InputError(f"--factors {','.join(factors)}: cell {levels} leaves a factor inactive"
                                 + (f" (the same configuration as {twin.levels})" if twin else "") + "; choose factors that are always active")
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
            coupled.append(f"{name} {_text(base[name])} -> unused")
        elif name not in base:
            coupled.append(f"{name} unused -> {_text(values[name])}")
        elif values[name] != base[name]:
            coupled.append(f"{name} {_text(base[name])} -> {_text(values[name])}")
    head = ",".join(f"{k}={_text(v)}" for k, v in changed.items())
    return head + (f" ({', '.join(coupled)})" if coupled else "")


def parent_seeds(parent: optuna.Study, study_seed: int) -> set[int]:
    """Every seed the parent may have used: each trial's recorded ``seed`` and ``split_seed``,
    and ``study seed + trial number`` of every trial (the runner's seed where the space samples
    none; also covers trials that failed before recording a config)."""
    used: set[int] = set()
    for trial in parent.get_trials(deepcopy=False):
        config = trial.user_attrs.get("config", {})
        used.update(int(config[k]) for k in ("seed", "split_seed") if isinstance(config.get(k), int))
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


def run_ablation(name: str, ablation: AblationOptions, opts: runner.RunOptions, out: runner.Output) -> optuna.Study:
    """Check everything, then run (or resume) the retune phase, if asked, and the evaluation grid."""
    url = opts.storage_url or storage.default_url(opts.results_dir)
    store = storage.open_storage(url)
    parent = load(name, store)
    if not any(t.state == TrialState.COMPLETE for t in parent.trials):
        raise InputError(f"study {name} has no complete trial to ablate; run it first")
    space = parent_space(parent)
    found = variants(space, parent, ablation.factors)
    tuned_param = retune_param(space, ablation.retune) if ablation.retune else None
    study_name = ablation.study_name or f"{name}{SUFFIX}"
    existing = _existing(store, study_name, url)
    plan = _plan(name, parent, space, found, ablation, existing)
    if existing is not None:
        _check_same_plan(existing, plan, ablation, url)

    dataset = parent.user_attrs.get("dataset", "")
    data = opts.data or (Path(dataset) if Path(dataset).is_dir() else None)
    # named after the ablation study, so its per-seed split manifests go to results/<study_name>/
    opts = dataclasses.replace(opts, space=space, data=data, pruner="none", study_name=study_name)
    prep = runner.prepare(opts, out)
    data_cache = runner.load_data(prep, out)
    if not runner.same_data(parent, prep, data_cache):
        where = f"--data {opts.data}" if opts.data else "the embedded dataset"
        raise InputError(f"{where} is not the data study {name} ran on ({dataset or 'unknown'}: its split manifest differs); "
                         f"give --data with the same images and labels")
    study = existing or optuna.create_study(study_name=study_name, storage=store, direction=parent.direction, load_if_exists=True)
    if existing is None:
        for key, value in plan.items():
            study.set_user_attr(key, value)
        study.set_user_attr("ablation_version", ABLATION_VERSION)  # last: a study without it holds no trials
    seeds, retune = plan["seeds"], plan["retune"]
    out.line(f"ablation of {name} ({plan['mode']}): {len(found)} variants x {len(seeds)} seeds {seeds}: "
             + "; ".join(v.name for v in found))
    deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
    trainer = runner.trainer(prep, data_cache, out)
    split = "split_seed" in prep.space.names()
    configs = {v.name: {**prep.space.fixed, **prep.space.pinned, **v.values} for v in found}
    if retune is not None:
        picked = {}
        for variant in found:
            if not tuned_param.active(configs[variant.name]):
                picked[variant.name] = None  # e.g. focal_gamma of a cross-entropy variant: nothing to tune
                continue
            value = _retune(store, f"{study_name}{RETUNE_SUFFIX}{variant.name}", variant, configs[variant.name], tuned_param,
                            retune, split, prep, trainer, out, _left(deadline))
            if value is None:
                out.line("stopped before the retune phase finished; run ablate again to continue")
                return study
            picked[variant.name] = value
            configs[variant.name][tuned_param.name] = value
        study.set_user_attr("retuned", picked)
    prep = dataclasses.replace(prep, target=len(found) * len(seeds))
    if not runner.announce(study, prep, out):
        return study
    sampler = optuna.samplers.GridSampler({"variant": [v.name for v in found], "seed": list(seeds)}, seed=0)
    try:
        runner.optimize(study, prep, out, _AblationObjective(configs, list(seeds), split, trainer), sampler, _left(deadline))
    finally:
        trainer.pages.close()  # the last trials' figures and notes (retune trials' pages too)
    runner.print_summary(study, prep, out)
    return study


def _plan(name: str, parent: optuna.Study, space: SearchSpace, found: list[Variant], ablation: AblationOptions,
          existing: optuna.Study | None) -> dict[str, Any]:
    """What the ablation study records as its user attrs: the variants, the evaluation seeds
    (fresh, or as recorded by the first run) and the retune grid with its tuning seeds."""
    if existing is not None:
        seeds, retune = existing.user_attrs["seeds"], existing.user_attrs.get("retune")
    else:
        used = parent_seeds(parent, space.study.seed)
        seeds, retune = fresh_seeds(ablation.seeds, used, EVAL_SEED_START), None
        if ablation.retune:
            values = candidates(retune_param(space, ablation.retune), {**space.fixed, **space.pinned}, ablation.retune_trials)
            retune = {"param": ablation.retune, "trials": ablation.retune_trials, "candidates": values,
                      "tuning_seeds": fresh_seeds(len(values), used | set(seeds), TUNE_SEED_START)}
    return {"parent": name, "mode": "factorial" if ablation.factors else "one-at-a-time", "factors": list(ablation.factors),
            "baseline": found[0].name, "variants": {v.name: v.values for v in found}, "levels": {v.name: v.levels for v in found},
            "seeds": seeds, "retune": retune, "metric": space.study.metric, "objective": space.study.objective,
            "dataset": parent.user_attrs.get("dataset")}


def seeded(values: Mapping[str, Any], seed: int, split: bool) -> dict[str, Any]:
    """`values` run with `seed`, which also draws the validation split where the space has one."""
    return {**values, "seed": seed, **({"split_seed": seed} if split else {})}


class _AblationObjective:
    """One cell of the evaluation grid: a variant's config on one evaluation seed."""

    def __init__(self, configs: dict[str, dict[str, Any]], seeds: list[int], split: bool, trainer: runner.TrialTrainer) -> None:
        self.configs = configs
        self.seeds = seeds
        self.split = split
        self.trainer = trainer

    def __call__(self, trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("variant", list(self.configs))
        seed = trial.suggest_categorical("seed", self.seeds)
        return self.trainer(trial, seeded(self.configs[name], seed, self.split))


class _RetuneObjective:
    """One candidate of a variant's retune grid, trained on the tuning seed of its position."""

    def __init__(self, values: dict[str, Any], param: Param, retune: Mapping[str, Any], split: bool, trainer: runner.TrialTrainer) -> None:
        self.values = values
        self.param = param
        self.candidates = list(retune["candidates"])
        self.seeds = list(retune["tuning_seeds"])
        self.split = split
        self.trainer = trainer

    def __call__(self, trial: optuna.Trial) -> float:
        low, high = min(self.candidates), max(self.candidates)
        if self.param.is_int:
            value = trial.suggest_int(self.param.name, int(low), int(high))
        else:
            value = trial.suggest_float(self.param.name, float(low), float(high), log=self.param.log)
        seed = self.seeds[int(np.argmin([abs(c - value) for c in self.candidates]))]
        return self.trainer(trial, seeded({**self.values, self.param.name: value}, seed, self.split))


def _retune(store: optuna.storages.BaseStorage, name: str, variant: Variant, values: dict[str, Any], param: Param,
            retune: Mapping[str, Any], split: bool, prep: runner.Prepared, trainer: runner.TrialTrainer,
            out: runner.Output, timeout: float | None) -> int | float | None:
    """Run (or resume) the retune grid of one variant; its best candidate, or None when the
    timeout stopped it first."""
    study = optuna.create_study(study_name=name, storage=store, direction=prep.space.study.direction, load_if_exists=True)
    if "variant" not in study.user_attrs:
        for key, value in {"variant": variant.name, "param": param.name, **retune}.items():
            study.set_user_attr(key, value)
    grid = optuna.samplers.GridSampler({param.name: list(retune["candidates"])}, seed=0)
    target = dataclasses.replace(prep, target=len(retune["candidates"]))
    if runner.announce(study, target, out):
        runner.optimize(study, target, out, _RetuneObjective(values, param, retune, split, trainer), grid, timeout)
    if not grid.is_exhausted(study):
        return None
    if not any(t.state == TrialState.COMPLETE for t in study.trials):
        raise InputError(f"retune of {variant.name}: no candidate of {param.name} finished (see {name}); nothing to evaluate")
    best = study.best_trial.params[param.name]
    out.line(f"{variant.name}: {param.name} retuned to {_text(best)} (validation {prep.space.study.metric} {study.best_value:.4f})")
    return best


def _existing(store: optuna.storages.BaseStorage, name: str, url: str) -> optuna.Study | None:
    """The ablation study `name` if it exists and was made by this design; an older one (no
    version marker, seeds 0..K-1) is refused. One that holds nothing yet is taken over."""
    names = {s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    if name not in names:
        return None
    study = optuna.load_study(study_name=name, storage=store)
    if study.user_attrs.get("ablation_version") == ABLATION_VERSION:
        return study
    if not study.trials:
        return None  # created but never given its plan (a crash in between): start it afresh
    raise InputError(f"{name} was made by an older ablate (seeds 0..K-1, possibly the parent's own) and is not mixed with new "
                     f"trials: delete it (optuna delete-study --study-name '{name}' --storage {storage.mask(url)}) "
                     f"or choose another name with --study-name")


def _check_same_plan(study: optuna.Study, plan: Mapping[str, Any], ablation: AblationOptions, url: str) -> None:
    """A re-run must ask for what the study holds: the same variants (so the same parent best
    trial), factors, number of seeds and retuning."""
    recorded = study.user_attrs
    retune = recorded.get("retune") or {}
    wanted = (ablation.retune, ablation.retune_trials) if ablation.retune else (None, None)
    same = (recorded.get("variants") == plan["variants"] and recorded.get("factors") == plan["factors"]
            and len(recorded.get("seeds", [])) == ablation.seeds and (retune.get("param"), retune.get("trials")) == wanted)
    if not same:
        raise InputError(f"{study.study_name} exists with other variants, seeds or --retune; run it with its own settings, "
                         f"delete it (optuna delete-study --study-name '{study.study_name}' --storage {storage.mask(url)}) "
                         f"or choose another name with --study-name")


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)


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


def _text(value: Any) -> str:
    return tables.cell(value) if isinstance(value, float) and not math.isnan(value) else str(value)
