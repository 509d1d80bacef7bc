"""The pruning reporter: what the objective calls after every epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from study.records import TrialWriter


def pruning_step(epoch: int, fe_epochs: int) -> int | None:
    """The step at which epoch `epoch` is reported to the pruner: its fine-tuning epoch number
    (1 for the first FT epoch), or None for a frozen-backbone (FE) epoch, which is not reported."""
    return epoch - fe_epochs if epoch > fe_epochs else None


def may_prune(epoch: int, fe_epochs: int, epochs: int) -> bool:
    """Whether the pruner is asked after `epoch`: in fine-tuning, and never after the last epoch
    (pruning then saves nothing and would hide a fully trained trial's metrics)."""
    return pruning_step(epoch, fe_epochs) is not None and epoch < epochs


@dataclass(frozen=True)
class Feed:
    """What the pruner is fed at each FT step, from the trial's raw FT values so far: the raw value,
    the best so far (in the study's direction), or an exponential moving average (``ema``: the
    newest epoch's weight). Optuna stores what it is fed as the trial's intermediate values (and
    `tell(PRUNED)` takes the last one as a pruned trial's value); the raw values stay in `curves`."""

    kind: str = "raw"
    ema: float = 0.5
    maximize: bool = True

    def value(self, raw: Sequence[float]) -> float:
        """The value fed after the FT values `raw` (at least one), oldest first."""
        if self.kind == "best":
            return max(raw) if self.maximize else min(raw)
        if self.kind == "ema":
            fed = raw[0]
            for value in raw[1:]:
                fed = self.ema * value + (1.0 - self.ema) * fed
            return fed
        return raw[-1]


RAW = Feed()


class Reporter:
    """The objective's per-epoch callback: keeps the curves in the storage (so pruned trials
    keep theirs), reports the metric to Optuna and raises TrialPruned when the pruner says so.

    The pruner sees fine-tuning epochs only, numbered from the first FT epoch (`pruning_step`):
    a head-only model is a different regime that fine-tuning overtakes, so FE values never enter
    other trials' medians, a trial with a long FE phase is compared with others after the same
    number of FT epochs, warm-up counts FT epochs, and Hyperband's rungs start at the first FT
    epoch. The pruner never decides the FE/FT question the study asks. A trial that reaches its
    last epoch always completes (`may_prune`). The pruner is fed `feed`'s value of the FT values so
    far; the curves keep the raw ones.
    """

    def __init__(self, trial: optuna.Trial, metric: str, *, fe_epochs: int = 0, epochs: int = 0,
                 feed: Feed = RAW) -> None:
        self.trial = trial
        self.metric = metric
        self.fe_epochs = fe_epochs
        self.epochs = epochs
        self.feed = feed
        self.curves: dict[str, list[Any]] = {}
        self.fine_tuning: list[float] = []  # the raw FT values reported so far, oldest first

    def replay(self, epoch: int, row: Mapping[str, Any]) -> None:
        """Record an epoch trained by an earlier attempt of this trial, without pruning."""
        for key, value in row.items():
            self.curves.setdefault(key, []).append(value)
        TrialWriter(self.trial).curves(self.curves)
        step = pruning_step(epoch, self.fe_epochs)
        if step is not None:
            self.fine_tuning.append(float(row[f"val_{self.metric}"]))
            self.trial.report(self.feed.value(self.fine_tuning), step=step)

    def __call__(self, epoch: int, row: Mapping[str, Any]) -> None:
        self.replay(epoch, row)
        if may_prune(epoch, self.fe_epochs, self.epochs) and self.trial.should_prune():
            value = float(row[f"val_{self.metric}"])
            raise optuna.TrialPruned(f"after epoch {epoch} of {self.epochs} (fine-tuning epoch "
                                     f"{pruning_step(epoch, self.fe_epochs)}): validation {self.metric} {value:.4f}")
