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
where the objective has that setting (its Config, not the TOML's names: an objective whose split
seed defaults to 0 would otherwise train every seed on one validation split), its ``split_seed``
(the validation split; the test set never depends on it): seed s of a variant and seed s of the
baseline share all of that, so the report pairs them,
and the spread over seeds includes the split (Bouthillier et al. 2021).

Retuning (``--retune PARAM``). Without it every variant reuses the baseline's values of the other
parameters, which favours the baseline (its learning rate was tuned for it). With it, every variant,
the baseline included, first searches PARAM on validation with the same budget: the same
``--retune-trials`` (C) candidates spread over the parameter's range (log-spaced for a log range),
every candidate trained on the same ``--retune-seeds`` (r) tuning seeds, disjoint from the
evaluation seeds and the parent's, and picked by its mean validation value over them
(`variants.pick_by_mean`): r x C trials for the baseline and for every variant. (Version 2 trained
candidate j on tuning seed j only, so its pick mostly reflected which seed drew an easy split.)
The search of variant V is its own study ``ABLATION.retune.V``; a re-run
finds it there (finished or not) and goes on, so the retune phase resumes like the rest. A variant
then trains its evaluation seeds at its own best candidate. A grid rather than a sampler because
every variant must get exactly the same candidates and conditions: only its pick may differ.

Failures. A cell that failed for a reason of its own configuration (`records.TRIAL_FAILURES`:
the loss diverged) is a result of its variant, never re-run; one that failed for the
infrastructure's reason (cuda_oom, cuda_error, ...) is re-run once by every `ablate` run
(`infrastructure_cells`); the report withholds the star where either is missing.

An ablation study from before this design (version 2: split per seed from the TOML's names, one
tuning seed per candidate; or older: reused seeds 0..K-1) is refused, never mixed with new trials;
`report` still shows a version-2 table as it ran.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from objectives import contract
from objectives.errors import InputError
from study import records, storage
from study.ablation.variants import (
    DEFAULT_RETUNE_SEEDS,
    DEFAULT_RETUNE_TRIALS,
    DEFAULT_SEEDS,
    EVAL_SEED_START,
    TUNE_SEED_START,
    Variant,
    candidates,
    check_retune_seeds,
    check_retune_trials,
    check_seeds,
    fresh_seeds,
    parent_seeds,
    parent_space,
    pick_by_mean,
    retune_param,
    text,
    variants,
)
from study.exits import TrialsFailing
from study.records import AblationRecord
from study.run.options import RunOptions
from study.run.output import Output
from study.run.samplers import make_pruner
from study.run.session import Session, check_adoptable
from study.run.trainer import TrialTrainer
from study.spaces import registry
from study.spaces.space import Param, SearchSpace


@dataclasses.dataclass(frozen=True)
class AblationOptions:
    """What `ablate` was asked for, besides how to run trials (`RunOptions`)."""

    seeds: int = DEFAULT_SEEDS
    factors: tuple[str, ...] = ()
    retune: str | None = None
    retune_trials: int = DEFAULT_RETUNE_TRIALS
    study_name: str | None = None
    retune_seeds: int = DEFAULT_RETUNE_SEEDS

    def __post_init__(self) -> None:
        check_seeds(self.seeds)
        check_retune_trials(self.retune_trials)
        check_retune_seeds(self.retune_seeds)


def run_ablation(name: str, ablation: AblationOptions, opts: RunOptions, out: Output) -> optuna.Study:
    """Check everything, then run (or resume) the retune phase, if asked, and the evaluation grid.
    `opts.space` is not used: an ablation trains its parent's space."""
    location = storage.resolve(opts.storage_url, results=opts.results_dir)
    store = storage.open_storage(location)
    parent = storage.load_study(name, store)
    if not any(t.state == TrialState.COMPLETE for t in parent.get_trials(deepcopy=False)):
        raise InputError(f"study {name} has no complete trial to ablate; run it first")
    space = parent_space(parent, opts.objective)
    found = variants(space, parent, ablation.factors)
    tuned_param = retune_param(space, ablation.retune) if ablation.retune else None
    study_name = ablation.study_name or f"{name}{records.ABLATION_SUFFIX}"
    existing = _existing(store, study_name, location, parent.direction)
    objective = registry.objective_module(space)
    split = splits_per_seed(objective)
    plan = _plan(name, parent, space, found, ablation, existing, split, objective.ROLES)
    if existing is not None:
        _check_same_plan(existing, plan, ablation, location)

    dataset = records.StudyRecord.from_study(parent).dataset or ""
    if opts.data is None and not is_embedded(dataset):
        # the recorded path is the storage's word: read only the user's --data or the embedded data
        raise InputError(f"study {name} ran on a data folder of its own, not the embedded dataset: give --data DIR "
                         f"with the same images and labels")
    # named after the ablation study, so its per-seed split manifests go to results/<study_name>/
    opts = dataclasses.replace(opts, space=space, pruner="none", study_name=study_name)
    session = Session.open(opts, out, store=store)
    where = f"--data {opts.data}" if opts.data else "the embedded dataset"
    if not session.same_manifest(parent):
        raise InputError(f"{where} is not the data study {name} ran on (its split manifest differs); give --data "
                         f"with the same images and labels")
    replaced = session.content_difference(parent)
    if replaced is not None:
        raise InputError(f"{where} is not the data study {name} ran on: {replaced}")
    session.data.accept()
    study = existing or session.study(study_name, parent.direction, AblationRecord.is_current)
    if existing is None:
        plan.write(study)
    out.line(f"ablation of {name} ({plan.mode}): {len(found)} variants x {len(plan.seeds)} seeds {plan.seeds}: "
             + "; ".join(v.name for v in found))
    deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
    split = bool(plan.split_per_seed)  # as the plan recorded it (the same objective: checked above)
    configs = {v.name: {**session.prep.space.fixed, **session.prep.space.pinned, **v.values} for v in found}
    if plan.retune is not None:
        assert tuned_param is not None  # a plan retunes only what --retune asks for (_check_same_plan)
        picked: dict[str, int | float | None] = {}
        for variant in found:
            if not tuned_param.active(configs[variant.name]):
                picked[variant.name] = None  # e.g. focal_gamma of a cross-entropy variant: nothing to tune
                continue
            value = _retune(
                session,
                f"{study_name}{records.RETUNE_SUFFIX}{variant.name}",
                variant,
                configs[variant.name],
                tuned_param,
                plan.retune,
                split,
                _left(deadline),
                maximize=parent.direction == optuna.study.StudyDirection.MAXIMIZE,
            )
            if value is None:
                out.line("stopped before the retune phase finished; run ablate again to continue")
                return study
            picked[variant.name] = value
            configs[variant.name][tuned_param.name] = value
        AblationRecord.write_retuned(study, picked)
    target = len(found) * len(plan.seeds)
    if not session.announce(study, target):
        return study
    sampler = optuna.samplers.GridSampler(
        {records.VARIANT: [v.name for v in found], records.SEED: list(plan.seeds)}, seed=0
    )
    cells = _AblationObjective(study, configs, list(plan.seeds), split, session.trainer)
    session.optimize(study, cells, target=target,
                     sampler=sampler, pruner=_pruner(session), timeout=_left(deadline),
                     max_failures=None)  # a failed cell (nan_loss) is a result; an environment error still stops
    _rerun_infrastructure(session, study, cells, _left(deadline))
    session.summary(study)
    return study


def splits_per_seed(objective: contract.Objective) -> bool:
    """Whether seed s of an ablation also sets the split seed: whenever the objective names one
    (`ROLES.split_seed`) that its Config has (`objectives.contract.settings`), whether or not the
    TOML names it; the runner sets it like any other setting."""
    name = objective.ROLES.split_seed
    return name is not None and name in contract.settings(objective.Config)


def _pruner(session: Session) -> optuna.pruners.BasePruner:
    """The pruner of the session's space, over the epochs of its objective."""
    return make_pruner(session.prep.space, session.prep.module.ROLES)


def infrastructure_cells(study: optuna.Study) -> list[dict[str, Any]]:
    """The grid cells (params) without a complete trial whose every failure was the
    infrastructure's (not `records.is_trial_failure`), latest attempt finished: `ablate` runs each
    again. A cell that failed for its own reason (nan_loss) keeps that result."""
    trials = study.get_trials(deepcopy=False)
    cells: dict[tuple[Any, Any], list[optuna.trial.FrozenTrial]] = {}
    for t in trials:
        if records.VARIANT in t.params and records.SEED in t.params:
            cells.setdefault((t.params[records.VARIANT], t.params[records.SEED]), []).append(t)
    out = []
    for (variant, seed), attempts in cells.items():
        states = {t.state for t in attempts}
        if TrialState.COMPLETE in states or TrialState.RUNNING in states or TrialState.WAITING in states:
            continue
        failed = [t for t in attempts if t.state == TrialState.FAIL]
        if failed and not any(records.is_trial_failure(records.TrialRecord.from_trial(t).fail_reason) for t in failed):
            out.append({records.VARIANT: variant, records.SEED: seed})
    return out


def _rerun_infrastructure(session: Session, study: optuna.Study, objective: Any, timeout: float | None) -> None:
    """Run once more every cell `infrastructure_cells` finds (one at a time, so a cell that fails
    again stops only itself: the report then withholds the star that needs it)."""
    for params in infrastructure_cells(study):
        session.out.line(f"re-running {params[records.VARIANT]} seed {params[records.SEED]} "
                         f"(it failed for a reason of the machine, not of the variant)")
        study.enqueue_trial(params)
        finished = records.count(study, records.FINISHED)
        try:
            session.optimize(study, objective, target=finished + 1, sampler=optuna.samplers.RandomSampler(seed=0),
                             pruner=_pruner(session), timeout=timeout, max_failures=1)
        except TrialsFailing:
            continue


def is_embedded(dataset: str) -> bool:
    """Whether a study's recorded `dataset` names an embedded dataset (`run` records a folder as its
    resolved path, an embedded dataset by its name, which has no separator)."""
    return bool(dataset) and "/" not in dataset and "\\" not in dataset


def _plan(name: str, parent: optuna.Study, space: SearchSpace, found: list[Variant], ablation: AblationOptions,
          existing: optuna.Study | None, split: bool, roles: contract.Roles) -> AblationRecord:
    """What the ablation study records: the variants, the evaluation seeds (fresh, or as recorded
    by the first run), whether a seed draws the split too, and the retune grid with its r tuning
    seeds (shared by every candidate)."""
    if existing is not None:
        recorded = AblationRecord.from_study(existing)
        seeds, retune, split = recorded.seeds, recorded.retune, bool(recorded.split_per_seed)
    else:
        used = parent_seeds(parent, space.study.seed, (roles.seed, roles.split_seed))
        seeds, retune = fresh_seeds(ablation.seeds, used, EVAL_SEED_START), None
        if ablation.retune:
            values = candidates(
                retune_param(space, ablation.retune), {**space.fixed, **space.pinned}, ablation.retune_trials
            )
            retune = {records.PARAM: ablation.retune, records.RETUNE_TRIALS: ablation.retune_trials,
                      records.RETUNE_SEEDS: ablation.retune_seeds,
                      records.CANDIDATES: values,
                      records.TUNING_SEEDS: fresh_seeds(ablation.retune_seeds, used | set(seeds), TUNE_SEED_START)}
    return AblationRecord(
        parent=name, mode="factorial" if ablation.factors else "one-at-a-time", factors=list(ablation.factors),
        baseline=found[0].name, variants={v.name: v.values for v in found}, levels={v.name: v.levels for v in found},
        seeds=seeds, retune=retune, metric=space.study.metric, objective=space.study.objective,
        dataset=records.StudyRecord.from_study(parent).dataset, split_per_seed=split, loss_settings=roles.loss,
        step_size=roles.step_size)


class _AblationObjective:
    """One cell of the evaluation grid: a variant's config on one evaluation seed."""

    def __init__(self, study: optuna.Study, configs: dict[str, dict[str, Any]], seeds: list[int], split: bool,
                 trainer: TrialTrainer) -> None:
        self.study = study
        self.configs = configs
        self.seeds = seeds
        self.split = split
        self.trainer = trainer

    def __call__(self, trial: optuna.Trial) -> float:
        name = trial.suggest_categorical(records.VARIANT, list(self.configs))
        seed = trial.suggest_categorical(records.SEED, self.seeds)
        roles = self.trainer.prep.module.ROLES
        return self.trainer(self.study, trial, roles.seeded(self.configs[name], seed, self.split))


class _RetuneObjective:
    """One cell of a variant's retune grid: a candidate on one of the tuning seeds."""

    def __init__(
        self,
        study: optuna.Study,
        values: dict[str, Any],
        param: Param,
        retune: Mapping[str, Any],
        split: bool,
        trainer: TrialTrainer,
    ) -> None:
        self.study = study
        self.values = values
        self.param = param
        self.candidates = list(retune[records.CANDIDATES])
        self.seeds = list(retune[records.TUNING_SEEDS])
        self.split = split
        self.trainer = trainer

    def __call__(self, trial: optuna.Trial) -> float:
        low, high = min(self.candidates), max(self.candidates)
        value: int | float
        if self.param.is_int:
            value = trial.suggest_int(self.param.name, int(low), int(high))
        else:
            value = trial.suggest_float(self.param.name, float(low), float(high), log=self.param.log)
        seed = trial.suggest_categorical(records.TUNE_SEED, self.seeds)
        roles = self.trainer.prep.module.ROLES
        return self.trainer(self.study, trial, roles.seeded({**self.values, self.param.name: value}, seed, self.split))


def _retune(session: Session, name: str, variant: Variant, values: dict[str, Any], param: Param,
            retune: Mapping[str, Any], split: bool, timeout: float | None, *, maximize: bool) -> int | float | None:
    """Run (or resume) the retune grid (candidates x tuning seeds) of one variant; the candidate
    with the best mean over the tuning seeds, or None when the timeout stopped it first."""
    settings = session.prep.space.study
    study = session.study(name, settings.direction, records.is_retune_study)
    records.write_retune_plan(study, variant.name, param.name, retune)
    if records.holds_other_retune(study, retune):
        # e.g. left behind by a deleted version-2 ablation of the same name (one seed per candidate)
        raise InputError(f"{name} holds another retune plan (other candidates or tuning seeds); delete it (optuna "
                         f"delete-study --study-name '{name}') or choose another --study-name")
    grid = optuna.samplers.GridSampler(
        {param.name: list(retune[records.CANDIDATES]), records.TUNE_SEED: list(retune[records.TUNING_SEEDS])}, seed=0)
    target = len(retune[records.CANDIDATES]) * len(retune[records.TUNING_SEEDS])
    if session.announce(study, target):
        session.optimize(study, _RetuneObjective(study, values, param, retune, split, session.trainer), target=target,
                         sampler=grid, pruner=_pruner(session), timeout=timeout, max_failures=None)
    if not grid.is_exhausted(study):
        return None
    results = retune_results(study, param.name, retune)
    best = pick_by_mean(results, len(retune[records.TUNING_SEEDS]), maximize=maximize)
    if best is None:
        raise InputError(f"retune of {variant.name}: no candidate of {param.name} finished on all "
                         f"{len(retune[records.TUNING_SEEDS])} tuning seeds (see {name}); nothing to evaluate")
    mean = float(np.mean(results[best]))
    session.out.line(f"{variant.name}: {param.name} retuned to {text(best)} (mean validation {settings.metric} "
                     f"{mean:.4f} over {len(retune[records.TUNING_SEEDS])} tuning seeds)")
    return best


def retune_results(study: optuna.Study, param: str, retune: Mapping[str, Any]) -> dict[Any, list[float]]:
    """Per candidate (in the plan's order), its validation values on the tuning seeds, NaN where
    that seed failed or has not run."""
    values: dict[tuple[Any, Any], float] = {}
    for t in study.get_trials(deepcopy=False):
        if param in t.params and records.TUNE_SEED in t.params and t.state.is_finished():
            key = (t.params[param], t.params[records.TUNE_SEED])
            if t.state == TrialState.COMPLETE or key not in values:
                values[key] = records.complete_value(t) if t.state == TrialState.COMPLETE else float("nan")
    seeds = retune[records.TUNING_SEEDS]
    return {c: [values.get((c, s), float("nan")) for s in seeds] for c in retune[records.CANDIDATES]}


def _existing(store: optuna.storages.BaseStorage, name: str, where: storage.Resolved,
              direction: optuna.study.StudyDirection) -> optuna.Study | None:
    """The ablation study `name` if it exists and was made by this design in the parent's
    `direction`; an older one (no version marker, seeds 0..K-1) is refused. One that holds nothing
    yet is taken over."""
    if name not in storage.study_names(store):
        return None
    study = optuna.load_study(study_name=name, storage=store)
    if AblationRecord.is_current(study):
        check_adoptable(study, direction, AblationRecord.is_current, where)
        return study
    if not study.get_trials(deepcopy=False):
        return None  # created but never given its plan (a crash in between): start it afresh
    if AblationRecord.is_reported(study):
        raise InputError(
            f"{name} was made by an older ablate (version {AblationRecord.version_of(study)}: "
            f"retune on one seed per candidate, split per seed from the TOML) and is not resumed with other "
            f"semantics; `report` still shows it: choose a new name with --study-name or delete it (optuna "
            f"delete-study --study-name '{name}' --storage {where.shown})"
        )
    raise InputError(
        f"{name} was made by an older ablate (seeds 0..K-1, possibly the parent's own) and is not mixed with new "
        f"trials: delete it (optuna delete-study --study-name '{name}' --storage {where.shown}) "
        f"or choose another name with --study-name"
    )


def _check_same_plan(study: optuna.Study, plan: AblationRecord, ablation: AblationOptions,
                     where: storage.Resolved) -> None:
    """A re-run must ask for what the study holds: the same variants (so the same parent best
    trial), factors, number of seeds and retuning."""
    recorded = AblationRecord.from_study(study)
    retune = recorded.retune or {}
    wanted = (ablation.retune, ablation.retune_trials, ablation.retune_seeds) if ablation.retune else (None, None, None)
    same = (recorded.variants == plan.variants and recorded.factors == plan.factors
            and len(recorded.seeds) == ablation.seeds
            and tuple(retune.get(k) for k in (records.PARAM, records.RETUNE_TRIALS, records.RETUNE_SEEDS)) == wanted)
    if not same:
        raise InputError(
            f"{study.study_name} exists with other variants, seeds or --retune; run it with its own settings, "
            f"delete it (optuna delete-study --study-name '{study.study_name}' --storage {where.shown}) "
            f"or choose another name with --study-name"
        )


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)
