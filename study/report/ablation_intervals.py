"""The ablation's test-metric contrasts, with intervals over the seeds AND the test patients.

Every seed of every arm is scored on the same test split, so the paired t over seeds
(`stats.paired`) treats that split as the population. Here each Δ on a test metric is rebuilt from
the per-image test predictions every trial stores (`study.predictions`): one cluster bootstrap of
the test patients (stratified by each patient's worst class, seeded, the same replicates for every
arm and seed) rescored per trial, then `contrasts.variance_components_interval` adds the patient
variance to the seed variance. Where any compared trial lacks its predictions (an older run) the
caller keeps the paired t and the caption says which intervals cover only the seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from study.predictions import Predictions, read_predictions
from study.report import contrasts, stats, uncertainty

RESAMPLES = 2000  # cluster-bootstrap replicates of the test patients
SEED = 0  # the replicates are seeded: a report is reproducible


@dataclass(frozen=True)
class Replicates:
    """A test metric of every (arm, seed) on the full test split (`full[arm][seed]`) and in each
    of the B shared patient resamples (`boot[arm][seed]`, shape (B,))."""

    full: Mapping[str, Mapping[int, float]]
    boot: Mapping[str, Mapping[int, np.ndarray]]

    def filled(self, failed: Mapping[str, Sequence[int]], values: Mapping[str, Mapping[int, float]]) -> Replicates:
        """These replicates with each failed seed of an arm added at its value in `values` (the
        worst observed, `ablation.worst_filled`), the same in every resample: a diverged run has
        no per-image predictions, so it adds no patient variance, only its (worst) score."""
        full = {arm: dict(by_seed) for arm, by_seed in self.full.items()}
        boot = {arm: dict(by_seed) for arm, by_seed in self.boot.items()}
        resamples = len(next(iter(next(iter(self.boot.values())).values())))
        for arm, seeds in failed.items():
            for seed in seeds:
                if seed in values.get(arm, {}):
                    full.setdefault(arm, {})[seed] = values[arm][seed]
                    boot.setdefault(arm, {})[seed] = np.full(resamples, values[arm][seed])
        return Replicates(full, boot)


def test_replicates(study: optuna.Study, trials: Mapping[str, Mapping[int, FrozenTrial]], metrics: Sequence[str],
                    resamples: int = RESAMPLES) -> dict[str, Replicates] | None:
    """Per test metric (names without the ``test_`` prefix), the replicates of every arm's seeds;
    None when a trial lacks its test predictions or the trials disagree on the test rows (then no
    shared resample exists)."""
    loaded: dict[str, dict[int, Predictions]] = {}
    for arm, arm_trials in trials.items():
        for seed, trial in arm_trials.items():
            found = read_predictions(study, trial, "test")
            if found is None:
                return None
            loaded.setdefault(arm, {})[seed] = found
    if not loaded:
        return None
    first = next(iter(next(iter(loaded.values())).values()))
    if any(p.labels.shape != first.labels.shape or not np.array_equal(p.labels, first.labels)
           or not np.array_equal(p.groups, first.groups) for by_seed in loaded.values() for p in by_seed.values()):
        return None
    groups = uncertainty.group_count(first.groups)
    weights = uncertainty.resample_weights(groups, resamples, SEED,
                                           strata=uncertainty.worst_class(first.groups, first.labels))
    k = first.probabilities.shape[1]
    full: dict[str, dict[str, dict[int, float]]] = {m: {} for m in metrics}
    boot: dict[str, dict[str, dict[int, np.ndarray]]] = {m: {} for m in metrics}
    for arm, by_seed in loaded.items():
        for seed, p in by_seed.items():
            per_group = uncertainty.group_confusions(p.groups, p.labels, p.probabilities.argmax(axis=1), k)
            whole = uncertainty.batched_metrics(per_group.sum(axis=0))
            resampled = uncertainty.batched_metrics(uncertainty.resampled_confusions(weights, per_group))
            for m in metrics:
                full[m].setdefault(arm, {})[seed] = float(whole[m][0])
                boot[m].setdefault(arm, {})[seed] = np.asarray(resampled[m], dtype=float)
    return {m: Replicates(full[m], boot[m]) for m in metrics}


def paired_interval(replicates: Replicates, arm: str, reference: str, *, maximize: bool) -> stats.Contrast:
    """`arm` minus `reference` over the seeds both finished, its interval covering seeds and test
    patients; p_improve as in `stats.paired` (share of seeds on which the arm is better)."""
    seeds = sorted(set(replicates.full.get(arm, {})) & set(replicates.full.get(reference, {})))
    pair = _pair(replicates, seeds, arm, reference)
    share = stats.p_improve([replicates.full[arm][s] for s in seeds], [replicates.full[reference][s] for s in seeds],
                            maximize=maximize)
    return _contrast(pair, share)


def factorial_intervals(replicates: Replicates, cells: Mapping[tuple[Any, ...], str], factors: Sequence[str],
                        levels: Mapping[str, Sequence[Any]], reference: Mapping[str, Any]) -> dict[str, stats.Contrast]:
    """Main effects and 2x2 interactions (`contrasts.factorial_contrasts`) with intervals over seeds
    and patients; `cells` maps a cell's levels to its arm name. Seeds every cell finished only."""
    seeds = sorted(set.intersection(*(set(replicates.full.get(arm, {})) for arm in cells.values())))
    if not seeds:
        return {}
    pairs = {cell: (np.array([replicates.full[arm][s] for s in seeds]),
                    np.stack([replicates.boot[arm][s] for s in seeds], axis=1)) for cell, arm in cells.items()}
    found = contrasts.factorial_contrasts(pairs, factors, levels, reference)
    return {name: _contrast(pair, np.nan) for name, pair in found.items()}


def _pair(replicates: Replicates, seeds: list[int], arm: str, reference: str) -> tuple[np.ndarray, np.ndarray]:
    """The per-seed differences (S,) and their replicates (B, S)."""
    full = np.array([replicates.full[arm][s] - replicates.full[reference][s] for s in seeds], dtype=float)
    if not seeds:
        return full, np.zeros((0, 0))
    boot = np.stack([replicates.boot[arm][s] - replicates.boot[reference][s] for s in seeds], axis=1)
    return full, boot


def _contrast(pair: tuple[np.ndarray, np.ndarray], share: float) -> stats.Contrast:
    full, boot = pair
    if len(full) == 0:
        return stats.Contrast(0, np.nan, np.nan, np.nan, np.nan, share)
    found = contrasts.variance_components_interval(full, boot)
    note = stats.CONSTANT if np.isnan(found.p) and found.n_seeds >= 2 else ""
    return stats.Contrast(found.n_seeds, found.delta, found.low, found.high, found.p, share, note)
