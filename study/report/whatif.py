"""The report's pruning what-if: every candidate rule (`study.run.replay.CANDIDATES`) replayed over
a study's own complete curves, so a user picks the rule for the next study from evidence on their
own data.

Only curves of trials that ran to the end unpruned are evidence: in a pruned study the complete
trials are the rule's survivors and the pruned ones are cut short, so the what-if runs only on a
study run with ``pruner = "none"`` (a pilot); for any other study one line says why not. Replay
equals what the rule would have done live only where the live run is sequential, its
configurations fixed (random sampler), nothing failed or resumed, and training deterministic
(docs/pruning.md); with TPE it measures pruning of the same configurations, not the sampler's
feedback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from objectives.metrics import headline
from study import tables
from study.records import StudyRecord, TrialRecord
from study.run.replay import CANDIDATES, complete_curves, orders, replay, unpruned_pick
from study.spaces.space import StudySettings

ORDERS = 100  # trial orders replayed per candidate
MIN_PILOT = 3  # x startup_trials: a smaller pilot gives the rules almost nothing to compare with
WHATIF_COLUMNS = ("candidate", "orders", "saved_mean", "saved_p5", "pick_survives", "regret_mean", "regret_p95",
                  "top3_survive")


def pilot_settings(record: StudyRecord) -> StudySettings:
    """The [study] settings the study ran with (startup trials, warm-up, direction), from the TOML
    it recorded, with its [embedded] overrides where it ran on the embedded dataset (the demo's
    startup_trials is 2, not the file's 4); the defaults where that does not parse (an older or
    foreign record)."""
    from study.ablation.ablate import is_embedded
    from study.spaces.space_file import load_space_text

    try:
        space = load_space_text(record.space_text or "", Path("recorded.toml"), stored=True)
    except Exception:  # noqa: BLE001 - any failure means: no usable recorded settings
        return StudySettings()
    return (space.embedded_run() if record.dataset and is_embedded(record.dataset) else space).study


def whatif_frame(study: optuna.Study, metric: str, settings: StudySettings,
                 n_orders: int = ORDERS) -> tuple[pd.DataFrame, str]:
    """Per candidate, over `n_orders` orders of the study's complete curves: epochs saved (mean,
    5th percentile), the share of orders whose pick is the unpruned pick, the regret (test metric
    of the unpruned pick minus the rule's pick; a luckier pick counts as 0; mean and 95th
    percentile) and the share of orders that keep all of the unpruned top 3. Returns the frame and
    why it is empty (a sentence) when it is."""
    pruner = StudyRecord.from_study(study).pruner or {}
    if pruner.get("class") != "NopPruner":
        return pd.DataFrame(), ("no pruning what-if: this study ran with a pruner, so its complete trials are the "
                                "rule's survivors and its pruned trials are cut short; run a pilot study with "
                                "--pruner none (about 3 x startup_trials trials) and report that")
    found = complete_curves(study, metric)
    lengths = {c.epochs for c in found.values()}
    needed = MIN_PILOT * settings.startup_trials
    if len(found) < needed or len(lengths) != 1:
        why = (f"{len(found)} complete trials, fewer than {needed} (3 x startup_trials)" if len(found) < needed
               else "trials of different lengths")
        return pd.DataFrame(), f"no pruning what-if: {why}"
    numbers = sorted(found)
    curves = [found[n] for n in numbers]
    trials = {t.number: TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False,
                                                                            states=(TrialState.COMPLETE,))}
    head = headline(metric)
    maximize = settings.direction == "maximize"
    test = np.array([float(trials[n].test_metrics.get(head, np.nan)) for n in numbers])
    best = unpruned_pick(curves, settings.direction)
    values = np.array([c.best(maximize) for c in curves])
    top3 = set(np.argsort(-values if maximize else values, kind="stable")[:3].tolist())
    epochs = lengths.pop()
    rows = []
    for candidate in CANDIDATES:
        results = replay(curves, candidate.record(epochs, settings), orders(len(curves), n_orders),
                         study_name=study.study_name, metric=metric, direction=settings.direction)
        saved = np.array([r.saved for r in results])
        regret = np.array([max(0.0, test[best] - test[r.picked]) if r.picked is not None else np.nan
                           for r in results])
        rows.append({
            "candidate": candidate.name, "orders": len(results), "saved_mean": float(saved.mean()),
            "saved_p5": float(np.quantile(saved, 0.05)),
            "pick_survives": float(np.mean([r.picked == best for r in results])),
            "regret_mean": float(np.nanmean(regret)), "regret_p95": float(np.nanquantile(regret, 0.95)),
            "top3_survive": float(np.mean([not (top3 & set(r.stopped)) for r in results])),
        })
    return pd.DataFrame(rows, columns=list(WHATIF_COLUMNS)), ""


def whatif_view(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "rule": frame.candidate,
        "saved (p5)": [f"{m:.0%} ({p:.0%})" for m, p in zip(frame.saved_mean, frame.saved_p5)],
        "pick kept": frame.pick_survives.map(lambda v: f"{v:.0%}"),
        "regret mean (p95)": [f"{tables.metric(m)} ({tables.metric(p)})" for m, p in
                              zip(frame.regret_mean, frame.regret_p95)],
        "top 3 kept": frame.top3_survive.map(lambda v: f"{v:.0%}"),
    })


def write_whatif(study: optuna.Study, metric: str, out: Path, formats: Sequence[str]
                 ) -> tuple[str, list[Path]]:
    """The report's "Pruning what-if" section and `pruning_whatif.*`, or one line saying why not."""
    settings = dataclasses.replace(pilot_settings(StudyRecord.from_study(study)),
                                   direction=study.direction.name.lower())
    frame, why = whatif_frame(study, metric, settings)
    if frame.empty:
        return f"## Pruning what-if\n\n{why}.\n", []
    head = headline(metric)
    caption = (
        f"Pruning what-if on {study.study_name}'s own curves: {len(frame)} candidate rules, each replayed over "
        f"{int(frame.orders.iloc[0])} random orders of the study's complete, unpruned trials (Optuna's own pruners "
        "on in-memory storage, through the runner's reporter). saved = share of the epochs of training every trial "
        "to the end (mean, 5th percentile over orders); pick kept = share of orders in which the rule keeps the "
        f"configuration the unpruned study picks; regret = test {head} of the unpruned pick minus the rule's pick "
        "(0 where the rule's pick is as good or luckier; mean, 95th percentile); top 3 kept = share of orders "
        "stopping none of the unpruned top 3. Supports: which rule would have kept this study's pick on this "
        "data. Does not support: the same on other data, or with TPE's feedback (replay uses these "
        "configurations); a pilot of few trials gives the rules little to compare with."
    )
    view = whatif_view(frame)
    files = tables.write(frame, view, out / "pruning_whatif", formats, caption)
    return "## Pruning what-if\n\n" + caption + "\n\n" + tables.markdown(view), files
