"""The null and planted-effect simulation of ablation contrasts: the unit layer runs it small, the e2e
layer at R = 1,000 per metric."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from objectives.metrics import quadratic_kappas
from study.report.contrasts import (
    resampled_kappa,
    resampled_metric,
    variance_components_interval,
)
from study.report.uncertainty import resample_weights

LOW, HIGH = 0.02, 0.07  # the band a 5 % test's false-positive rate must fall in


SEEDS, PATIENTS = 5, 100


@dataclass(frozen=True)
class Simulated:
    """p-values per simulated ablation of today's paired t and of the two variance-components
    variants, and the mean Delta over the replicates (the planted effect on the metric's scale)."""

    paired_t: np.ndarray
    shared: np.ndarray
    averaged: np.ndarray
    delta: float


def simulate(metric: str, replicates: int, resamples: int, *, planted: float = 0.0, seed: int = 0) -> Simulated:
    """`replicates` ablations of variant 1 against variant 0 on a fresh test set each.

    100 patients with 2 images (1 for 5 %). Latent quality of image i for variant v: a patient
    part and an image part shared by both variants (difficulty), plus a patient part and an image
    part drawn once per variant (what the variant is good at; same distribution for both: equal
    in the population, different per image), plus per seed a model shift and per-image noise.
    Accuracy: correct when latent + logistic noise > 0. Kappa: 5 DR grades (45/15/20/10/10 %,
    the eyes of a patient at most one grade apart), predicted grade = true grade + latent error,
    rounded and clipped. `planted` raises variant 1's latent (accuracy) or shrinks its error
    (kappa). Every arm and seed of replicate r is rescored on the same patient resamples."""
    rng = np.random.default_rng(seed)
    images = np.where(rng.random(PATIENTS) < 0.95, 2, 1)
    group = np.repeat(np.arange(PATIENTS), images)
    n = len(group)
    onehot = np.zeros((n, PATIENTS))
    onehot[np.arange(n), group] = 1
    totals = onehot.sum(axis=0)
    out = {"t": [], "shared": [], "averaged": [], "delta": []}
    for _ in range(replicates):
        if metric == "accuracy":
            latent = _latent(rng, group, shared=(1.0, 0.7), own=(0.4, 0.9), seed_sd=(0.05, 0.5), logistic=True)
            latent[1] += planted
            correct = (1.0 + latent > 0).astype(float)  # (2, S, N)
            counts = correct @ onehot  # (2, S, G): correct images per arm, seed, patient
            full = counts.sum(axis=-1) / n
            weights = resample_weights(PATIENTS, resamples, seed=int(rng.integers(2**31)))
            boot = resampled_metric(counts, weights, totals)  # (B, 2, S)
        else:
            worst = rng.choice(5, PATIENTS, p=[0.45, 0.15, 0.2, 0.1, 0.1])
            truth = np.maximum(worst[group] - (rng.random(n) < 0.2), 0)
            latent = _latent(rng, group, shared=(0.5, 0.35), own=(0.2, 0.3), seed_sd=(0.03, 0.45), logistic=False)
            latent[1] *= 1 - planted
            predicted = np.clip(np.rint(truth + latent), 0, 4).astype(int)
            confusions = np.zeros((2, SEEDS, PATIENTS, 5, 5))
            arm, seed_, image = np.indices(predicted.shape)
            np.add.at(confusions, (arm, seed_, group[image], truth[image], predicted), 1)
            full = quadratic_kappas(confusions.sum(axis=2))  # (2, S)
            weights = resample_weights(PATIENTS, resamples, seed=int(rng.integers(2**31)))
            boot = resampled_kappa(confusions, weights)  # (B, 2, S)
        diff, boot_diff = full[1] - full[0], boot[:, 1] - boot[:, 0]
        out["t"].append(stats.ttest_rel(full[1], full[0]).pvalue)
        out["shared"].append(variance_components_interval(diff, boot_diff).p)
        out["averaged"].append(variance_components_interval(diff, boot_diff, patients="averaged").p)
        out["delta"].append(diff.mean())
    return Simulated(np.array(out["t"]), np.array(out["shared"]), np.array(out["averaged"]),
                     float(np.mean(out["delta"])))


def _latent(rng: np.random.Generator, group: np.ndarray, *, shared: tuple[float, float], own: tuple[float, float],
            seed_sd: tuple[float, float], logistic: bool) -> np.ndarray:
    """(2, S, N) latent quality: shared (patient, image) sds, per-variant (patient, image) sds,
    per-seed (model shift, per-image noise) sds."""
    n, patients = len(group), group.max() + 1
    stable = rng.normal(0, shared[0], patients)[group] + rng.normal(0, shared[1], n)
    stable = stable + rng.normal(0, own[0], (2, patients))[:, group] + rng.normal(0, own[1], (2, n))
    noise = rng.logistic(0, seed_sd[1], (2, SEEDS, n)) if logistic else rng.normal(0, seed_sd[1], (2, SEEDS, n))
    return stable[:, None, :] + rng.normal(0, seed_sd[0], (2, SEEDS, 1)) + noise


def rejections(p: np.ndarray) -> np.ndarray:
    return np.nan_to_num(p, nan=1.0) < 0.05
