"""The ablation study's table: per variant and metric the mean over seeds, the paired difference to
the baseline (or the factorial effects) with its interval, p and Holm-adjusted p, and a caption
that says what the table can and cannot support."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from objectives.metrics import TABLE_METRICS, headline, headline_first, higher_is_better
from study import tables
from study.records import (
    CANDIDATES,
    PARAM,
    RETUNE_SEEDS,
    SEED,
    TUNING_SEEDS,
    VARIANT,
    AblationRecord,
    TrialRecord,
    complete_value,
    is_trial_failure,
)
from study.report import ablation_intervals, stats
from study.report.frames import metric_label

ABLATION_COLUMNS = ("variant", "metric", "n", "mean", "std", "delta", "ci_low", "ci_high", "p", "p_holm", "p_improve",
                    "failed", "missing", "p_holm_worst", "star", "covers", "note")
SEEDS_AND_PATIENTS = "seeds+patients"  # `covers`: a test Δ's interval over seeds and test patients
SEEDS_ONLY = "seeds"  # `covers`: the paired t over seeds (validation; a test Δ without stored predictions)
SIGNIFICANT = 0.05  # the mark in the ablation table: Holm-adjusted p below this


def ablation_metrics(metric: str) -> list[str]:
    """The metrics of an ablation table, headline first: the test version of the study's metric
    (test kappa where that is not a test metric), the other test metrics, then validation."""
    return [*(f"test_{m}" for m in headline_first(headline(metric)) if m in TABLE_METRICS), f"val_{metric}"]


def seed_outcomes(study: optuna.Study, plan: AblationRecord) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per variant, its failed seeds (no complete trial, a failure of the trial's own:
    `records.is_trial_failure`, e.g. nan_loss) and its missing seeds (no complete trial and no
    such failure: not run yet, or failed for the infrastructure's reason and not re-run)."""
    trials = study.get_trials(deepcopy=False)
    done = {(t.params.get(VARIANT), t.params.get(SEED)) for t in trials if t.state == TrialState.COMPLETE}
    own = {(t.params.get(VARIANT), t.params.get(SEED)) for t in trials
           if t.state == TrialState.FAIL and is_trial_failure(TrialRecord.from_trial(t).fail_reason)}
    failed = {n: [s for s in plan.seeds if (n, s) not in done and (n, s) in own] for n in plan.variants}
    missing = {n: [s for s in plan.seeds if (n, s) not in done and (n, s) not in own] for n in plan.variants}
    return failed, missing


def worst_filled(arms: dict[str, dict[int, float]], failed: dict[str, list[int]], *,
                 maximize: bool) -> dict[str, dict[int, float]]:
    """`arms` with every failed seed scored at the worst value observed for the metric anywhere in
    the ablation (the minimum where higher is better): the star rule's test that a variant's
    advantage does not rest on dropping the seeds where it diverged (survivor bias)."""
    observed = [v for arm in arms.values() for v in arm.values() if math.isfinite(v)]
    if not observed:
        return arms
    worst = min(observed) if maximize else max(observed)
    return {name: {**arm, **{s: worst for s in failed.get(name, [])}} for name, arm in arms.items()}


def starred(p_holm: float, p_holm_worst: float, delta: float, delta_worst: float, failed: int, missing: int) -> bool:
    """The `*` of a contrast: Holm-adjusted p below `SIGNIFICANT`; with failed seeds in its arms,
    only if it also holds (same sign, Holm p below the mark) with the failures scored at the worst
    value; never with a missing cell (an infrastructure failure not re-run: its seed is not
    missing at random, e.g. a larger model's out-of-memory)."""
    if missing or not p_holm < SIGNIFICANT:
        return False
    if failed:
        return bool(p_holm_worst < SIGNIFICANT and np.sign(delta_worst) == np.sign(delta))
    return True


STAR_RULES = (
    "; a star also needs every seed present in both arms, and where a seed failed (the loss diverged) the "
    "result must hold with it scored at the worst value observed in the ablation. "
)


def ablation_frame(study: optuna.Study) -> pd.DataFrame:
    """The ablation study as `ABLATION_COLUMNS`, one row per variant and metric.

    One-at-a-time: each variant's n, mean and std over its seeds; its difference to the baseline
    paired by seed, with the t interval, the paired test's p, the Holm-adjusted p (family: one
    metric across the non-baseline variants) and p_improve; the baseline's delta is 0 and its
    contrast columns empty. Factorial: the cells (n, mean, std) and then the main effects and
    interactions (`stats.factorial_effects`), Holm over those effect rows.

    Every row also counts its failed and missing seeds (`seed_outcomes`; an effect row: those of
    all cells), gives the Holm p of the same family with failures scored at the worst value
    (`worst_filled`) and whether it earns the `*` (`starred`)."""
    plan = AblationRecord.from_study(study)
    names = list(plan.variants)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    failed, missing = seed_outcomes(study, plan)
    by_arm: dict[str, dict[int, FrozenTrial]] = {name: {} for name in names}
    for t in complete:
        if t.params.get(VARIANT) in by_arm:
            by_arm[t.params[VARIANT]][int(t.params[SEED])] = t
    test_metrics = [m.removeprefix("test_") for m in ablation_metrics(plan.metric) if m.startswith("test_")]
    replicates = ablation_intervals.test_replicates(study, by_arm, test_metrics)
    blocks = []
    for metric in ablation_metrics(plan.metric):
        if metric.startswith("val_"):
            maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        else:
            maximize = higher_is_better(metric.removeprefix("test_"))
        arms = {name: {seed: _ablation_value(t, metric) for seed, t in by_arm[name].items()} for name in names}
        filled = worst_filled(arms, failed, maximize=maximize)
        found = None if metric.startswith("val_") or replicates is None else replicates[metric.removeprefix("test_")]
        covers = SEEDS_ONLY if found is None else SEEDS_AND_PATIENTS
        if plan.factorial:
            rows = [{**_row(name, metric, stats.summarize(arms[name])), "failed": len(failed[name]),
                     "missing": len(missing[name])} for name in names]
            factors = plan.factors
            levels = {f: list(dict.fromkeys(plan.levels[name][f] for name in names)) for f in factors}
            reference = plan.levels[plan.baseline]
            cells = {tuple(plan.levels[name][f] for f in factors): name for name in names}

            def effects_of(values: dict[str, dict[int, float]], found: ablation_intervals.Replicates | None
                           ) -> list[tuple[stats.Effect, stats.Contrast]]:
                effects = stats.factorial_effects({cell: values[name] for cell, name in cells.items()}, factors,
                                                  levels, reference, maximize=maximize)
                if found is None:
                    return [(e, e.contrast) for e in effects]
                wide = ablation_intervals.factorial_intervals(found, cells, factors, levels, reference)
                return [(e, wide.get(e.name, e.contrast)) for e in effects]

            effects = effects_of(arms, found)
            tested = [
                {**_row(e.name, metric, e.summary or stats.Summary(e.contrast.n, math.nan, math.nan), contrast),
                 "failed": sum(len(v) for v in failed.values()), "missing": sum(len(v) for v in missing.values())}
                for e, contrast in effects
            ]
            worst = [c for _, c in effects_of(filled, found and found.filled(failed, filled))]
        else:
            base = arms[plan.baseline]
            rows = [{**_row(plan.baseline, metric, stats.summarize(base)), "delta": 0.0,
                     "failed": len(failed[plan.baseline]), "missing": len(missing[plan.baseline])}]
            others = [name for name in names if name != plan.baseline]

            def contrast(values: dict[str, dict[int, float]], found: ablation_intervals.Replicates | None,
                         name: str) -> stats.Contrast:
                if found is None:
                    return stats.paired(values[name], values[plan.baseline], maximize=maximize)
                return ablation_intervals.paired_interval(found, name, plan.baseline, maximize=maximize)

            tested = [{**_row(name, metric, stats.summarize(arms[name]), contrast(arms, found, name)),
                       "failed": len(failed[name]) + len(failed[plan.baseline]),
                       "missing": len(missing[name]) + len(missing[plan.baseline])} for name in others]
            worst = [contrast(filled, found and found.filled(failed, filled), name) for name in others]
        for row in tested:
            row["covers"] = covers
        for row, adjusted in zip(tested, stats.holm([row["p"] for row in tested])):
            row["p_holm"] = adjusted
        for row, contrast_, adjusted in zip(tested, worst, stats.holm([c.p for c in worst])):
            row["p_holm_worst"] = adjusted
            row["star"] = starred(row["p_holm"], adjusted, row["delta"], contrast_.delta, row["failed"],
                                  row["missing"])
        blocks.append(pd.DataFrame(rows + tested, columns=list(ABLATION_COLUMNS)))
    frame = pd.concat(blocks, ignore_index=True)
    order = {name: i for i, name in enumerate(dict.fromkeys(frame.variant))}
    metrics = {m: i for i, m in enumerate(ablation_metrics(plan.metric))}
    return frame.sort_values(["variant", "metric"], key=lambda c: c.map(order if c.name == "variant" else metrics),
                             kind="stable").reset_index(drop=True)


def ablation_table(study: optuna.Study) -> tuple[pd.DataFrame, pd.DataFrame, tables.Caption]:
    """The ablation study's raw rows (`ablation_frame`), the wide table a reader sees (per
    variant: mean ± std and delta [95 % CI] of the headline metrics, a * where `starred`; a
    `failed` column where some variant has failed seeds, so a table without failures keeps its
    width) and a caption that says what the table can and cannot support."""
    plan = AblationRecord.from_study(study)
    table = ablation_frame(study)
    failed, _ = seed_outcomes(study, plan)
    metric = plan.metric
    headline = ablation_metrics(metric)[0]
    retune = plan.retune
    rows = []
    for name, group in table.groupby("variant", sort=False):
        # the page: the headline test metric with its paired difference, validation beside it (its
        # difference is in the CSV, with every other metric: validation chose the baseline)
        by_metric = group.set_index("metric")
        test, val = by_metric.loc[headline], by_metric.loc[f"val_{metric}"]
        share = test["p_improve"]
        row: dict[str, Any] = {"variant": name, "n": int(test["n"]),
                               **({"failed": _failed_text(failed[name])} if any(failed.values()) else {}),
                               metric_label(headline): tables.mean_std(test["mean"], test["std"]),
                               "Δ [95% CI]": _delta_text(test, name == plan.baseline and not plan.factorial),
                               "P(better)": tables.DASH if pd.isna(share) else f"{share:.2f}",
                               metric_label(f"val_{metric}"): tables.mean_std(val["mean"], val["std"])}
        if retune:
            picked = (plan.retuned or {}).get(name, "–")
            row[f"{retune[PARAM]} (retuned)"] = "inactive" if picked is None else picked
        rows.append(row)
    return table, pd.DataFrame(rows), _ablation_caption(study, table, headline)


def _ablation_value(trial: FrozenTrial, metric: str) -> float:
    if metric.startswith("val_"):
        return complete_value(trial)
    return float(TrialRecord.from_trial(trial).test_metrics.get(metric.removeprefix("test_"), np.nan))


def _row(variant: str, metric: str, summary: stats.Summary, contrast: stats.Contrast | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "variant": variant,
        "metric": metric,
        "n": summary.n,
        "mean": summary.mean,
        "std": summary.std,
    }
    if contrast is not None:
        row.update(
            delta=contrast.delta,
            ci_low=contrast.ci_low,
            ci_high=contrast.ci_high,
            p=contrast.p,
            p_improve=contrast.p_improve,
            note=contrast.note or None,
        )
    return row


def _failed_text(seeds: list[int]) -> str:
    """A variant's failed seeds as the table shows them: ``0`` or ``1 (seed 1003)``."""
    return f"{len(seeds)} (seed {', '.join(map(str, seeds))})" if seeds else "0"


def _delta_text(row: pd.Series, baseline: bool) -> str:
    if baseline:
        return "reference"
    if pd.isna(row["delta"]):
        return tables.DASH
    mark = "*" if isinstance(row["star"], (bool, np.bool_)) and row["star"] else ""
    low, high = tables.metric(row["ci_low"], signed=True), tables.metric(row["ci_high"], signed=True)
    if isinstance(row["note"], str):
        interval = f" ({row['note']})"  # e.g. a constant difference: no interval to show
    else:
        interval = "" if pd.isna(row["ci_low"]) else f" [{low}, {high}]"
    return f"{tables.metric(row['delta'], signed=True)}{interval}{mark}"


def _ablation_caption(study: optuna.Study, table: pd.DataFrame, headline: str) -> tables.Caption:
    """Three sentences a paper can use (what was compared over which seeds, what Δ, the interval
    and the star are, what the table supports), and the notes that qualify these numbers: the
    seeds' reach, what the intervals cover, the retuning, the loss confound, constant differences,
    failed and missing seeds. The full explanation is docs/reports.md, "What the tables mean"."""
    plan = AblationRecord.from_study(study)
    seeds = plan.seeds
    parent = plan.parent or "?"
    metrics = sorted(set(table.metric), key=ablation_metrics(plan.metric).index)
    label = metric_label(headline)
    patients = _covers_patients(table)
    covers, noise = ("seeds and test patients", "seed and test-set noise") if patients else ("seeds only", "seed noise")
    if plan.factorial:
        what = (f"Factorial ablation of {parent} over {' x '.join(plan.factors)}, every cell trained on the same "
                f"{len(seeds)} fresh seeds (mean ± std). Δ: a level's main effect or an interaction in {label}, "
                f"paired by seed, 95 % CI over {covers}; *: Holm-adjusted p < {SIGNIFICANT}. ")
    else:
        what = (f"Ablation of {parent}: one factor changed at a time from its best configuration, every variant "
                f"trained on the same {len(seeds)} fresh seeds (mean ± std). Δ: variant - baseline in {label}, paired "
                f"by seed, 95 % CI over {covers}; *: Holm-adjusted p < {SIGNIFICANT}. ")
    text = (what + f"Supports effects beyond {noise} on this dataset, not their absence nor other settings "
            "(notes below).")
    return tables.Caption(text, tuple(_ablation_notes(study, plan, table, metrics)))


def _covers_patients(table: pd.DataFrame) -> bool:
    """Whether every test Δ's interval covers the test patients too (`covers` is seeds+patients)."""
    test = table[table.metric.str.startswith("test_") & table.covers.notna()]
    return not test.empty and bool((test.covers == SEEDS_AND_PATIENTS).all())


def _ablation_notes(study: optuna.Study, plan: AblationRecord, table: pd.DataFrame, metrics: list[str]) -> list[str]:
    """Each caveat of this ablation's numbers, one note each (see `_ablation_caption`)."""
    parent, baseline = plan.parent or "?", plan.baseline
    if plan.split_per_seed is None:  # version 2: as it ran
        split = "and, where the TOML named split_seed, the validation split"
    elif plan.split_per_seed:
        split = "and the validation split"
    else:
        split = "but not the validation split (the objective has no split_seed: one split for every seed)"
    notes = [f"Seeds {', '.join(map(str, plan.seeds))} (none used by {parent}) set the initialisation, batch "
             f"order, augmentation {split}, never the test set; only seeds both arms finished are paired."]
    if plan.factorial:
        reference = ", ".join(f"{f}={v}" for f, v in plan.levels[baseline].items())
        notes.append(f"Rows main:f=l: the level's marginal mean over the other factors' cells minus the reference "
                     f"level's ({reference}, the best trial's), per seed; rows interaction:f x g: y11 - y10 - y01 + "
                     "y00 per seed (0 = reference level); the Holm family is one metric across the effect rows. "
                     "Cell rows have no test.")
    else:
        notes.append(f"Every other parameter keeps the baseline's value; parentheses name the parameters that change "
                     f"with a variant. The Holm family is one metric across the {len(plan.variants) - 1} variants; "
                     "P(better) = share of seeds on which the variant beats the baseline (ties count one half).")
    notes.append(_interval_text(table))
    notes.append("Test metrics are the headline: validation chose the baseline, so validation differences are "
                 "biased in its favour (the table shows validation's mean ± std only; the CSV has every metric's "
                 "difference).")
    retune = plan.retune
    if retune:
        tuning = len(retune.get(TUNING_SEEDS, []))
        how = (f"each on the same {tuning} tuning seeds, picked by the mean validation value ({tuning} x "
               f"{len(retune[CANDIDATES])} trials per variant)" if RETUNE_SEEDS in retune else
               "each on one tuning seed of its own (version 2: the pick partly reflects which seed drew an easy "
               "validation split)")
        notes.append(
            f"{retune[PARAM]} was retuned for every variant, the baseline included, on validation: the same "
            f"{len(retune[CANDIDATES])} candidates ({', '.join(tables.cell(c) for c in retune[CANDIDATES])}), "
            f"{how}, on tuning seeds disjoint from the evaluation seeds; the column gives each variant's pick. The "
            "other parameters keep the baseline's values.")
    else:
        shared = {
            k: v for k, v in plan.variants[baseline].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        notes.append("No parameter was retuned: the variants share the baseline's values of the other parameters"
                     + (f" ({', '.join(f'{k} {tables.cell(v)}' for k, v in shared.items())})" if shared else "")
                     + ", tuned for the baseline, so a variant may lose for want of its own (see ablate --retune).")
    if changes_loss(plan):
        notes.append(loss_confound(plan))
    if table.note.notna().any():
        notes.append("Rows marked (constant difference): every seed gave the same non-zero Δ, so the t-test has no "
                     "spread to work with (p and the interval are left empty, and no star): with this few seeds and "
                     "a metric in coarse steps, a constant difference is not certainty.")
    failed, missing = seed_outcomes(study, plan)
    if any(failed.values()):
        notes.append("Failed = seeds whose training failed for a reason of the variant (the loss diverged): "
                     + "; ".join(f"{name} seed {', '.join(map(str, s))}" for name, s in failed.items() if s)
                     + "; they are not in the pairing, and the star needs the result to hold with them scored at "
                     "the worst value observed in this ablation.")
    missing = {name: seeds for name, seeds in missing.items() if seeds}
    if missing:
        notes.append("Not finished (a failure of the machine not re-run yet, or not run), so not paired, and no "
                     "star for a contrast that needs them: "
                     + "; ".join(f"{name} seed {', '.join(map(str, s))}" for name, s in missing.items()) + ".")
    notes.append("A wide interval is not evidence of no effect. The CSV holds every metric "
                 f"({', '.join(metrics)}) with p, p_holm and p_improve; docs/reports.md, \"What the tables mean\", "
                 "explains every column.")
    return notes


def changes_loss(plan: AblationRecord) -> bool:
    """Whether some variant (or factor) changes a setting of the loss (the objective's
    `Roles.loss`, as the plan recorded it) against the baseline."""
    loss, _ = plan.loss_roles()
    base = plan.variants[plan.baseline]
    if plan.factorial:
        return any(f in loss for f in plan.factors)
    return any(values.get(p) != base.get(p) for values in plan.variants.values() for p in loss)


def loss_confound(plan: AblationRecord) -> str:
    """The caption's sentence on a loss contrast: the loss also sets the effective step size
    (the objective's `Roles.step_size`), unless that was retuned per variant."""
    _, step = plan.loss_roles()
    text = ("A change of loss also changes the effective step size: focal loss scales the cross-entropy gradient by "
            "about (1 - p_t)^gamma, so at p_t = 0.9 its gradient is ~3 % of CE's, and at one learning rate the "
            "effective step sizes differ 5-35x over training.")
    retune = plan.retune
    if retune and step is not None and retune.get(PARAM) == step:
        return text + f" {step} was retuned for every variant, which removes most of that confound."
    return text + (" The learning rate was not retuned per variant, so Δ mixes the loss with the step size"
                   + (f"; run ablate --retune {step} to separate them." if step is not None else "."))


def _interval_text(table: pd.DataFrame) -> str:
    """What the Δ intervals of the table cover, from its `covers` column."""
    if _covers_patients(table):
        return ("The intervals and p of test Δ cover two sources of uncertainty: the seeds (paired) and the test "
                f"patients (a cluster bootstrap of the test split's patients, {ablation_intervals.RESAMPLES} "
                "resamples, each arm and seed rescored on the same resampled patients; variance components with a "
                "Welch-Satterthwaite t). They do not cover drawing another training set: the table speaks for the "
                "population this test set was sampled from. Validation Δ (CSV) use the paired t over seeds (the "
                "validation split varies with the seed).")
    return ("The intervals and p cover the seeds only (paired t): the trials stored no per-image test predictions "
            "(an older run), so this test set is treated as the population and every test Δ shares its luck; stars "
            "are optimistic (11-21 % false positives in simulated null ablations).")
