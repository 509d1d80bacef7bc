"""`study report`: ablation tables, importances, confusion matrices and curves from the storage.

Reads only the Optuna storage (trial params, values and the user attrs the runner wrote) and
never re-trains. Numeric parameters are binned into levels; categorical ones are their choices.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy import stats

from objectives.errors import InputError
from study import figures, tables

ABLATION_SUFFIX = ".ablation"  # `ablate NAME` stores its trials as study NAME.ablation
BASELINE = "baseline"  # the ablation variant that is the parent study's best configuration
TEST_METRICS = ("kappa", "accuracy", "balanced_accuracy", "macro_f1")
REPORTED = ("accuracy", "balanced_accuracy", "macro_f1", "kappa")
MIN_IMPORTANCE_TRIALS = 5
NUMERIC_BINS = 3
CELL_FACTORS = ("arch", "pretrained", "loss")
SAMPLED = "sampled:"  # column prefix of a trial's sampled params (absent where a condition was false)


@dataclass(frozen=True)
class Report:
    folder: Path
    markdown: Path
    files: tuple[Path, ...]
    summary: str


def load(study_name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        raise InputError(f"no study {study_name!r} in the storage (it has: {', '.join(names) or 'none'})") from None


def trial_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, config values, val_/test_ metrics, reason."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, "value": t.value,
                               "epochs": len(t.user_attrs.get("curves", {}).get("epoch", [])),
                               "fail_reason": t.user_attrs.get("fail_reason")}
        row.update(t.user_attrs.get("config", {}))
        row.update({f"{SAMPLED}{k}": v for k, v in t.params.items()})
        for split in ("val", "test"):
            for name in REPORTED:
                row[f"{split}_{name}"] = t.user_attrs.get(f"{split}_metrics", {}).get(name, np.nan)
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


def cell_table(frame: pd.DataFrame, maximize: bool) -> pd.DataFrame:
    """The source lab's comparison: one row per arch x pretrained (x loss) cell with its best trial."""
    keys = [k for k in CELL_FACTORS if k in frame and frame[k].nunique(dropna=True) > 1]
    if not keys:
        return pd.DataFrame()
    rows = []
    for cell_values, group in frame.groupby([frame[k].astype(str) for k in keys], sort=True):
        cell_values = cell_values if isinstance(cell_values, tuple) else (cell_values,)
        rows.append({**dict(zip(keys, cell_values)), **_level_stats(group, maximize)})
    return pd.DataFrame(rows)


def best_trials_per_cell(study: optuna.Study, frame: pd.DataFrame, maximize: bool) -> dict[str, FrozenTrial]:
    """`best` plus the best complete trial of each arch x pretrained cell, by file-name label."""
    complete = frame[frame.state == "COMPLETE"]
    if complete.empty:
        return {}
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    picked = {"best": by_number[study.best_trial.number]}
    keys = [k for k in ("arch", "pretrained") if k in complete and complete[k].nunique() > 1]
    if keys:
        for values, group in complete.groupby(keys, sort=True):
            values = values if isinstance(values, tuple) else (values,)
            label = "_".join(_cell_label(k, v) for k, v in zip(keys, values))
            index = group.value.idxmax() if maximize else group.value.idxmin()
            picked[label] = by_number[int(group.loc[index, "number"])]
    return picked


def importance_table(study: optuna.Study) -> tuple[pd.DataFrame, str]:
    """fANOVA and PED-ANOVA importances, or an empty frame and a sentence saying why not."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return pd.DataFrame(), (f"Parameter importances need at least {MIN_IMPORTANCE_TRIALS} complete trials; "
                                f"this study has {len(complete)}.")
    evaluators = {
        "fanova": optuna.importance.FanovaImportanceEvaluator(seed=0),
        "ped_anova": optuna.importance.PedAnovaImportanceEvaluator(),
    }
    columns: dict[str, dict[str, float]] = {}
    notes = []
    for name, evaluator in evaluators.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                columns[name] = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (RuntimeError, ValueError) as exc:
            notes.append(f"{name}: {exc}")
    if not columns:
        return pd.DataFrame(), "Parameter importances could not be computed (" + "; ".join(notes) + ")."
    params = sorted({p for c in columns.values() for p in c}, key=lambda p: -max(c.get(p, 0.0) for c in columns.values()))
    frame = pd.DataFrame({"parameter": params, **{k: [c.get(p, np.nan) for p in params] for k, c in columns.items()}})
    return frame, "; ".join(notes)


def build_report(study: optuna.Study, out: Path, formats: Sequence[str], storage_label: str, ablation: optuna.Study | None = None) -> Report:
    """Write every table and figure of `study` under `out` and return what was written."""
    frame = trial_frame(study)
    if frame.empty:
        raise InputError(f"study {study.study_name} has no finished trials yet; run it first")
    out.mkdir(parents=True, exist_ok=True)
    metric = study.user_attrs.get("metric", "value")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    files: list[Path] = []
    sections: list[str] = [_settings_section(study, frame, metric, storage_label)]

    factor = factor_table(frame, factors(study), maximize)
    if not factor.empty:
        caption = f"Factor levels of {study.study_name}: validation {metric} over complete trials; metrics of each level's best trial."
        files += tables.write(factor, _display(factor), out / "ablation", formats, caption)
        sections.append("## Factors\n\n" + caption + "\n\n" + tables.markdown(_display(factor)))
    cells = cell_table(frame, maximize)
    if not cells.empty:
        caption = "Best trial per architecture x pretraining (x loss) cell."
        files += tables.write(cells, _display(cells), out / "cells", formats, caption)
        sections.append("## Cells\n\n" + caption + "\n\n" + tables.markdown(_display(cells)))

    importance, note = importance_table(study)
    if importance.empty:
        sections.append(f"## Parameter importance\n\n{note}\n")
    else:
        caption = f"Parameter importances for validation {metric} (fANOVA and PED-ANOVA)."
        files += tables.write(importance, importance, out / "importance", formats, caption)
        files.append(_importance_figure(importance, out / "importance.png"))
        sections.append("## Parameter importance\n\n" + caption + (f" {note}" if note else "") + "\n\n"
                        + tables.markdown(importance) + "\n![importance](importance.png)\n")

    picked = best_trials_per_cell(study, frame, maximize)
    figure_lines = []
    for label, trial in picked.items():
        confusion = trial.user_attrs.get("test_confusion")
        if confusion:
            title = f"{label}: trial {trial.number}, test (row-normalised)"
            path = figures.confusion_figure(confusion, trial.user_attrs.get("class_names", [str(i) for i in range(len(confusion))]),
                                            title, out / f"confusion_{label}.png")
            files.append(path)
            figure_lines.append(f"![{label}]({path.name})")
    if picked:
        labels: dict[int, list[str]] = {}
        for label, trial in picked.items():
            labels.setdefault(trial.number, []).append(label)
        by_number = {t.number: t for t in picked.values()}
        curves = [figures.Curve(f"{' = '.join(names)} (trial {n})", by_number[n].user_attrs.get("curves", {}), by_number[n].state == TrialState.PRUNED)
                  for n, names in labels.items()]
        files.append(figures.curves_figure(curves, metric, out / "curves.png"))
        sections.append("## Best trials: test confusion matrices and curves\n\n" + "\n".join(figure_lines)
                        + "\n\n![curves](curves.png)\n")
    files.append(_history_figure(study, out / "history.png"))
    sections.append("## Optimization history\n\n![history](history.png)\n")

    if ablation is not None and len(ablation.trials):
        table, display, caption = ablation_table(ablation)
        files += tables.write(table, display, out / "ablation_study", formats, caption)
        sections.append("## Ablation study\n\n" + caption + "\n\n" + tables.markdown(display))

    markdown = f"# Study {study.study_name}\n\n" + "\n".join(sections)
    report_path = out / "report.md"
    report_path.write_text(markdown)
    summary = sections[0] + ("\n## Factors\n\n" + tables.markdown(_display(factor)) if not factor.empty else "")
    return Report(out, report_path, tuple([report_path, *files]), summary)


def ablation_table(study: optuna.Study) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Per variant: seeds done, mean ± std of the objective and test metrics, delta to the
    baseline and Welch's t-test p-value against it (raw numbers, display text, caption)."""
    metric = study.user_attrs.get("metric", "value")
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    by_variant: dict[str, list[FrozenTrial]] = {}
    for name in study.user_attrs.get("variants", {}):
        by_variant[name] = [t for t in complete if t.params.get("variant") == name]
    baseline_name = BASELINE if BASELINE in by_variant else next(iter(by_variant), None)
    base_values = np.array([t.value for t in by_variant.get(baseline_name, [])], dtype=float)
    rows = []
    for name, trials in by_variant.items():
        values = np.array([t.value for t in trials], dtype=float)
        row: dict[str, Any] = {"variant": name, "seeds": len(values),
                               "mean": _mean(values), "std": _std(values),
                               "delta": _mean(values) - _mean(base_values) if len(values) and len(base_values) else np.nan,
                               "p_welch": _welch(values, base_values) if name != baseline_name else np.nan}
        for test_metric in TEST_METRICS:
            scores = np.array([t.user_attrs.get("test_metrics", {}).get(test_metric, np.nan) for t in trials], dtype=float)
            row[f"test_{test_metric}_mean"] = _mean(scores)
            row[f"test_{test_metric}_std"] = _std(scores)
        rows.append(row)
    table = pd.DataFrame(rows)
    display = pd.DataFrame({
        "variant": table.variant,
        "seeds": table.seeds,
        f"val {metric}": [_pm(m, s) for m, s in zip(table["mean"], table["std"])],
        "delta": table.delta,
        "p (Welch)": table.p_welch,
        **{f"test {m}": [_pm(a, b) for a, b in zip(table[f"test_{m}_mean"], table[f"test_{m}_std"])] for m in ("kappa", "accuracy")},
    }) if not table.empty else table
    caption = (f"Ablation of {study.user_attrs.get('parent', '?')} ({study.user_attrs.get('mode', '')}): mean ± std over seeds of "
               f"validation {metric} and test metrics; delta to {baseline_name}; p = Welch's two-sample t-test "
               f"(unequal variances) against {baseline_name}, small p = larger than seed noise.")
    return table, display, caption


def _level_stats(group: pd.DataFrame, maximize: bool) -> dict[str, Any]:
    complete = group[group.state == "COMPLETE"]
    stats: dict[str, Any] = {
        "complete": int((group.state == "COMPLETE").sum()),
        "pruned": int((group.state == "PRUNED").sum()),
        "failed": int((group.state == "FAIL").sum()),
        "best": np.nan, "mean": np.nan, "std": np.nan, "best_trial": None,
    }
    if not complete.empty:
        index = complete.value.idxmax() if maximize else complete.value.idxmin()
        best = complete.loc[index]
        stats.update(best=float(best.value), mean=float(complete.value.mean()),
                     std=float(complete.value.std(ddof=1)) if len(complete) > 1 else np.nan,
                     best_trial=int(best.number))
        for split in ("val", "test"):
            for name in REPORTED:
                stats[f"{split}_{name}"] = float(best[f"{split}_{name}"])
    else:
        stats.update({f"{s}_{n}": np.nan for s in ("val", "test") for n in REPORTED})
    return stats


def _display(frame: pd.DataFrame) -> pd.DataFrame:
    """Human columns: mean ± std joined, metric names shortened."""
    shown = frame.copy()
    if {"mean", "std"} <= set(shown):
        shown.insert(shown.columns.get_loc("mean"), "mean ± std",
                     [f"{tables.cell(m)} ± {tables.cell(s)}" if not math.isnan(s) else tables.cell(m) for m, s in zip(shown["mean"], shown["std"])])
        shown = shown.drop(columns=["mean", "std"])
    short = {"balanced_accuracy": "bal_acc", "accuracy": "acc", "macro_f1": "f1"}
    return shown.rename(columns={c: _shorten(c, short) for c in shown.columns})


def _shorten(column: str, short: dict[str, str]) -> str:
    for long, brief in short.items():
        if column.endswith(long):
            return column[: -len(long)] + brief
    return column


def _bins(values: pd.Series) -> pd.Series:
    """Levels of a numeric factor: its values when few, else quantile bins labelled by the
    smallest and largest value inside each bin."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.nunique(dropna=True) <= 5:
        return numeric.map(lambda v: tables.cell(v) if not pd.isna(v) else "–")
    codes = pd.qcut(numeric, NUMERIC_BINS, labels=False, duplicates="drop")
    spans = numeric.groupby(codes).agg(["min", "max"])
    labels = {code: f"[{tables.cell(float(row['min']))}, {tables.cell(float(row['max']))}]" for code, row in spans.iterrows()}
    return codes.map(lambda c: labels.get(c, "–")).astype(str)


def _ordered_levels(levels: pd.Series) -> list[str]:
    seen = list(dict.fromkeys(levels.astype(str)))
    def key(text: str):
        try:
            return (0, float(text.strip("[]").split(",")[0]))
        except ValueError:
            return (1, text)
    return sorted(seen, key=key)


def _cell_label(key: str, value: Any) -> str:
    if key == "pretrained":
        return "pretrained" if value in (True, "True") else "scratch"
    return str(value)


def _settings_section(study: optuna.Study, frame: pd.DataFrame, metric: str, storage_label: str) -> str:
    attrs = study.user_attrs
    counts = frame.state.value_counts().to_dict()
    lines = [
        f"- objective: `{attrs.get('objective', '?')}`, {study.direction.name.lower()} validation **{metric}**",
        f"- dataset: `{attrs.get('dataset', '?')}`",
        f"- storage: `{storage_label}`",
        f"- fixed: {', '.join(f'{k}={v}' for k, v in attrs.get('fixed', {}).items()) or '–'}",
        f"- pinned: {', '.join(f'{k}={v}' for k, v in attrs.get('pinned', {}).items()) or '–'}",
        f"- trials: {counts.get('COMPLETE', 0)} complete, {counts.get('PRUNED', 0)} pruned, {counts.get('FAIL', 0)} failed",
    ]
    reasons = frame[frame.state == "FAIL"].fail_reason.fillna("stale worker").value_counts()
    if len(reasons):
        lines.append("- failure reasons: " + ", ".join(f"{reason} ×{n}" for reason, n in reasons.items()))
    if counts.get("COMPLETE"):
        best = study.best_trial
        val, test = best.user_attrs.get("val_metrics", {}), best.user_attrs.get("test_metrics", {})
        lines.append(f"- best: trial {best.number}, " + ", ".join(f"{k}={tables.cell(v)}" for k, v in best.params.items()))
        metrics = pd.DataFrame([{"split": s, **{n: m.get(n, np.nan) for n in REPORTED}} for s, m in (("validation", val), ("test", test))])
        return "## Settings and best trial\n\n" + "\n".join(lines) + "\n\n" + tables.markdown(metrics)
    return "## Settings\n\n" + "\n".join(lines) + "\n"


def _importance_figure(frame: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.45 * len(frame) + 1.4), dpi=110)
    y = np.arange(len(frame))
    columns = [c for c in frame.columns if c != "parameter"]
    height = 0.8 / len(columns)
    for i, column in enumerate(columns):
        ax.barh(y + i * height, frame[column].fillna(0.0), height=height, label=column)
    ax.set_yticks(y + height * (len(columns) - 1) / 2, frame.parameter)
    ax.invert_yaxis()
    ax.set_xlabel("importance")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _history_figure(study: optuna.Study, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = optuna.visualization.matplotlib.plot_optimization_history(study)
    fig = ax.figure
    fig.set_size_inches(7, 4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def _std(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _welch(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or len(b) < 2:
        return math.nan
    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.pvalue)


def _pm(mean: float, std: float) -> str:
    return tables.cell(mean) if math.isnan(std) else f"{tables.cell(mean)} ± {tables.cell(std)}"
