"""A toy objective: the whole `objectives.contract.Objective` in a few lines, no torch, no images.

Logistic regression by gradient descent (numpy) on two Gaussian clouds of 2-D points. Its
settings are named unlike the image classifier's (``rounds``, ``warmup``, ``rng``, ``shuffle``),
so a study of it runs through `run`, `ablate` and `report` only if ``study/`` reads them through
``ROLES`` and never by name (tests/e2e/test_contract_e2e.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from objectives.contract import DataSource, Possible, ReportGroups, Roles, Settled, TrialContext
from objectives.metrics import summarize

EMBEDDED_DATASET = "digits"  # what a run without --data prepares; the toy draws its own points
ROLES = Roles(epochs="rounds", fe_epochs="warmup", seed="rng", split_seed="shuffle")
CHECKPOINT_KEYS = frozenset({"epoch", "curves", "weights"})
METRICS = ("loss", "accuracy", "balanced_accuracy", "macro_f1", "kappa")  # `summarize`'s
REPORT_GROUPS = ReportGroups(cells=("spread",), figures=("spread",))  # where a file's [report] says nothing


@dataclass(frozen=True)
class Points:
    points: int = 120
    spread: float = 1.0
    shuffle: int = 0


@dataclass(frozen=True)
class Descent:
    rate: float = 0.5
    rounds: int = 3
    warmup: int = 0
    rng: int = 0


@dataclass(frozen=True)
class Config:
    data: Points = field(default_factory=Points)
    train: Descent = field(default_factory=Descent)


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...] = ("left", "right")
    manifest: None = None  # no files, so nothing to write as split.csv


def settle(possible: Possible, *, embedded: bool) -> Settled:
    return Settled()  # nothing to download, nothing derived


def load_data(data: Points, source: DataSource) -> Splits:
    """Two clouds at x = -1 and +1; test fixed, train/val drawn by `shuffle`."""
    def cloud(n: int, rng: np.random.Generator) -> Split:
        y = np.arange(n) % 2
        return Split(rng.normal(0, data.spread, (n, 2)) + np.c_[2 * y - 1, np.zeros(n)], y)
    pool = cloud(data.points, np.random.default_rng(data.shuffle))
    cut = data.points * 3 // 4
    return Splits(Split(pool.x[:cut], pool.y[:cut]), Split(pool.x[cut:], pool.y[cut:]),
                  cloud(data.points // 2, np.random.default_rng(10**6)))


def evaluate(w: np.ndarray, split: Split) -> SimpleNamespace:
    """What the runner records of an evaluation: loss, metrics, confusion matrix (no probabilities)."""
    p = 1 / (1 + np.exp(-(split.x @ w[:2] + w[2])))
    loss = float(-np.mean(split.y * np.log(p + 1e-9) + (1 - split.y) * np.log(1 - p + 1e-9)))
    confusion = np.zeros((2, 2), dtype=int)
    np.add.at(confusion, (split.y, (p > 0.5).astype(int)), 1)
    return SimpleNamespace(loss=loss, metrics=summarize(confusion), confusion=confusion.tolist())


def run(config: Config, splits: Splits, context: TrialContext) -> SimpleNamespace:
    train, resume = config.train, context.checkpoint.resume if context.checkpoint else None
    w = np.array(resume["weights"]) if resume else np.random.default_rng(train.rng).normal(0, 0.1, 3)
    curves: dict = {k: list(v) for k, v in resume["curves"].items()} if resume else {}
    best: tuple[float, int, SimpleNamespace, np.ndarray] | None = None
    for epoch in range(len(curves.get("epoch", [])) + 1, train.rounds + 1):
        p = 1 / (1 + np.exp(-(splits.train.x @ w[:2] + w[2])))
        grad = np.r_[splits.train.x.T @ (p - splits.train.y), np.sum(p - splits.train.y)] / len(p)
        w = w - train.rate * grad
        val = evaluate(w, splits.val)
        row = {"epoch": epoch, "val_loss": val.loss, **{f"val_{k}": v for k, v in val.metrics.items() if k != "recall"}}
        for key, value in row.items():
            curves.setdefault(key, []).append(value)
        score = val.loss if context.metric == "loss" else val.metrics[context.metric]
        if best is None or (score > best[0] if context.maximize else score < best[0]):
            best = (score, epoch, val, w.copy())
        context.report(epoch, row)
        if context.checkpoint is not None:
            context.checkpoint.save({"epoch": epoch, "curves": curves, "weights": w.tolist()})
    assert best is not None
    return SimpleNamespace(curves=curves, best_epoch=best[1], val=best[2], test=evaluate(best[3], splits.test))
