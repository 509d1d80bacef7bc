"""The search's tables: one row per trial (`trial_frame`), per factor level (`factor_table`) and
per cell of the study's [report] factors (`cell_table`), and the best trial of each figure cell.

Each reads only the storage. The factor and cell tables map the search (adaptively sampled,
confounded, survivors of pruning); their captions say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from objectives import metrics
from objectives.metrics import TABLE_METRICS
from study import records, tables
from study.records import SPLITS, TrialRecord
from study.report import stats
from study.spaces.report_layout import ReportLayout

NUMERIC_BINS = 3
ENDS = ("low", "high")  # a test metric's recorded 95 % interval: test_<metric>_low / _high
_INTERVAL_COLUMNS = tuple(records.interval_key(name, end) for name in TABLE_METRICS for end in ENDS)
_METRIC_COLUMNS = tuple(f"{split}_{name}" for split in SPLITS for name in TABLE_METRICS)
_LEVEL_COLUMNS = {"n", "pruned", "failed", "best", "mean", "std", "best_trial", *_INTERVAL_COLUMNS,
                  *_METRIC_COLUMNS}  # what `_level_stats` adds
SAMPLED = "sampled:"  # column prefix of a trial's sampled params (absent where a condition was false)


def trial_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, config values, val_/test_ metrics of the tables
    (`TABLE_METRICS`) with their test intervals, reason; the record's columns come from its one
    flattener (`records.TrialRecord.row`, which `load_trials` shows whole)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        record = TrialRecord.from_trial(t)
        flat = record.row()
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, "value": t.value, "epochs": record.epochs,
                               "fail_reason": record.fail_reason}
        row.update(record.config)
        row.update({f"{SAMPLED}{k}": v for k, v in t.params.items()})
        row.update({column: flat.get(column, np.nan) for column in (*_METRIC_COLUMNS, *_INTERVAL_COLUMNS)})
        rows.append(row)
    return pd.DataFrame(rows)


def factors(study: optuna.Study) -> dict[str, bool]:
    """Sampled parameter name -> whether it is categorical, in the order they were first seen."""
    found: dict[str, bool] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            found.setdefault(name, isinstance(dist, CategoricalDistribution))
    return found


def factor_table(frame: pd.DataFrame, factor_kinds: dict[str, bool], maximize: bool) -> pd.DataFrame:
    """Per factor level: trial counts by state, best / mean / std of the objective over complete
    trials, and the reported metrics of that level's best trial on validation and test. Trials in
    which a conditional factor was not sampled (focal_gamma of a CE trial) do not count for it."""
    rows = []
    for name, categorical in factor_kinds.items():
        column = f"{SAMPLED}{name}"
        if column not in frame:
            continue
        sampled = frame[frame[column].notna()]  # a conditional parameter counts where it was sampled
        levels = sampled[column] if categorical else _bins(sampled[column])
        for level in _ordered_levels(levels):
            group = sampled[levels.astype(str) == level]
            rows.append({"factor": name, "level": level, **_level_stats(group, maximize)})
    return pd.DataFrame(rows)


def cell_table(frame: pd.DataFrame, maximize: bool, cells: Sequence[str]) -> pd.DataFrame:
    """One row per combination of the `cells` factors that vary (the study's recorded [report]
    cells: the file's, else its objective's `REPORT_GROUPS`) with its best trial."""
    keys = [k for k in cells if k in frame and frame[k].nunique(dropna=True) > 1]
    if not keys:
        return pd.DataFrame()
    rows = []
    for cell_values, group in frame.groupby([frame[k].astype(str) for k in keys], sort=True):
        cell_values = cell_values if isinstance(cell_values, tuple) else (cell_values,)
        rows.append({**dict(zip(keys, cell_values)), **_level_stats(group, maximize)})
    return pd.DataFrame(rows)


def best_trials_per_cell(study: optuna.Study, frame: pd.DataFrame, maximize: bool,
                         layout: ReportLayout | None = None) -> dict[str, FrozenTrial]:
    """`best` plus the best complete trial of each combination of the layout's `figures` factors
    that vary (the study's recorded [report]), by
    file-name label (``resnet18_scratch``)."""
    complete = frame[frame.state == "COMPLETE"]
    if complete.empty:
        return {}
    layout = layout or recorded_layout(study)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    picked = {"best": by_number[study.best_trial.number]}
    keys = [k for k in layout.figures if k in complete and complete[k].nunique() > 1]
    if keys:
        for values, group in complete.groupby(keys, sort=True):
            values = values if isinstance(values, tuple) else (values,)
            label = "_".join(layout.label(k, v) for k, v in zip(keys, values))
            index = group.value.idxmax() if maximize else group.value.idxmin()
            picked[label] = by_number[int(group.loc[index, "number"])]
    return picked


def recorded_layout(study: optuna.Study) -> ReportLayout:
    """The [report] layout the study recorded (user attr ``report``); the defaults for a study made
    before studies recorded one."""
    return records.StudyRecord.from_study(study).report


def _level_stats(group: pd.DataFrame, maximize: bool) -> dict[str, Any]:
    """n (complete trials, what best/mean/std are over), pruned and failed counts, and the
    metrics of the group's best complete trial."""
    complete = group[group.state == "COMPLETE"]
    result: dict[str, Any] = {
        "n": len(complete),
        "pruned": int((group.state == "PRUNED").sum()),
        "failed": int((group.state == "FAIL").sum()),
        "best": np.nan, "mean": np.nan, "std": np.nan, "best_trial": None,
    }
    if not complete.empty:
        index = complete.value.idxmax() if maximize else complete.value.idxmin()
        best = complete.loc[index]
        summary = stats.summarize(complete.value.tolist())
        result.update(best=float(best.value), mean=summary.mean, std=summary.std, best_trial=int(best.number))
        result.update({c: float(best[c]) for c in _METRIC_COLUMNS})
        result.update({c: float(best[c]) if c in best else np.nan for c in _INTERVAL_COLUMNS})
    else:
        result.update({c: np.nan for c in (*_METRIC_COLUMNS, *_INTERVAL_COLUMNS)})
    return result


def test_headline(metric: str) -> str:
    """The test metric a table leads with: the study's metric on test, or test kappa where the
    study's metric is not a test metric (a validation loss): `objectives.metrics.headline`."""
    return f"test_{metrics.headline(metric)}"


def metric_label(metric: str) -> str:
    """A column's metric as a header: ``test_balanced_accuracy`` -> ``test bal_acc``."""
    split, _, name = metric.partition("_")
    return f"{split} {metrics.label(name)}"


def columns_caption(metric: str) -> str:
    """What the columns of `page_view` hold, for the captions of the factor and cell tables."""
    return (f"n (pr., f.) = complete trials (pruned, failed); {metric_label(test_headline(metric))} = the row's best "
            f"trial (chosen on validation) on test; best val (#) = that trial's validation {metric} and its number; "
            f"val mean ± std = validation {metric} over the row's complete trials. [low, high] = the test "
            f"metric's 95 % interval from a bootstrap over test patients (images where ungrouped), recorded when the "
            f"trial ended; a value without one comes from an older run that recorded none. The CSV has every metric "
            f"of the best trial, validation and test, and the intervals.")


def page_view(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The page view of a factor or cell table: its keys, n complete (pruned, failed), the headline
    test metric of the row's best trial, then that trial's validation value with its number,
    `0.612 (#7)`, and the rows' validation mean ± std: narrow enough for a page, every metric at
    one precision, short headers (`columns_caption` spells them out). The CSV keeps every column."""
    headline = test_headline(metric)
    keys = [c for c in frame.columns if c not in _LEVEL_COLUMNS]
    shown = frame[keys].copy()
    shown["n (pr., f.)"] = [f"{n} ({p}, {f})" for n, p, f in zip(frame.n, frame.pruned, frame.failed)]
    shown[metric_label(headline)] = [with_interval(v, row.get(f"{headline}_low"), row.get(f"{headline}_high"))
                                     for v, (_, row) in zip(frame[headline], frame.iterrows())]
    shown["best val (#)"] = [tables.DASH if pd.isna(b) else f"{tables.metric(b)} (#{int(t)})"
                             for b, t in zip(frame.best, frame.best_trial)]
    shown["val mean ± std"] = [tables.mean_std(m, s) for m, s in zip(frame["mean"], frame["std"])]
    return shown


def with_interval(value: Any, low: Any, high: Any) -> str:
    """``0.812 [0.760, 0.861]``; the bare value where no interval was recorded (an older run)."""
    text = tables.metric(value)
    if low is None or high is None or pd.isna(low) or pd.isna(high) or pd.isna(value):
        return text
    return f"{text} [{tables.metric(low)}, {tables.metric(high)}]"


def _bins(values: pd.Series) -> pd.Series:
    """Levels of a numeric factor: its values when few, else quantile bins labelled by the
    smallest and largest value inside each bin."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.nunique(dropna=True) <= 5:
        return numeric.map(lambda v: tables.cell(v) if not pd.isna(v) else "–")
    codes = pd.qcut(numeric, NUMERIC_BINS, labels=False, duplicates="drop")
    spans = numeric.groupby(codes).agg(["min", "max"])
    labels = {
        code: f"[{tables.cell(float(row['min']))}, {tables.cell(float(row['max']))}]" for code, row in spans.iterrows()
    }
    return codes.map(lambda c: labels.get(c, "–")).astype(str)


def _ordered_levels(levels: pd.Series) -> list[str]:
    seen = list(dict.fromkeys(levels.astype(str)))
    def key(text: str) -> tuple[int, float | str]:
        try:
            return (0, float(text.strip("[]").split(",")[0]))
        except ValueError:
            return (1, text)
    return sorted(seen, key=key)
