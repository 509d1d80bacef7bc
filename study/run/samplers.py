"""The sampler and pruner a study's TOML asks for: their settings as the study records them
(user attrs ``sampler`` and ``pruner``), and the Optuna objects built from those settings."""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from study.space import SearchSpace

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


def pruner_settings(space: SearchSpace) -> dict[str, Any]:
    """The pruner's class and arguments, as recorded in the study. Steps are fine-tuning epochs
    (see `study.run.reporter`), so Hyperband's largest resource is `epochs` (a trial without FE)."""
    settings = space.study
    if settings.pruner == "none":
        return {"class": "NopPruner"}
    if settings.pruner == "hyperband":
        return {
            "class": "HyperbandPruner",
            "min_resource": 1,
            "max_resource": max(int(space.fixed.get("epochs", 1)), 1),
            "reduction_factor": 3,
        }
    return {
        "class": "MedianPruner",
        "n_startup_trials": settings.startup_trials,
        "n_warmup_steps": settings.warmup_epochs,
    }


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    args = pruner_settings(space)
    return getattr(optuna.pruners, args.pop("class"))(**args)
