"""`study report`: factor, cell and ablation tables, importances, confusion matrices and curves
from the storage.

Reads only the Optuna storage (trial params, values and the user attrs the runner wrote) and
never re-trains. Each table's caption says what it can support: the factor and cell tables map
the search (adaptively sampled, confounded, survivors of pruning); only `ablate`'s study, fresh
seeds shared by every variant, supports a claim that one change matters.
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

from objectives.errors import InputError
from study import figures, stats, tables
from study.report_layout import ReportLayout

ABLATION_SUFFIX = ".ablation"  # `ablate NAME` stores its trials as study NAME.ablation
ABLATION_VERSION = 2  # user attr of an ablation study with fresh, recorded seeds (older ones reused 0..K-1)
RETUNE_SUFFIX = ".retune."  # `ablate --retune` searches variant V in study ABLATION.retune.V
BASELINE = "baseline"  # the ablation variant that is the parent study's best configuration
TEST_METRICS = ("kappa", "accuracy", "balanced_accuracy", "macro_f1")  # all higher-is-better
REPORTED = ("accuracy", "balanced_accuracy", "macro_f1", "kappa")
ABLATION_COLUMNS = ("variant", "metric", "n", "mean", "std", "delta", "ci_low", "ci_high", "p", "p_holm", "p_improve")
SIGNIFICANT = 0.05  # the mark in the ablation table: Holm-adjusted p below this
MIN_IMPORTANCE_TRIALS = 20  # fANOVA's forest and PED-ANOVA's top quantile say little from fewer
FANOVA_SEEDS = (0, 1, 2, 3, 4)  # random-forest seeds: the spread says how stable the numbers are
NUMERIC_BINS = 3
SHORT = {"balanced_accuracy": "bal_acc", "accuracy": "acc", "macro_f1": "f1"}  # column names in tables
_LEVEL_COLUMNS = {"n", "pruned", "failed", "best", "mean", "std", "best_trial",
                  *(f"{split}_{name}" for split in ("val", "test") for name in REPORTED)}  # what `_level_stats` adds
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


def cell_table(frame: pd.DataFrame, maximize: bool, cells: Sequence[str] = ReportLayout().cells) -> pd.DataFrame:
    """One row per combination of the `cells` factors that vary (the study's [report] cells; the
    DR lab's arch x pretrained x loss by default) with its best trial."""
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
    that vary (the study's recorded [report], else the DR defaults: arch x pretrained), by
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
    return ReportLayout.from_record(study.user_attrs.get("report"))


def importance_table(study: optuna.Study) -> tuple[pd.DataFrame, str]:
    """fANOVA (mean and std over `FANOVA_SEEDS` forests) and PED-ANOVA importances, or an empty
    frame and a sentence saying why not; the sentence also carries every warning Optuna gave.

    Optuna evaluates the parameters every complete trial has, so a conditional parameter
    (`fe_epochs`, `focal_gamma`) would vanish or, drawn as 0, look unimportant. Each one is
    evaluated instead over the trials where it is active (a study of just those trials), when
    they are `MIN_IMPORTANCE_TRIALS` or more, and is "n/a (conditional)" otherwise: its number is
    its share among the parameters of that subset, not of the whole study."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return pd.DataFrame(), (f"Parameter importances need at least {MIN_IMPORTANCE_TRIALS} complete trials "
                                f"(fewer make fANOVA's forests and PED-ANOVA's top quantile noise); this study has {len(complete)}.")
    names = list(dict.fromkeys(name for t in complete for name in t.params))
    conditional = [n for n in names if any(n not in t.params for t in complete)]
    groups = [(complete, [n for n in names if n not in conditional], "")]
    rows: dict[str, dict[str, Any]] = {}
    for name in conditional:
        active = [t for t in complete if name in t.params]
        if len(active) >= MIN_IMPORTANCE_TRIALS:
            groups.append((active, [name], f"conditional: over the {len(active)} trials where it is active"))
        else:
            rows[name] = {"fanova_mean": np.nan, "fanova_std": np.nan, "ped_anova": np.nan, "trials": len(active),
                          "note": f"n/a (conditional): active in {len(active)} trials, fewer than {MIN_IMPORTANCE_TRIALS}"}
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for trials, wanted, note in groups:
            if not wanted:
                continue
            subset = optuna.create_study(direction=study.direction)  # in memory: only these trials
            subset.add_trials(trials)
            try:
                fanova = [optuna.importance.get_param_importances(subset, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
                          for seed in FANOVA_SEEDS]
                ped = optuna.importance.get_param_importances(subset, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
            except (RuntimeError, ValueError) as exc:
                notes.append(f"{', '.join(wanted)}: {exc}")
                continue
            for name in wanted:
                runs = np.array([run.get(name, np.nan) for run in fanova], dtype=float)
                rows[name] = {"fanova_mean": float(np.mean(runs)), "fanova_std": float(np.std(runs, ddof=1)),
                              "ped_anova": float(ped.get(name, np.nan)), "trials": len(trials), "note": note}
    warned = list(dict.fromkeys(str(w.message) for w in caught))
    if warned:
        notes.append("Optuna warned: " + " / ".join(warned))
    if not rows:
        return pd.DataFrame(), "Parameter importances could not be computed (" + "; ".join(notes) + ")."
    frame = pd.DataFrame([{"parameter": name, **row} for name, row in rows.items()])
    frame = frame.sort_values("fanova_mean", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    return frame, "; ".join(notes)


def build_report(study: optuna.Study, out: Path, formats: Sequence[str], storage_label: str, ablation: optuna.Study | None = None) -> Report:
    """Write every table and figure of `study` under `out` and return what was written."""
    frame = trial_frame(study)
    if frame.empty:
        raise InputError(f"study {study.study_name} has no finished trials yet; run it first")
    out.mkdir(parents=True, exist_ok=True)
    metric = study.user_attrs.get("metric", "value")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    layout = recorded_layout(study)
    files: list[Path] = []
    sections: list[str] = [_settings_section(study, frame, metric, storage_label)]

    for stale in out.glob("ablation.*"):  # the factor table's old name: left there, it would read as an ablation
        if stale.suffix.lstrip(".") in tables.FORMATS:
            stale.unlink()
    factor = factor_table(frame, factors(study), maximize)
    if not factor.empty:
        caption = (f"Factor levels of {study.study_name}, per level of each sampled parameter: " + _columns_caption(metric)
                   + " A map of the search, not an ablation: the sampler chose the levels adaptively (promising ones get more "
                   "trials), each level mixes different values of the other parameters (confounded), pruned trials are missing "
                   "(survivors only) and the best of a larger n is higher by chance. Compare levels with `ablate`, not with this "
                   "table.")
        files += tables.write(factor, _display(factor, metric), out / "factors", formats, caption)
        sections.append("## Factors (a map of the search, not an ablation)\n\n" + caption + "\n\n" + tables.markdown(_display(factor, metric)))
    cells = cell_table(frame, maximize, layout.cells)
    if not cells.empty:
        caption = (f"Cells of {study.study_name}, per combination of {' x '.join(k for k in layout.cells if k in cells)} (its "
                   f"[report] cells): " + _columns_caption(metric) + " As adaptive and confounded as the factor table; a cell with "
                   "a larger n has had more chances at a high best.")
        files += tables.write(cells, _display(cells, metric), out / "cells", formats, caption)
        sections.append("## Cells\n\n" + caption + "\n\n" + tables.markdown(_display(cells, metric)))

    importance, note = importance_table(study)
    if importance.empty:
        sections.append(f"## Parameter importance\n\n{note}\n")
    else:
        caption = (f"Parameter importances for validation {metric} over {int(importance.trials.max())} complete trials: fANOVA, mean ± std "
                   f"over {len(FANOVA_SEEDS)} random-forest seeds, and PED-ANOVA. A conditional parameter is evaluated over the trials "
                   f"where it is active (its share among the parameters of those trials), or n/a when they are too few; never 0 "
                   f"for missing. Importances describe this search's trials, not the parameter's effect elsewhere.")
        shown = _importance_display(importance)
        files += tables.write(importance, shown, out / "importance", formats, caption)
        files.append(_importance_figure(importance, out / "importance.png"))
        sections.append("## Parameter importance\n\n" + caption + (f" {note}" if note else "") + "\n\n"
                        + tables.markdown(shown) + "\n![importance](importance.png)\n")

    picked = best_trials_per_cell(study, frame, maximize, layout)
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

    if ablation is not None:
        if ablation.user_attrs.get("ablation_version") != ABLATION_VERSION:
            sections.append(f"## Ablation study\n\n{ablation.study_name} was made by an older `ablate` (seeds 0..K-1, possibly the "
                            f"parent's own, compared unpaired) and is not reported; delete it and run `ablate` again.\n")
        elif not any(t.state == TrialState.COMPLETE for t in ablation.get_trials(deepcopy=False)):
            sections.append(f"## Ablation study\n\n{ablation.study_name} has no complete trial yet.\n")
        else:
            table, display, caption = ablation_table(ablation)
            files += tables.write(table, display, out / "ablation_study", formats, caption)
            sections.append("## Ablation study\n\n" + caption + "\n\n" + tables.markdown(display))

    markdown = f"# Study {study.study_name}\n\n" + "\n".join(sections)
    report_path = out / "report.md"
    report_path.write_text(markdown)
    summary = sections[0] + ("\n## Factors\n\n" + tables.markdown(_display(factor, metric)) if not factor.empty else "")
    return Report(out, report_path, tuple([report_path, *files]), summary)


def ablation_metrics(metric: str) -> list[str]:
    """The metrics of an ablation table, headline first: the test version of the study's metric
    (test kappa where that is not a test metric), the other test metrics, then validation."""
    head = metric if metric in TEST_METRICS else "kappa"
    return [f"test_{head}", *(f"test_{m}" for m in TEST_METRICS if m != head), f"val_{metric}"]


def ablation_frame(study: optuna.Study) -> pd.DataFrame:
    """The ablation study as `ABLATION_COLUMNS`, one row per variant and metric.

    One-at-a-time: each variant's n, mean and std over its seeds; its difference to the baseline
    paired by seed, with the t interval, the paired test's p, the Holm-adjusted p (family: one
    metric across the non-baseline variants) and p_improve; the baseline's delta is 0 and its
    contrast columns empty. Factorial: the cells (n, mean, std) and then the main effects and
    interactions (`stats.factorial_effects`), Holm over those effect rows."""
    attrs = study.user_attrs
    names = list(attrs["variants"])
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    blocks = []
    for metric in ablation_metrics(attrs["metric"]):
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE if metric.startswith("val_") else True
        arms = {name: {int(t.params["seed"]): _ablation_value(t, metric) for t in complete if t.params.get("variant") == name} for name in names}
        if attrs.get("mode") == "factorial":
            rows = [_row(name, metric, stats.summarize(arms[name])) for name in names]
            factors = attrs["factors"]
            levels = {f: list(dict.fromkeys(attrs["levels"][name][f] for name in names)) for f in factors}
            cells = {tuple(attrs["levels"][name][f] for f in factors): arms[name] for name in names}
            effects = stats.factorial_effects(cells, factors, levels, attrs["levels"][attrs["baseline"]], maximize=maximize)
            tested = [_row(e.name, metric, e.summary or stats.Summary(e.contrast.n, math.nan, math.nan), e.contrast) for e in effects]
        else:
            base = arms[attrs["baseline"]]
            rows = [{**_row(attrs["baseline"], metric, stats.summarize(base)), "delta": 0.0}]
            tested = [_row(name, metric, stats.summarize(arms[name]), stats.paired(arms[name], base, maximize=maximize))
                      for name in names if name != attrs["baseline"]]
        for row, adjusted in zip(tested, stats.holm([row["p"] for row in tested])):
            row["p_holm"] = adjusted
        blocks.append(pd.DataFrame(rows + tested, columns=list(ABLATION_COLUMNS)))
    frame = pd.concat(blocks, ignore_index=True)
    order = {name: i for i, name in enumerate(dict.fromkeys(frame.variant))}
    metrics = {m: i for i, m in enumerate(ablation_metrics(attrs["metric"]))}
    return frame.sort_values(["variant", "metric"], key=lambda c: c.map(order if c.name == "variant" else metrics),
                             kind="stable").reset_index(drop=True)


def ablation_table(study: optuna.Study) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The ablation study's raw rows (`ablation_frame`), the wide table a reader sees (per
    variant: mean ± std and delta [95 % CI] of the headline metrics, a * where p_holm < 0.05)
    and a caption that says what the table can and cannot support."""
    attrs = study.user_attrs
    table = ablation_frame(study)
    metric = attrs["metric"]
    headline = ablation_metrics(metric)[0]
    retune = attrs.get("retune")
    rows = []
    for name, group in table.groupby("variant", sort=False):
        # the page: the headline test metric with its paired difference, validation beside it (its
        # difference is in the CSV, with every other metric: validation chose the baseline)
        by_metric = group.set_index("metric")
        test, val = by_metric.loc[headline], by_metric.loc[f"val_{metric}"]
        reference = name == attrs["baseline"] and attrs.get("mode") != "factorial"
        share = test["p_improve"]
        row: dict[str, Any] = {"variant": name, "n": int(test["n"]),
                               _metric_label(headline): tables.mean_std(test["mean"], test["std"]),
                               "Δ [95% CI]": _delta_text(test, reference),
                               "P(better)": tables.DASH if pd.isna(share) else f"{share:.2f}",
                               _metric_label(f"val_{metric}"): tables.mean_std(val["mean"], val["std"])}
        if retune:
            picked = (attrs.get("retuned") or {}).get(name, "–")
            row[f"{retune['param']} (retuned)"] = "inactive" if picked is None else picked
        rows.append(row)
    return table, pd.DataFrame(rows), _ablation_caption(study, table, headline)


def _ablation_value(trial: FrozenTrial, metric: str) -> float:
    if metric.startswith("val_"):
        return float(trial.value)
    return float(trial.user_attrs.get("test_metrics", {}).get(metric.removeprefix("test_"), np.nan))


def _row(variant: str, metric: str, summary: stats.Summary, contrast: stats.Contrast | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": variant, "metric": metric, "n": summary.n, "mean": summary.mean, "std": summary.std}
    if contrast is not None:
        row.update(delta=contrast.delta, ci_low=contrast.ci_low, ci_high=contrast.ci_high, p=contrast.p, p_improve=contrast.p_improve)
    return row


def _delta_text(row: pd.Series, baseline: bool) -> str:
    if baseline:
        return "reference"
    if pd.isna(row["delta"]):
        return tables.DASH
    mark = "*" if row["p_holm"] < SIGNIFICANT else ""
    interval = "" if pd.isna(row["ci_low"]) else f" [{tables.metric(row['ci_low'], True)}, {tables.metric(row['ci_high'], True)}]"
    return f"{tables.metric(row['delta'], True)}{interval}{mark}"


def _metric_label(metric: str) -> str:
    split, _, name = metric.partition("_")
    return f"{split} {_shorten(name, SHORT)}"


def _ablation_caption(study: optuna.Study, table: pd.DataFrame, headline: str) -> str:
    attrs = study.user_attrs
    seeds = attrs["seeds"]
    parent, baseline = attrs.get("parent", "?"), attrs["baseline"]
    metrics = sorted(set(table.metric), key=ablation_metrics(attrs["metric"]).index)
    common = (f"Every variant ran the same {len(seeds)} fresh seeds ({', '.join(map(str, seeds))}; none used by {parent}); seed s sets "
              f"the initialisation, batch order, augmentation and the validation split, never the test set. Mean ± std over seeds; "
              f"Δ and P(better) are on {_metric_label(headline)}. ")
    if attrs.get("mode") == "factorial":
        reference = ", ".join(f"{f}={v}" for f, v in attrs["levels"][baseline].items())
        text = (f"Factorial ablation of {parent} over {' x '.join(attrs['factors'])} (every other parameter at its best trial's value). "
                + common + f"Rows main:f=l: the level's marginal mean over the other factors' cells; Δ = that minus the reference "
                f"level's ({reference}, the best trial's), computed per seed and then paired across seeds with the 95 % t interval. "
                f"Rows interaction:f x g: Δ = y11 - y10 - y01 + y00 per seed (0 = reference level), its mean and 95 % t interval. "
                f"* = Holm-adjusted paired t-test p < {SIGNIFICANT} (family: one metric across the effect rows). Cell rows have no test.")
    else:
        text = (f"Ablation of {parent}: its best trial's configuration (baseline) with one factor changed at a time; parentheses name "
                f"the parameters that change with it. " + common + f"Δ = variant - baseline, paired by seed (only seeds both "
                f"finished), with the 95 % t interval of the paired differences; * = Holm-adjusted paired t-test p < {SIGNIFICANT} "
                f"(family: one metric across the {len(attrs['variants']) - 1} variants). P(better) = share of seeds on which the "
                f"variant beats the baseline (ties count one half).")
    text += (" Test metrics are the headline: validation chose the baseline, so validation differences are biased in its favour "
             "(the table shows validation's mean ± std only; the CSV has every metric's difference).")
    retune = attrs.get("retune")
    if retune:
        text += (f" {retune['param']} was retuned for every variant, the baseline included, on validation: the same "
                 f"{len(retune['candidates'])} candidates ({', '.join(tables.cell(c) for c in retune['candidates'])}) on tuning seeds "
                 f"disjoint from the evaluation seeds; the column gives each variant's pick. The other parameters keep the baseline's values.")
    else:
        shared = {k: v for k, v in attrs["variants"][baseline].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        text += (" No parameter was retuned: the variants share the baseline's values of the other parameters"
                 + (f" ({', '.join(f'{k} {tables.cell(v)}' for k, v in shared.items())})" if shared else "")
                 + ", tuned for the baseline, so a variant may lose for want of its own (see ablate --retune).")
    missing = _missing_seeds(study)
    if missing:
        text += " Not finished, so not paired: " + "; ".join(f"{name} seed {', '.join(map(str, s))}" for name, s in missing.items()) + "."
    claim = ("a factor's level, averaged over the other factors' levels here, or two factors' interaction"
             if attrs.get("mode") == "factorial" else "this change to this configuration")
    text += (f" Supports: whether {claim} moves {_metric_label(headline)} beyond seed-to-seed noise on "
             f"this dataset. Does not support: that a factor does not matter (a wide interval is not evidence of no effect), nor "
             f"effects at other configurations, datasets or budgets. The CSV holds every metric ({', '.join(metrics)}) with p, "
             f"p_holm and p_improve.")
    return text


def _missing_seeds(study: optuna.Study) -> dict[str, list[int]]:
    done = {(t.params.get("variant"), t.params.get("seed")) for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE}
    missing = {name: [s for s in study.user_attrs["seeds"] if (name, s) not in done] for name in study.user_attrs["variants"]}
    return {name: seeds for name, seeds in missing.items() if seeds}


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
        for split in ("val", "test"):
            for name in REPORTED:
                result[f"{split}_{name}"] = float(best[f"{split}_{name}"])
    else:
        result.update({f"{s}_{n}": np.nan for s in ("val", "test") for n in REPORTED})
    return result


def _columns_caption(metric: str) -> str:
    """What the columns of `_display` hold, for the captions of the factor and cell tables."""
    headline = _metric_label(ablation_metrics(metric)[0])
    return (f"n (pr., f.) = complete trials (pruned, failed); {headline} = the row's best trial (chosen on validation) on "
            f"test; best val (#) = that trial's validation {metric} and its number; val mean ± std = validation {metric} "
            f"over the row's complete trials. The CSV has every metric of the best trial, validation and test.")


def _display(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The page view of a factor or cell table: its keys, n complete (pruned, failed), the headline
    test metric of the row's best trial, then that trial's validation value with its number,
    `0.612 (#7)`, and the rows' validation mean ± std: narrow enough for a page, every metric at
    one precision, short headers (the caption spells them out). The CSV keeps every column."""
    headline = ablation_metrics(metric)[0]
    keys = [c for c in frame.columns if c not in _LEVEL_COLUMNS]
    shown = frame[keys].copy()
    shown["n (pr., f.)"] = [f"{n} ({p}, {f})" for n, p, f in zip(frame.n, frame.pruned, frame.failed)]
    shown[_metric_label(headline)] = frame[headline].map(tables.metric)
    shown["best val (#)"] = [tables.DASH if pd.isna(b) else f"{tables.metric(b)} (#{int(t)})"
                             for b, t in zip(frame.best, frame.best_trial)]
    shown["val mean ± std"] = [tables.mean_std(m, s) for m, s in zip(frame["mean"], frame["std"])]
    return shown


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
        metrics = pd.DataFrame([{"split": s, **{_shorten(n, SHORT): tables.metric(m.get(n, np.nan)) for n in REPORTED}}
                                for s, m in (("validation", val), ("test", test))])
        return "## Settings and best trial\n\n" + "\n".join(lines) + "\n\n" + tables.markdown(metrics)
    return "## Settings\n\n" + "\n".join(lines) + "\n"


def _importance_display(frame: pd.DataFrame) -> pd.DataFrame:
    """fANOVA as mean ± std; a parameter without a number says why instead of showing 0."""
    missing = frame.fanova_mean.isna()
    return pd.DataFrame({
        "parameter": frame.parameter,
        f"fANOVA (mean ± std, {len(FANOVA_SEEDS)} seeds)": [note.split(":")[0] or "n/a" if gap else tables.mean_std(m, s)
                                                         for gap, note, m, s in zip(missing, frame.note, frame.fanova_mean, frame.fanova_std)],
        "PED-ANOVA": [note.split(":")[0] or "n/a" if gap else tables.metric(v) for gap, note, v in zip(frame.ped_anova.isna(), frame.note, frame.ped_anova)],
        "trials": frame.trials,
        "note": frame.note.replace("", tables.DASH),
    })


def _importance_figure(frame: pd.DataFrame, path: Path) -> Path:
    """fANOVA (with its std over forests as error bars) and PED-ANOVA per parameter; a parameter
    without a number is labelled n/a, never drawn as a 0 bar."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(frame) + 1.4), dpi=110)
    y = np.arange(len(frame))
    height = 0.4
    ax.barh(y, frame.fanova_mean, height=height, xerr=frame.fanova_std, capsize=3,
            label=f"fANOVA (mean ± std, {len(FANOVA_SEEDS)} seeds)")
    ax.barh(y + height, frame.ped_anova, height=height, label="PED-ANOVA")
    for i, gap in enumerate(frame.fanova_mean.isna()):
        if gap:
            ax.text(0.0, i + height / 2, " n/a (conditional)", va="center", fontsize=8, color="gray")
    ax.set_yticks(y + height / 2, frame.parameter)
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
