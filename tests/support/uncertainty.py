"""The coverage simulation of the patient-bootstrap interval: the unit layer runs it with few
repetitions, the e2e layer with 1,000."""

from __future__ import annotations

import numpy as np

from study.report import uncertainty as uq


def coverage(reps: int, n_groups: int, B: int, seed: int) -> float:
    """Share of `reps` simulated test sets whose 95 % accuracy interval covers the population
    accuracy. Groups of 1-2 images; a group's images are right or wrong together with
    probability 0.6 (correlated correctness), each image right with probability p = 0.8."""
    rng = np.random.default_rng(seed)
    p, k = 0.8, 3
    hits = 0
    for rep in range(reps):
        sizes = rng.integers(1, 3, size=n_groups)
        groups = np.repeat(np.arange(n_groups), sizes)
        shared = rng.random(n_groups) < p
        together = rng.random(n_groups) < 0.6
        own = rng.random(len(groups)) < p
        right = np.where(together[groups], shared[groups], own)  # marginal P(right) = p exactly
        labels = rng.integers(0, k, size=len(groups))
        predicted = np.where(right, labels, (labels + 1 + rng.integers(0, k - 1, size=len(groups))) % k)
        probabilities = np.eye(k, dtype=np.float32)[predicted]
        interval = uq.test_intervals(probabilities, labels, groups, B=B, seed=rep)["accuracy"]
        hits += interval.low <= p <= interval.high
    return hits / reps
