"""The sampler and pruner a study's TOML asks for: their settings as the study records them
(user attrs ``sampler`` and ``pruner``), and the Optuna objects built from those settings."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from objectives.contract import Roles
from study.run.catchup import CatchUpPruner
from study.run.reporter import Feed
from study.spaces.space import SearchSpace, StudySettings

# A run's sampler seed is the study's `seed` + its trials so far + this x the worker's index: a
# resumed run does not replay the first run's random start-up suggestions, the same history
# gives the same next suggestion, and workers started together on one history differ.
WORKER_SEED_STRIDE = 7919


def sampler_settings(space: SearchSpace) -> dict[str, Any]:
    """The sampler's class and arguments, as recorded in the study."""
    settings = space.study
    if settings.sampler == "random":
        return {"class": "RandomSampler", "seed": settings.seed}
    if settings.sampler == "grid":
        return {"class": "GridSampler", "seed": settings.seed}
    if settings.sampler == "cmaes":
        return {"class": "CmaEsSampler", "seed": settings.seed}
    # multivariate with group=True: conditional parameters (fe_epochs, focal_*) are modelled
    # jointly within their condition instead of falling back to independent sampling
    return {"class": "TPESampler", "seed": settings.seed, "multivariate": True, "group": True, "constant_liar": True,
            "n_startup_trials": settings.sampler_startup_trials}


def run_seed(space: SearchSpace, trials_so_far: int, worker: int | None) -> int:
    return space.study.seed + trials_so_far + WORKER_SEED_STRIDE * (worker or 0)


def make_sampler(space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler `sampler_settings` records, with this run's `seed`; a grid over the space's grid."""
    args = sampler_settings(space)
    kind = getattr(optuna.samplers, args.pop("class"))
    args["seed"] = seed
    if kind is optuna.samplers.GridSampler:
        args["search_space"] = space.grid()
    elif kind is optuna.samplers.CmaEsSampler:
        args["warn_independent_sampling"] = False  # conditional parameters are sampled independently by design
    with warnings.catch_warnings():  # TPE's `group` is "experimental" in Optuna 5, and what conditional spaces need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return kind(**args)


def pruner_settings(space: SearchSpace, roles: Roles) -> dict[str, Any]:
    """The pruner's class and arguments, as recorded in the study (`pruner_record`): its epochs
    are the fixed value of the objective's epoch setting (`roles.epochs`), 1 where it is searched."""
    return pruner_record(space.study, epochs=int(space.fixed.get(roles.epochs, 1)))


def pruner_record(settings: StudySettings, epochs: int) -> dict[str, Any]:
    """The pruner's class and arguments for a study's [study] `settings` and its `epochs`, as the
    study records them and `build_pruner` builds them. Steps are fine-tuning epochs (see
    `study.run.reporter`), so Hyperband's largest resource is `epochs` (a trial without FE).

    A patience wraps the rule in PatientPruner (``wrapped_pruner``: the inner record); a feed other
    than the raw value adds ``feed`` (and ``ema``) at the top (`pruner_feed`). At the keys'
    defaults the record is what it was before they existed."""
    if settings.pruner == "none":
        return {"class": "NopPruner"}
    record: dict[str, Any]
    if settings.pruner in ("hyperband", "asha"):
        record = {
            "class": "HyperbandPruner" if settings.pruner == "hyperband" else "SuccessiveHalvingPruner",
            "min_resource": settings.pruner_min_resource,
            **({"max_resource": max(epochs, 1)} if settings.pruner == "hyperband" else {"min_early_stopping_rate": 0}),
            "reduction_factor": settings.pruner_reduction_factor,
        }
    elif settings.pruner == "catchup":
        record = {
            "class": "CatchUpPruner",
            "n_startup_trials": settings.startup_trials,
            "n_warmup_steps": settings.warmup_epochs,
        }
    elif settings.pruner == "percentile":
        record = {
            "class": "PercentilePruner",
            "percentile": float(settings.pruner_percentile),
            "n_startup_trials": settings.startup_trials,
            "n_warmup_steps": settings.warmup_epochs,
        }
    else:
        record = {
            "class": "MedianPruner",
            "n_startup_trials": settings.startup_trials,
            "n_warmup_steps": settings.warmup_epochs,
        }
    if settings.pruner_patience > 0:
        record = {"class": "PatientPruner", "patience": settings.pruner_patience, "wrapped_pruner": record}
    if settings.pruner_feed == "ema":
        record = {**record, "feed": "ema", "ema": float(settings.pruner_ema)}
    elif settings.pruner_feed != "raw":
        record = {**record, "feed": settings.pruner_feed}
    return record


# The classes a pruner record may name: Optuna's built-ins `pruner_record` writes, and ours.
PRUNER_CLASSES: dict[str, type[optuna.pruners.BasePruner]] = {
    "NopPruner": optuna.pruners.NopPruner,
    "MedianPruner": optuna.pruners.MedianPruner,
    "PercentilePruner": optuna.pruners.PercentilePruner,
    "SuccessiveHalvingPruner": optuna.pruners.SuccessiveHalvingPruner,
    "HyperbandPruner": optuna.pruners.HyperbandPruner,
    "PatientPruner": optuna.pruners.PatientPruner,
    "CatchUpPruner": CatchUpPruner,
}


def build_pruner(record: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """A fresh pruner from a recorded `pruner_record` (Optuna's pruners keep state: build one per
    study, or per replayed order). ``feed`` and ``ema`` are the reporter's (`pruner_feed`)."""
    args = {k: v for k, v in record.items() if k not in ("class", "feed", "ema")}
    if "wrapped_pruner" in args:
        args["wrapped_pruner"] = build_pruner(args["wrapped_pruner"])
    with warnings.catch_warnings():  # PatientPruner is "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return PRUNER_CLASSES[record["class"]](**args)


def pruner_feed(record: Mapping[str, Any], direction: str) -> Feed:
    """What the reporter feeds the rule under a recorded `pruner_record` (raw when it says none)."""
    return Feed(kind=record.get("feed", "raw"), ema=float(record.get("ema", 0.5)), maximize=direction == "maximize")


def make_pruner(space: SearchSpace, roles: Roles) -> optuna.pruners.BasePruner:
    return build_pruner(pruner_settings(space, roles))
