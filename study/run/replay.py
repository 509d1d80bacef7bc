"""Replay: a pruning rule run over recorded complete curves, in many trial orders.

Pruning decisions depend only on the curves, so a set of configurations trained to the end once
(a study with ``pruner = "none"``, whose trials store their `curves`) tells what any rule would
have done: for each order of those trials, which the rule stops and after which epoch, the epochs
it trains, and the configuration the study would pick. Each order is a fresh study on Optuna's
in-memory storage, named like the live study (Hyperband assigns brackets by
``crc32(study_name + trial number)``), its trials numbered in replay order, with a fresh pruner
(`build_pruner`: Optuna's pruners keep state, e.g. Hyperband's lazily built brackets); every epoch
goes through the runner's own `Reporter` (FT steps, `may_prune`, the feed), so the rule is the
one `run` applies, not a re-implementation. Importing it imports no torch.

What a replay equals, and what not:

- Median and Percentile compare a trial with the COMPLETE trials only; SuccessiveHalving (asha)
  and Hyperband compare it with every trial that reached the rung, pruned ones included (their
  rung values live in the trials' system attributes). Replay keeps both as Optuna does.
- A replay equals a live run only if that run was sequential (one worker), over a fixed set of
  configurations (random sampler: the same configurations whatever was pruned), with no failed,
  retried or resumed trials, and trained deterministically (the same curve for the same
  configuration).
- With TPE, the sampler's next configuration depends on what was pruned: replay measures the
  pruning of the same configurations, not the sampler's feedback.
- A fed value other than the raw one (``pruner_feed``) is what the rule compares and what Optuna
  stores as intermediate values (a pruned trial's value is the last one fed); the raw values stay
  in the trials' `curves`, which is what a replay reads.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import optuna
from optuna.trial import TrialState

from study import records
from study.run.reporter import Reporter
from study.run.samplers import build_pruner, pruner_feed, pruner_record
from study.spaces.space import StudySettings


@dataclass(frozen=True)
class Curve:
    """One configuration's complete recorded curve: its validation metric per epoch (FE epochs
    first, then fine-tuning), as a trial's `curves` attribute holds it."""

    values: tuple[float, ...]
    fe_epochs: int = 0

    @property
    def epochs(self) -> int:
        return len(self.values)

    @classmethod
    def from_curves(cls, curves: Mapping[str, Sequence[Any]], metric: str) -> Curve:
        """From a trial's stored `curves` (columns epoch, phase, val_<metric>, ...): FE epochs are
        those whose phase is ``"fe"`` (they come first; a missing phase column means none)."""
        values = tuple(float(v) for v in curves[f"val_{metric}"])
        phases = list(curves.get("phase", ["ft"] * len(values)))
        fe_epochs = sum(p == "fe" for p in phases)
        if phases[:fe_epochs] != ["fe"] * fe_epochs:
            raise ValueError("a curve's FE epochs must come before its fine-tuning epochs")
        return cls(values=values, fe_epochs=fe_epochs)

    def best(self, maximize: bool) -> float:
        """The trial's value once complete: its best validation epoch (as training picks it)."""
        return max(self.values) if maximize else min(self.values)


@dataclass(frozen=True)
class OrderResult:
    """What a rule did in one order: `order` lists curve indices in trial-number order; `stopped`
    maps a stopped curve's index to the epoch (counted from 1, FE included) after which it
    stopped; `picked` is the curve index of the best complete trial (None if none completed)."""

    order: tuple[int, ...]
    stopped: Mapping[int, int]
    epochs_trained: int
    epochs_full: int
    picked: int | None

    @property
    def saved(self) -> float:
        """The fraction of the epochs of training every trial to the end that the rule saved."""
        return 1.0 - self.epochs_trained / self.epochs_full if self.epochs_full else 0.0


@dataclass(frozen=True)
class Candidate:
    """A pruning rule to compare, as the [study] keys a user would write (`keys`); a warm-up of
    `warmup_third` sets ``warmup_epochs`` to a third of the epochs."""

    name: str
    keys: Mapping[str, Any]
    warmup_third: bool = False

    def settings(self, base: StudySettings, epochs: int) -> StudySettings:
        """`base` (the study's own settings: startup_trials, direction) with this rule's keys; the
        other pruner keys at their defaults."""
        reset = {f.name: f.default for f in dataclasses.fields(StudySettings) if f.name.startswith("pruner_")}
        warmup = {"warmup_epochs": max(epochs // 3, 1)} if self.warmup_third else {}
        return dataclasses.replace(base, **{**reset, **warmup, **self.keys})

    def record(self, epochs: int, base: StudySettings | None = None) -> dict[str, Any]:
        """The pruner record (`pruner_record`) the rule builds for `epochs`-epoch trials."""
        return pruner_record(self.settings(base or StudySettings(), epochs), epochs)


def _rules() -> tuple[Candidate, ...]:
    raw = (
        Candidate("median", {"pruner": "median"}, warmup_third=True),  # today's rule, warm-up a third of the epochs
        Candidate("percentile25", {"pruner": "percentile", "pruner_percentile": 25.0}, warmup_third=True),
        Candidate("patient2-median", {"pruner": "median", "pruner_patience": 2}, warmup_third=True),
        Candidate("patient3-median", {"pruner": "median", "pruner_patience": 3}, warmup_third=True),
        Candidate("asha3-min3", {"pruner": "asha", "pruner_reduction_factor": 3, "pruner_min_resource": 3}),
        Candidate("hyperband", {"pruner": "hyperband"}),
        Candidate("catchup", {"pruner": "catchup"}, warmup_third=True),
        Candidate("catchup-w1", {"pruner": "catchup", "warmup_epochs": 1}),
    )
    # a patience fed the best so far never fires (a best-so-far never falls below its earlier best):
    # it would replay as `none`, so it is left out
    fed = tuple(dataclasses.replace(c, name=f"{c.name}/{feed}", keys={**c.keys, "pruner_feed": feed})
                for feed in ("best", "ema") for c in raw if not (feed == "best" and "pruner_patience" in c.keys))
    return raw + fed


# The rules a benchmark or a study's what-if compares: each fed the raw value, the best so far
# (``/best``, but for the patient ones) and an EMA with weight 0.5 (``/ema``).
CANDIDATES: tuple[Candidate, ...] = _rules()


def replay_order(curves: Sequence[Curve], record: Mapping[str, Any], order: Sequence[int], *, study_name: str,
                 metric: str = "kappa", direction: str = "maximize") -> OrderResult:
    """Run the rule of pruner `record` (`pruner_record`) over `curves` in `order` (curve indices;
    trial n is ``curves[order[n]]``), as a sequential live study named `study_name` would."""
    # Optuna types `direction` as the two names' Literal and checks a str itself (ValueError)
    study = optuna.create_study(study_name=study_name, storage=optuna.storages.InMemoryStorage(),
                                direction=cast(Literal["minimize", "maximize"], direction),
                                sampler=optuna.samplers.RandomSampler(seed=0), pruner=build_pruner(record))
    feed = pruner_feed(record, direction)
    maximize = direction == "maximize"
    stopped: dict[int, int] = {}
    trained = 0
    for index in order:
        curve = curves[index]
        trial = study.ask()
        reporter = Reporter(trial, metric, fe_epochs=curve.fe_epochs, epochs=curve.epochs, feed=feed)
        try:
            for epoch, value in enumerate(curve.values, start=1):
                trained += 1
                reporter(epoch, {"epoch": epoch, "phase": "fe" if epoch <= curve.fe_epochs else "ft",
                                 f"val_{metric}": value})
        except optuna.TrialPruned:
            stopped[index] = epoch
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, curve.best(maximize))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    picked = order[study.best_trial.number] if complete else None
    return OrderResult(order=tuple(order), stopped=stopped, epochs_trained=trained,
                       epochs_full=sum(curves[i].epochs for i in order), picked=picked)


def replay(curves: Sequence[Curve], record: Mapping[str, Any], orders: Iterable[Sequence[int]], *,
           study_name: str, metric: str = "kappa", direction: str = "maximize") -> list[OrderResult]:
    """`replay_order` for each of `orders`, each with its own study and fresh pruner. Optuna's
    per-trial log lines are silenced while it runs."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return [replay_order(curves, record, order, study_name=study_name, metric=metric, direction=direction)
                for order in orders]
    finally:
        optuna.logging.set_verbosity(verbosity)


def orders(n: int, count: int, seed: int = 0) -> list[tuple[int, ...]]:
    """`count` trial orders of `n` curves: the recorded order first, then seeded shuffles."""
    rng = random.Random(seed)
    result = [tuple(range(n))]
    while len(result) < count:
        shuffled = list(range(n))
        rng.shuffle(shuffled)
        result.append(tuple(shuffled))
    return result[:count]


def complete_curves(study: optuna.Study, metric: str) -> dict[int, Curve]:
    """The recorded curves of `study`'s COMPLETE trials, by trial number (trials whose curves lack
    the metric are left out). Only a study run without pruning gives an unbiased set: a pruned
    study's complete trials are the rule's survivors, and its pruned trials' curves are cut short."""
    found: dict[int, Curve] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        curves = records.TrialRecord.from_trial(trial).curves
        if curves.get(f"val_{metric}"):
            found[trial.number] = Curve.from_curves(curves, metric)
    return found


def unpruned_pick(curves: Sequence[Curve], direction: str = "maximize") -> int:
    """The curve a study without pruning picks: the best value, the first on ties (in index order;
    the pick of an order with ties may differ, as the live study's would)."""
    maximize = direction == "maximize"
    values = [c.best(maximize) for c in curves]
    return values.index(max(values) if maximize else min(values))
