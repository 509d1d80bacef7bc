"""Binary clinical endpoints of a multiclass classifier (e.g. referable DR = grades 2-4).

An endpoint groups classes into "positive" and the rest. Its score is the summed probability of
the positive classes (the model's P(positive), so no re-training and no argmax). Reported as
screening programmes and DR papers report it (Gulshan et al. 2016; the IDx-DR pivotal trial):

- ROC AUC (Mann-Whitney: the share of positive/negative pairs ranked right, ties count 1/2);
- sensitivity and specificity at two operating points chosen on the **validation** split only
  (the highest threshold with validation sensitivity >= 0.90, and the one maximising Youden's J)
  and applied unchanged to test: choosing them on test would report the best case, not a test;
- per image and per patient: a patient's score is the maximum over its images and its label is
  positive when any image is (the worse eye); patient thresholds are chosen on patient-level
  validation scores, never reused from images (a max over two eyes is shifted upwards).

Every test figure carries a 95 % interval from a cluster bootstrap over test patients (groups;
images when ungrouped): the two eyes of a patient are not independent, so resampling images
would make the intervals too narrow. Resampling is stratified by the patient's endpoint label,
so every resample has positive and negative patients and sensitivity is always defined.
Intervals are conditional on the thresholds (which were fixed on validation): they cover the
test patients' sampling, not the choice of threshold, and the results say so.

Inputs are plain numpy arrays (`SplitPredictions`); nothing here reads a storage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from study.predictions import Predictions
from study.report import uncertainty
from study.spaces.report_layout import Endpoint

LEVEL = 0.95
SENSITIVITY_TARGET = 0.90
NEAR_BOUND = 0.1  # sensitivity/specificity within this of 0 or 1 get BCa instead of percentile
CONDITIONAL = ("conditional on the threshold chosen on validation: the interval covers the test "
               "patients' sampling, not the choice of threshold")
RULES = ("sensitivity>=0.90", "youden")


SplitPredictions = Predictions  # one split's probabilities (n, K), labels and group indices (`study.predictions`)


@dataclass(frozen=True)
class Interval:
    """A point estimate with a 95 % interval and how it was computed: ``bca``, ``percentile``,
    ``wilson_deff`` (Wilson with a design effect, where the estimate sits on 0 or 1) or ``none``
    (undefined: no positives or no negatives)."""

    estimate: float
    low: float
    high: float
    method: str


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold chosen on validation by `rule`, its validation figures, and the test figures
    it gives (score >= threshold is positive)."""

    rule: str
    threshold: float
    val_sensitivity: float
    val_specificity: float
    sensitivity: Interval
    specificity: Interval


@dataclass(frozen=True)
class LevelResult:
    """One level (``image`` or ``patient``) of an endpoint on the test split."""

    level: str
    n: int
    n_positive: int
    n_groups: int
    auc: Interval
    points: tuple[OperatingPoint, ...]
    conditional_on_threshold: str = CONDITIONAL


@dataclass(frozen=True)
class EndpointResult:
    """An endpoint on the test split, per image and per patient, with the bootstrap's settings."""

    endpoint: Endpoint
    image: LevelResult
    patient: LevelResult
    resamples: int
    seed: int


# ---------------------------------------------------------------- scores and aggregation

def score(probabilities: np.ndarray, endpoint: Endpoint) -> np.ndarray:
    """The endpoint's score per image: the summed probability of its positive classes."""
    return np.asarray(probabilities, dtype=np.float64)[:, list(endpoint.positive)].sum(axis=1)


def is_positive(labels: np.ndarray, endpoint: Endpoint) -> np.ndarray:
    """Per image: whether its class is one of the endpoint's positive classes."""
    return np.isin(np.asarray(labels), endpoint.positive)


def compact(groups: np.ndarray) -> np.ndarray:
    """Group indices renumbered 0..G-1 in order of their values: a split's groups may be indices
    into a study-wide list (a patient of another split would otherwise be an empty group here,
    counted as a negative patient with no images)."""
    return np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)


def n_groups(groups: np.ndarray) -> int:
    groups = np.asarray(groups)
    return int(groups.max()) + 1 if groups.size else 0


def per_patient(scores: np.ndarray, positive: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each patient's score (the maximum over its images) and label (positive when any image is:
    the worse eye). A group index with no image gets score -inf and a negative label."""
    g = n_groups(groups)
    top = np.full(g, -np.inf)
    np.maximum.at(top, groups, scores)
    label = np.zeros(g, dtype=bool)
    np.logical_or.at(label, groups, positive)
    return top, label


# ---------------------------------------------------------------- AUC and operating points

def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count 1/2); nan without positives or negatives."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    negatives = np.sort(scores[~positive])
    below = np.searchsorted(negatives, scores[positive], side="left")
    equal = np.searchsorted(negatives, scores[positive], side="right") - below
    return float((below.sum() + 0.5 * equal.sum()) / (n_pos * n_neg))


def sensitivity_threshold(scores: np.ndarray, positive: np.ndarray, target: float = SENSITIVITY_TARGET) -> float:
    """The highest threshold t with sensitivity (share of positives with score >= t) >= target:
    the k-th largest positive score, k = ceil(target * positives). Raising t past it would leave
    fewer than k positives detected. nan without positives."""
    pos = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(positive, dtype=bool)])[::-1]
    if pos.size == 0:
        return math.nan
    k = max(1, math.ceil(target * pos.size - 1e-9))
    return float(pos[k - 1])


def youden_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 over the observed
    scores (score >= t is positive); ties go to the highest such threshold (fewest referrals).
    nan without positives or negatives."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    levels = np.unique(scores)[::-1]  # candidate thresholds, highest first
    pos, neg = np.sort(scores[positive]), np.sort(scores[~positive])
    tp = n_pos - np.searchsorted(pos, levels, side="left")  # positives with score >= t
    fp = n_neg - np.searchsorted(neg, levels, side="left")
    j = tp / n_pos - fp / n_neg
    return float(levels[int(np.argmax(j))])


def choose_thresholds(scores: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """Both operating points, by rule name, from one split's scores (validation)."""
    return {RULES[0]: sensitivity_threshold(scores, positive), RULES[1]: youden_threshold(scores, positive)}


def sens_spec(scores: np.ndarray, positive: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity of ``score >= threshold``; nan where a class is missing."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    called = scores >= threshold
    n_pos, n_neg = positive.sum(), (~positive).sum()
    sens = float((called & positive).sum() / n_pos) if n_pos else math.nan
    spec = float((~called & ~positive).sum() / n_neg) if n_neg else math.nan
    return sens, spec


# ---------------------------------------------------------------- resampling

def resample_weights(groups: np.ndarray, B: int, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """(B, G) counts of the groups of per-image indices `groups` (0..G-1) in B cluster-bootstrap
    resamples, stratified by `strata` (G,): `uncertainty.resample_weights` for an index array."""
    return uncertainty.resample_weights(n_groups(groups), B, seed, strata)


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray, chunk: int = 256) -> np.ndarray:
    """AUC for each row of `weights` (R, n) image weights: sum over positive i, negative j of
    w_i w_j [s_i > s_j, 1/2 if equal] / (W_pos W_neg). Vectorised with cumulative negative
    weights over the sorted scores; rows in chunks to bound memory. nan where a row has no
    positive or no negative weight."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    order = np.argsort(scores, kind="stable")
    s, pos = scores[order], positive[order]
    start = np.searchsorted(s, s, side="left")  # first index of each image's tie block
    end = np.searchsorted(s, s, side="right")
    pos_idx = np.flatnonzero(pos)
    out = np.empty(weights.shape[0])
    for lo in range(0, weights.shape[0], chunk):
        w = np.asarray(weights[lo:lo + chunk], dtype=np.float32)[:, order]  # counts: exact in float32
        neg_w = np.where(pos, 0.0, w)
        cum = np.zeros((w.shape[0], s.size + 1), dtype=np.float32)  # sums of counts < 2^24: exact
        np.cumsum(neg_w, axis=1, out=cum[:, 1:])
        below = cum[:, start[pos_idx]]
        equal = cum[:, end[pos_idx]] - below
        wp = w[:, pos_idx]
        num = np.einsum("rp,rp->r", wp, below + np.float32(0.5) * equal, dtype=np.float64)
        den = wp.sum(axis=1, dtype=np.float64) * neg_w.sum(axis=1, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:lo + chunk] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def jackknife_auc(scores: np.ndarray, positive: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """AUC with each group left out in turn, (G,), in O(n log n + within-group pairs): the
    Mann-Whitney sum minus the left-out group's placements plus its own pairs (subtracted twice)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    groups = np.asarray(groups)
    g = n_groups(groups)
    pos_s, neg_s = np.sort(scores[positive]), np.sort(scores[~positive])
    # placement of each positive among negatives, and of each negative among positives
    place_pos = np.searchsorted(neg_s, scores, side="left") + 0.5 * (
        np.searchsorted(neg_s, scores, side="right") - np.searchsorted(neg_s, scores, side="left"))
    place_neg = (pos_s.size - np.searchsorted(pos_s, scores, side="right")) + 0.5 * (
        np.searchsorted(pos_s, scores, side="right") - np.searchsorted(pos_s, scores, side="left"))
    total = place_pos[positive].sum()
    removed = np.bincount(groups, weights=np.where(positive, place_pos, place_neg), minlength=g)
    # pairs inside one group were subtracted from both sides: add them back once
    order = np.argsort(groups, kind="stable")
    gs, ss, ps = groups[order], scores[order], positive[order]
    inside = np.zeros(g)
    for d in range(1, int(np.bincount(groups).max()) if groups.size else 1):
        same = gs[d:] == gs[:-d]
        a, b = np.flatnonzero(same), np.flatnonzero(same) + d
        for i, j in ((a, b), (b, a)):
            pair = ps[i] & ~ps[j]
            psi = (ss[i] > ss[j]) + 0.5 * (ss[i] == ss[j])
            np.add.at(inside, gs[i][pair], psi[pair])
    n_pos_g = np.bincount(groups, weights=positive.astype(float), minlength=g)
    n_neg_g = np.bincount(groups, weights=(~positive).astype(float), minlength=g)
    den = (pos_s.size - n_pos_g) * (neg_s.size - n_neg_g)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (total - removed + inside) / den, np.nan)


# ---------------------------------------------------------------- intervals

def percentile_interval(estimate: float, boot: np.ndarray, level: float = LEVEL) -> Interval:
    boot = boot[np.isfinite(boot)]
    if not np.isfinite(estimate) or boot.size == 0:
        return Interval(estimate, math.nan, math.nan, "none")
    tail = (1 - level) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return Interval(float(estimate), float(low), float(high), "percentile")


def bca_interval(estimate: float, boot: np.ndarray, jack: np.ndarray, level: float = LEVEL) -> Interval:
    """Efron's bias-corrected and accelerated percentile interval: bias z0 from the share of
    resamples below the estimate (ties half), acceleration from the jackknife over groups. It
    moves the percentiles where the statistic is skewed by a bound (AUC near 1). Falls back to
    the percentile interval where z0 is infinite (every resample on one side)."""
    boot, jack = boot[np.isfinite(boot)], jack[np.isfinite(jack)]
    if not np.isfinite(estimate) or boot.size == 0:
        return Interval(estimate, math.nan, math.nan, "none")
    share = (np.sum(boot < estimate) + 0.5 * np.sum(boot == estimate)) / boot.size
    if share <= 0 or share >= 1 or jack.size < 2:
        return percentile_interval(estimate, boot, level)
    normal = NormalDist()
    z0 = normal.inv_cdf(share)
    d = jack.mean() - jack
    denom = 6.0 * (np.sum(d ** 2) ** 1.5)
    a = float(np.sum(d ** 3) / denom) if denom > 0 else 0.0
    quantiles = []
    for tail in ((1 - level) / 2, 1 - (1 - level) / 2):
        z = z0 + normal.inv_cdf(tail)
        quantiles.append(normal.cdf(z0 + z / (1 - a * z)))
    low, high = np.quantile(boot, quantiles)
    return Interval(float(estimate), float(low), float(high), "bca")


def design_effect(cluster_sizes: np.ndarray, icc: float = 1.0) -> float:
    """Kish's design effect for unequal clusters, 1 + (m - 1) ICC with m = sum(m_g^2) / sum(m_g)."""
    sizes = np.asarray(cluster_sizes, dtype=np.float64)
    sizes = sizes[sizes > 0]
    if sizes.size == 0:
        return 1.0
    m = float((sizes ** 2).sum() / sizes.sum())
    return 1.0 + (m - 1.0) * icc


def wilson_deff(successes: float, n: float, cluster_sizes: np.ndarray, icc: float = 1.0,
                level: float = LEVEL) -> Interval:
    """Wilson's score interval on the effective sample size n / deff.

    Used where a proportion is 0 or 1 (all 20 referable test patients detected): every resample
    then gives the same value and the bootstrap's interval collapses to a point. Wilson's interval
    does not (at p = 1 its lower end is n / (n + z^2)). Images of one patient are correlated, so
    n images carry less information than n independent ones; the design effect
    deff = 1 + (m - 1) ICC (Kish; m the size-weighted mean cluster size, sum m_g^2 / sum m_g,
    counting only the images in the proportion's denominator) shrinks n to n / deff. At p = 0 or
    1 the ICC cannot be estimated (no variation: 0/0), so we take ICC = 1, the worst case the data
    cannot refute: a patient's images count once, n_eff = (sum m_g)^2 / sum m_g^2, which is the
    number of patients when they contribute equally. Two eyes of one patient agree on DR grade far
    more often than not, so this is near the truth, not only conservative. At patient level every
    cluster has size 1 and this is the plain Wilson interval."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, "none")
    p = successes / n
    n_eff = n / design_effect(cluster_sizes, icc)
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    centre = (p + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
    half = z * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff * n_eff)) / (1 + z * z / n_eff)
    return Interval(float(p), float(max(0.0, centre - half)), float(min(1.0, centre + half)), "wilson_deff")


# ---------------------------------------------------------------- evaluation

def _proportion(hits: np.ndarray, units: np.ndarray, groups: np.ndarray, weights: np.ndarray) -> Interval:
    """A proportion (hits among units, per image) on test with its interval: Wilson + design
    effect at 0 or 1, BCa within NEAR_BOUND of a bound, percentile otherwise."""
    g = weights.shape[1]
    weights = np.asarray(weights, dtype=np.float64)  # a BLAS product; int64 @ float64 is not
    hit_g = np.bincount(groups, weights=(hits & units).astype(float), minlength=g)
    unit_g = np.bincount(groups, weights=units.astype(float), minlength=g)
    total_hits, total = hit_g.sum(), unit_g.sum()
    if total == 0:
        return Interval(math.nan, math.nan, math.nan, "none")
    estimate = total_hits / total
    if estimate in (0.0, 1.0):
        return wilson_deff(total_hits, total, unit_g)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (weights @ hit_g) / (weights @ unit_g)
    if min(estimate, 1 - estimate) < NEAR_BOUND:
        with np.errstate(invalid="ignore", divide="ignore"):
            jack = (total_hits - hit_g) / (total - unit_g)
        return bca_interval(estimate, boot, jack[unit_g < total])
    return percentile_interval(estimate, boot)


def _level(level: str, val_scores: np.ndarray, val_positive: np.ndarray, scores: np.ndarray,
           positive: np.ndarray, groups: np.ndarray, weights: np.ndarray) -> LevelResult:
    """One level's test figures. `weights` are per-group resample counts (B, G) for `groups`."""
    image_weights = weights[:, groups]  # each image weighs as often as its patient is drawn
    estimate = auc(scores, positive)
    if np.isfinite(estimate):
        auc_interval = bca_interval(estimate, weighted_auc(scores, positive, image_weights),
                                    jackknife_auc(scores, positive, groups))
    else:
        auc_interval = Interval(estimate, math.nan, math.nan, "none")
    points = []
    for rule, threshold in choose_thresholds(val_scores, val_positive).items():
        val_sens, val_spec = sens_spec(val_scores, val_positive, threshold)
        if not np.isfinite(threshold):  # validation lacks positives (or negatives): no operating point
            missing = Interval(math.nan, math.nan, math.nan, "none")
            points.append(OperatingPoint(rule, threshold, val_sens, val_spec, missing, missing))
            continue
        called = scores >= threshold
        points.append(OperatingPoint(rule, threshold, val_sens, val_spec,
                                     _proportion(called, positive, groups, weights),
                                     _proportion(~called, ~positive, groups, weights)))
    return LevelResult(level, int(scores.size), int(positive.sum()), n_groups(groups), auc_interval, tuple(points))


def evaluate_endpoint(val: SplitPredictions, test: SplitPredictions, endpoint: Endpoint, B: int = 2000,
                      seed: int = 0) -> EndpointResult:
    """`endpoint` on `test` per image and per patient: AUC and sensitivity/specificity at the two
    operating points chosen on `val` (each level on its own validation scores), with 95 %
    cluster-bootstrap intervals over test patients (B resamples, stratified by the patient's
    label, the same resamples for both levels)."""
    check(endpoint, np.asarray(test.probabilities).shape[1])
    val_s, val_p = score(val.probabilities, endpoint), is_positive(val.labels, endpoint)
    s, p, groups = score(test.probabilities, endpoint), is_positive(test.labels, endpoint), compact(test.groups)
    patient_s, patient_p = per_patient(s, p, groups)
    val_patient_s, val_patient_p = per_patient(val_s, val_p, compact(val.groups))
    weights = resample_weights(groups, B, seed, strata=patient_p.astype(int)).astype(np.float64)
    patients = np.arange(patient_s.size)
    image = _level("image", val_s, val_p, s, p, groups, weights)
    patient = _level("patient", val_patient_s, val_patient_p, patient_s, patient_p, patients, weights)
    return EndpointResult(endpoint, image, patient, B, seed)


def check(endpoint: Endpoint, num_classes: int) -> None:
    """ValueError (one line) where the endpoint names a class the predictions lack, or every class."""
    bad = [c for c in endpoint.positive if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"endpoint {endpoint.name!r}: class {bad[0]} is out of range for {num_classes} classes")
    if len(set(endpoint.positive)) >= num_classes:
        raise ValueError(f"endpoint {endpoint.name!r}: every class is positive, so nothing is negative")


# ---------------------------------------------------------------- ablation

@dataclass(frozen=True)
class SeedPoint:
    """One operating point of one seed: threshold from that seed's validation split, test figures,
    and per-test-patient counts (G, 4): detected positives, positives, cleared negatives,
    negatives, so the caller can resample patients jointly across arms (weights @ counts). Rows
    are the test split's distinct group indices in ascending order (`compact`), the same for
    every seed and variant scored on the same test split; at patient level a row is one
    patient's 0/1 counts."""

    rule: str
    threshold: float
    sensitivity: float
    specificity: float
    counts: np.ndarray


@dataclass(frozen=True)
class SeedEndpoint:
    """One seed's test figures of an endpoint at one level."""

    seed_index: int
    level: str
    auc: float
    points: tuple[SeedPoint, ...]


def ablation(runs: Sequence[tuple[SplitPredictions, SplitPredictions]], endpoint: Endpoint) -> list[SeedEndpoint]:
    """Per seed (val, test) predictions of one variant -> per seed and level (image, patient) the
    test AUC and sensitivity/specificity at thresholds chosen on **that seed's** validation split
    (its split varies with the seed). Point estimates only; pair them over seeds across variants."""
    out = []
    for index, (val, test) in enumerate(runs):
        val_s, val_p = score(val.probabilities, endpoint), is_positive(val.labels, endpoint)
        val_g = compact(val.groups)
        s, p, g = score(test.probabilities, endpoint), is_positive(test.labels, endpoint), compact(test.groups)
        levels = {"image": (val_s, val_p, s, p, g),
                  "patient": (*per_patient(val_s, val_p, val_g), *per_patient(s, p, g), np.arange(n_groups(g)))}
        for level, (vs, vp, ts, tp, groups) in levels.items():
            points = []
            for rule, threshold in choose_thresholds(vs, vp).items():
                called = ts >= threshold
                counts = np.stack([np.bincount(groups, weights=(called & tp).astype(float), minlength=n_groups(g)),
                                   np.bincount(groups, weights=tp.astype(float), minlength=n_groups(g)),
                                   np.bincount(groups, weights=(~called & ~tp).astype(float), minlength=n_groups(g)),
                                   np.bincount(groups, weights=(~tp).astype(float), minlength=n_groups(g))], axis=1)
                sens, spec = sens_spec(ts, tp, threshold)
                points.append(SeedPoint(rule, threshold, sens, spec, counts))
            out.append(SeedEndpoint(index, level, auc(ts, tp), tuple(points)))
    return out
