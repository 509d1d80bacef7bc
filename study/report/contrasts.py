"""Ablation contrasts whose interval covers both the seeds and the test patients.

Every seed of every arm is scored on the same fixed test split. The paired t over seeds
(stats.paired) sees only the training randomness: two variants equal in the population but strong
on different images carry the same test-set luck into every seed, so their per-seed differences
agree with each other and the t interval is far too narrow (11-21 % false positives at nominal 5 %
in the null simulation of tests/support/contrasts.py). A naive two-way bootstrap does not fix it: 5
seeds resampled with replacement give 126 distinct draws and undercover, and resampling crossed
seed x patient data independently is biased (McCullagh 2000).

The variance-components interval adds the two sources. The patient part comes from a cluster
bootstrap in which replicate b draws ONE multiset of patients that every arm and every seed is
rescored on (so the arms stay paired over patients as they are over seeds). The seed part is V_seed
= s_d^2 / S over the per-seed differences on the full test set. The interval is Delta +- t_nu
sqrt(V_pat + V_seed), nu by Welch-Satterthwaite with V_pat's degrees of freedom taken as infinite
(B >= 400 resamples make its relative error about sqrt(2 / B), small next to V_seed's
sqrt(2 / (S - 1))).

V_pat, by default, keeps only the patient variance that the seeds share (the between-seed
covariance of the replicates), because the per-image seed noise is already in s_d^2; the variance
of the seed-averaged replicates counts that noise twice and is offered as the conservative
alternative (see variance_components_interval; the null simulation measures both).

Pure numpy functions on arrays: the report builds them from the stored per-image predictions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from objectives.metrics import quadratic_kappas
from study.report.stats import factorial_contrast_cells
from study.report.uncertainty import resampled_confusions

CONFIDENCE = 0.95


@dataclass(frozen=True)
class DeltaInterval:
    """A contrast over seeds and test patients.

    delta: mean over the kept seeds of the full-test-set difference. low, high: its interval (NaN
    when it cannot be formed: fewer than 2 seeds, or no variance at all). p: two-sided p-value of
    Delta = 0 from the same t (NaN exactly when the interval is NaN: never 0 from a zero width).
    df: Welch-Satterthwaite degrees of freedom (inf when V_seed is 0). v_seed, v_patients: the
    two variance components of Delta. n_seeds: seeds kept (finite in every array). resamples:
    bootstrap replicates kept (finite for every kept seed)."""

    delta: float
    low: float
    high: float
    p: float
    df: float
    v_seed: float
    v_patients: float
    n_seeds: int
    resamples: int


def variance_components_interval(full: np.ndarray, boot: np.ndarray, confidence: float = CONFIDENCE,
                                 patients: str = "shared") -> DeltaInterval:
    """Delta +- t_nu sqrt(V_pat + V_seed) for per-seed differences `full` (S,) on the whole test
    set and the same differences `boot` (B, S) recomputed in B patient resamples shared by every
    arm and seed.

    V_seed = s_d^2 / S over `full`. V_pat, with `patients`:

    - "shared" (default): the mean covariance over replicates between two different seeds'
      differences, floored at 0: the test-set luck that every seed shares, which averaging over
      seeds cannot remove. The per-image seed noise is already in s_d^2, so it is not counted
      again. This is the Obuchowski-Rockette-Hillis decomposition of multi-reader multi-case
      studies (seeds are the readers, patients the cases; Hillis 2007), whose denominator degrees
      of freedom are this Welch-Satterthwaite nu. Null simulation (tests/e2e/test_contrasts_e2e.py, R =
      1,000): 5.0-6.0 % false positives at nominal 5 % for accuracy, 5.2 % for quadratic kappa.
    - "averaged": the variance over replicates of the seed-averaged difference. It also contains
      the per-image seed noise / S that s_d^2 / S already holds, so the interval is conservative
      (2.5-3.6 % false positives in the null simulation, less power).

    A seed whose full-set difference is not finite (it failed in either arm) is dropped from both
    arrays, so the components pair the same seeds. A replicate that is not finite on a kept seed
    (e.g. a metric undefined in a resample) is dropped as a whole and counted out of `resamples`.
    With fewer than 2 seeds there is no estimate of the training randomness (nor a between-seed
    covariance): V_seed and the interval and p are NaN (one seed cannot speak for a retrained
    model; the table shows no star). With V_pat + V_seed = 0 there is no interval either (p NaN,
    never 0)."""
    if patients not in ("shared", "averaged"):
        raise ValueError(f"patients must be 'shared' or 'averaged', not {patients!r}")
    full = np.asarray(full, dtype=float)
    boot = np.asarray(boot, dtype=float)
    if boot.ndim != 2 or full.ndim != 1 or boot.shape[1] != full.shape[0]:
        raise ValueError(f"full must be (S,) and boot (B, S); got {full.shape} and {boot.shape}")
    kept = np.isfinite(full)
    full, boot = full[kept], boot[:, kept]
    boot = boot[np.all(np.isfinite(boot), axis=1)]
    seeds, resamples = len(full), len(boot)
    delta = float(full.mean()) if seeds else math.nan
    averaged = float(boot.mean(axis=1).var(ddof=1)) if resamples > 1 and seeds else math.nan
    if seeds < 2 or not math.isfinite(averaged):
        return DeltaInterval(delta, math.nan, math.nan, math.nan, math.nan, math.nan, averaged, seeds, resamples)
    if patients == "averaged":
        v_pat = averaged
    else:
        # var(seed mean) = (sum of the S variances + sum of the S(S-1) covariances) / S^2
        covariances = seeds**2 * averaged - float(boot.var(axis=0, ddof=1).sum())
        v_pat = max(covariances / (seeds * (seeds - 1)), 0.0)
    v_seed = float(full.var(ddof=1)) / seeds
    # rounding leaves ~1e-34 where the values are constant: that is no variance, not a sure effect
    floor = (64 * np.finfo(float).eps * max(float(np.abs(full).max()), float(np.abs(boot).max()), 1e-300)) ** 2
    v_seed, v_pat = (0.0 if v <= floor else v for v in (v_seed, v_pat))
    total = v_seed + v_pat
    if not total > 0:
        return DeltaInterval(delta, math.nan, math.nan, math.nan, math.nan, v_seed, v_pat, seeds, resamples)
    df = welch_satterthwaite(v_seed, seeds - 1, v_pat)
    scale = math.sqrt(total)
    infinite = not math.isfinite(df)
    quantile = float(stats.norm.ppf(0.5 + confidence / 2) if infinite else stats.t.ppf(0.5 + confidence / 2, df))
    statistic = abs(delta) / scale
    p = float(2 * (stats.norm.sf(statistic) if infinite else stats.t.sf(statistic, df)))
    return DeltaInterval(delta, delta - quantile * scale, delta + quantile * scale, p, df, v_seed, v_pat, seeds,
                         resamples)


def welch_satterthwaite(v_seed: float, seed_df: int, v_pat: float, pat_df: float = math.inf) -> float:
    """nu = (V_seed + V_pat)^2 / (V_seed^2 / df_seed + V_pat^2 / df_pat); df_pat infinite by
    default (the bootstrap variance is estimated from hundreds of replicates), so nu runs from
    S - 1 (seed noise dominates) to infinity (patients dominate)."""
    denominator = v_seed**2 / seed_df + (v_pat**2 / pat_df if math.isfinite(pat_df) else 0.0)
    return math.inf if denominator == 0 else (v_seed + v_pat) ** 2 / denominator


def resampled_metric(per_group_counts: np.ndarray, weights: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """A ratio metric (accuracy: correct / images) in every replicate: (weights @ counts) /
    (weights @ totals).

    per_group_counts: (..., G), e.g. (S, G) correct images per seed and patient; totals: (G,)
    images per patient. Returns (B, ...), e.g. (B, S). NaN in a replicate with no image."""
    counts = np.asarray(per_group_counts, dtype=float)
    weights = np.asarray(weights, dtype=float)
    numerator = np.tensordot(weights, np.moveaxis(counts, -1, 0), axes=(1, 0))  # (B, ...)
    denominator = weights @ np.asarray(totals, dtype=float)  # (B,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return numerator / denominator.reshape((-1,) + (1,) * (numerator.ndim - 1))


def resampled_kappa(per_group_confusions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Quadratic kappa in every replicate: (..., G, K, K) counts and (B, G) weights -> (B, ...)."""
    return quadratic_kappas(resampled_confusions(weights, per_group_confusions))


Cell = tuple[Any, ...]  # one level per factor, in the order of `factors`
Pair = tuple[np.ndarray, np.ndarray]  # (full (S,), boot (B, S)) of one cell or one contrast


def factorial_contrasts(cells: Mapping[Cell, Pair], factors: Sequence[str], levels: Mapping[str, Sequence[Any]],
                        reference: Mapping[str, Any]) -> dict[str, Pair]:
    """Main effects and 2x2 interactions as (full (S,), boot (B, S)) per-seed differences, with
    the formulas of stats.factorial_effects, ready for variance_components_interval.

    Every cell's arrays index the same seeds in the same order and the same patient resamples
    (row b of every cell's boot used one draw of patients). Main effect of level l of factor f:
    the mean over the cells with f = l minus the mean over the cells with f = reference[f]. The
    interaction of two 2-level factors: the mean over the other factors' cells of y11 - y10 - y01
    + y00 (0 the reference level). A contrast is linear in the cells, so it is applied to the
    full values and to each replicate alike; a seed NaN in any cell it averages is NaN in the
    contrast, and variance_components_interval then drops it (every seed averages the same
    cells)."""
    found: dict[str, Pair] = {}
    for contrast in factorial_contrast_cells(factors, levels, reference):
        arm, base = _mean_of(cells, contrast.arm), _mean_of(cells, contrast.base)
        weight = 2.0 if contrast.interaction else 1.0
        found[contrast.name] = (weight * (arm[0] - base[0]), weight * (arm[1] - base[1]))
    return found


def _mean_of(cells: Mapping[Cell, Pair], member: Any) -> Pair:
    """Element-wise mean of the member cells' full and boot arrays (NaN propagates)."""
    chosen = [pair for cell, pair in cells.items() if member(cell)]
    if not chosen:
        raise ValueError("a factorial contrast has no cells on one side: the grid is not full")
    full = np.mean([np.asarray(pair[0], dtype=float) for pair in chosen], axis=0)
    boot = np.mean([np.asarray(pair[1], dtype=float) for pair in chosen], axis=0)
    return full, boot
