"""Statistics of an ablation: summaries over seeds, paired contrasts, Holm's correction and
factorial effects.

Pure functions on numbers keyed by seed, so they can be checked by hand. Every contrast is paired
by seed (seed s of a variant against seed s of its reference), because seed s fixes the
initialisation, the batch order, the augmentation and the validation split of both arms: the
paired difference removes that shared noise, which an unpaired test would count against the
effect. Only seeds present in both arms are paired.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95

PerSeed = Mapping[int, float]  # seed -> value of one metric in one arm (NaN: not measured)


@dataclass(frozen=True)
class Summary:
    """n, mean and sample standard deviation (ddof 1) of one arm over its seeds."""

    n: int
    mean: float
    std: float


@dataclass(frozen=True)
class Contrast:
    """A paired comparison over the seeds both arms share: the mean difference (arm minus
    reference) with its 95 % t interval, the paired t-test's p-value and the share of seeds on
    which the arm is better (ties count one half)."""

    n: int
    delta: float
    ci_low: float
    ci_high: float
    p: float
    p_improve: float
    note: str = ""  # why p and the interval are empty though pairs exist (`CONSTANT`)


CONSTANT = "constant difference"  # the note of a contrast whose paired differences have no spread


@dataclass(frozen=True)
class Effect:
    """A factorial effect: a CSV row name (``main:arch=resnet50``, ``interaction:arch x loss``),
    the summary of the level's marginal mean over seeds (None for an interaction, which has no
    level of its own) and the paired contrast."""

    name: str
    summary: Summary | None
    contrast: Contrast


def summarize(values: PerSeed | Sequence[float]) -> Summary:
    """n, mean and std of the finite values (a seed that did not finish does not count)."""
    array = _finite(list(values.values()) if isinstance(values, Mapping) else list(values))
    if not len(array):
        return Summary(0, math.nan, math.nan)
    return Summary(len(array), float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else math.nan)


def paired(arm: PerSeed, reference: PerSeed, *, maximize: bool, improve: bool = True) -> Contrast:
    """`arm` against `reference`, seed by seed, over the seeds where both are finite.

    The interval and p come from ``scipy.stats.ttest_rel`` (the t interval on the paired
    differences: a percentile bootstrap undercovers at 3-5 seeds). With identical arms the
    differences have no spread and t is undefined; p is then 1 and the interval [0, 0]. A
    constant non-zero difference has no spread either: the t-test would say p = 0 with a
    zero-width interval, a certainty that 3-5 seeds (often on a metric with coarse steps) cannot
    give; p and the interval are then NaN with the note `CONSTANT`, so Holm leaves it out and it
    gets no star. `improve` False leaves p_improve empty (an interaction has no better side)."""
    seeds = sorted(s for s in arm if s in reference and math.isfinite(arm[s]) and math.isfinite(reference[s]))
    a = np.array([arm[s] for s in seeds], dtype=float)
    b = np.array([reference[s] for s in seeds], dtype=float)
    share = p_improve(a, b, maximize=maximize) if improve else math.nan
    if len(seeds) < 2:
        delta = float((a - b).mean()) if len(seeds) else math.nan
        return Contrast(len(seeds), delta, math.nan, math.nan, math.nan, share)
    diffs = a - b
    if np.all(diffs == 0):
        return Contrast(len(seeds), 0.0, 0.0, 0.0, 1.0, share)
    scale = max(float(np.abs(diffs).max()), 1e-300)
    if float(np.ptp(diffs)) <= 1e-12 * scale:
        return Contrast(len(seeds), float(diffs.mean()), math.nan, math.nan, math.nan, share, CONSTANT)
    with warnings.catch_warnings():
        # near-constant differences make scipy warn about precision; its result (t large, p
        # small) is still the test's answer, so the warning adds nothing to the table
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(a, b)
        interval = result.confidence_interval(CONFIDENCE)
    return Contrast(
        len(seeds), float(diffs.mean()), float(interval.low), float(interval.high), float(result.pvalue), share
    )


def p_improve(arm: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray, *, maximize: bool) -> float:
    """Share of paired seeds on which `arm` beats `reference` (higher when maximising, lower when
    minimising), a tie counting one half; NaN without pairs."""
    a, b = np.asarray(arm, dtype=float), np.asarray(reference, dtype=float)
    if not len(a):
        return math.nan
    better = a > b if maximize else a < b
    return float((better.sum() + 0.5 * (a == b).sum()) / len(a))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values, in their original order.

    Sorted ascending, the i-th smallest (rank i from 0) is multiplied by (m - i), then a running
    maximum keeps the order of the adjusted values, and 1 caps them. NaN entries (a comparison
    without enough seeds) are not part of the family and stay NaN. Holm controls the family-wise
    error at no cost in assumptions, and is uniformly more powerful than Bonferroni."""
    indexed = [(p, i) for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(indexed)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(indexed)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


Cell = tuple[Any, ...]  # one level per factor, in the order of `factors`


def factorial_effects(cells: Mapping[Cell, PerSeed], factors: Sequence[str], levels: Mapping[str, Sequence[Any]],
                      reference: Mapping[str, Any], *, maximize: bool) -> list[Effect]:
    """Main effects and two-factor interactions of a full factorial grid, per seed, then paired.

    Main effect of level l of factor f, for seed s: the mean of the cells with f = l (the
    marginal over the other factors' cells) minus that of the cells with f = reference[f]; one
    effect per non-reference level. Interaction of two 2-level factors f, g for seed s: the mean
    over the other factors' cells of y(f1, g1) - y(f1, g0) - y(f0, g1) + y(f0, g0), 0 the
    reference level. A seed counts for an effect only where every cell the effect averages has
    it, so every seed's estimate averages the same cells."""
    found: list[Effect] = []
    for contrast in factorial_contrast_cells(factors, levels, reference):
        if contrast.interaction:
            # y11 + y00 against y10 + y01: their paired difference is exactly the interaction contrast
            same = _marginal(cells, contrast.arm, weight=2.0)
            crossed = _marginal(cells, contrast.base, weight=2.0)
            found.append(Effect(contrast.name, None, paired(same, crossed, maximize=maximize, improve=False)))
        else:
            arm, base = _marginal(cells, contrast.arm), _marginal(cells, contrast.base)
            shared = {s: v for s, v in arm.items() if s in base}  # the seeds the contrast pairs
            found.append(Effect(contrast.name, summarize(shared), paired(arm, base, maximize=maximize)))
    return found


@dataclass(frozen=True)
class FactorialContrast:
    """Which cells a factorial contrast compares: the mean over the cells where `arm` holds minus
    the mean over those where `base` holds (twice that for a 2x2 `interaction`: y11 - y10 - y01 +
    y00 averaged over the other factors' cells)."""

    name: str
    arm: Callable[[Cell], bool]
    base: Callable[[Cell], bool]
    interaction: bool = False


def factorial_contrast_cells(factors: Sequence[str], levels: Mapping[str, Sequence[Any]],
                             reference: Mapping[str, Any]) -> list[FactorialContrast]:
    """The main effects (each non-reference level of each factor against the reference level) and
    the interactions of every pair of two-level factors, in table order: one definition for the
    seed-only contrasts here and the seed-and-patient ones (`study.report.contrasts`)."""
    found: list[FactorialContrast] = []
    for index, factor in enumerate(factors):
        for level in levels[factor]:
            if level != reference[factor]:
                found.append(FactorialContrast(
                    f"main:{factor}={level}", functools.partial(_at_level, index=index, level=level),
                    functools.partial(_at_level, index=index, level=reference[factor])))
    for (i, f), (j, g) in itertools.combinations(enumerate(factors), 2):
        if len(levels[f]) != 2 or len(levels[g]) != 2:
            continue
        f0, g0 = reference[f], reference[g]
        f1 = next(level for level in levels[f] if level != f0)
        g1 = next(level for level in levels[g] if level != g0)
        found.append(FactorialContrast(
            f"interaction:{f} x {g}", functools.partial(_pair_in, i=i, j=j, pairs=((f1, g1), (f0, g0))),
            functools.partial(_pair_in, i=i, j=j, pairs=((f1, g0), (f0, g1))), interaction=True))
    return found


def _at_level(cell: Cell, *, index: int, level: Any) -> bool:
    """Whether factor `index` of `cell` is at `level` (a main effect's arm or its reference)."""
    return cell[index] == level


def _pair_in(cell: Cell, *, i: int, j: int, pairs: tuple[tuple[Any, Any], ...]) -> bool:
    """Whether factors `i` and `j` of `cell` are one of `pairs` (an interaction's same or crossed cells)."""
    return (cell[i], cell[j]) in pairs


def _marginal(cells: Mapping[Cell, PerSeed], member: Any, weight: float = 1.0) -> dict[int, float]:
    """Per seed, `weight` x the mean over the member cells; only seeds every member cell has."""
    chosen = [values for cell, values in cells.items() if member(cell)]
    if not chosen:
        return {}
    seeds = set.intersection(*({s for s, v in values.items() if math.isfinite(v)} for values in chosen))
    return {s: weight * float(np.mean([values[s] for values in chosen])) for s in sorted(seeds)}


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]
