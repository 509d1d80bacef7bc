"""Parameter importances: fANOVA over several forests and PED-ANOVA, conditional parameters over
the trials where they are active, never a silent 0; their table and figure."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from study import tables

MIN_IMPORTANCE_TRIALS = 20  # fANOVA's forest and PED-ANOVA's top quantile say little from fewer
FANOVA_SEEDS = (0, 1, 2, 3, 4)  # random-forest seeds: the spread says how stable the numbers are


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
        return pd.DataFrame(), (
            f"Parameter importances need at least {MIN_IMPORTANCE_TRIALS} complete trials "
            f"(fewer make fANOVA's forests and PED-ANOVA's top quantile noise); this study has {len(complete)}."
        )
    names = list(dict.fromkeys(name for t in complete for name in t.params))
    conditional = [n for n in names if any(n not in t.params for t in complete)]
    groups = [(complete, [n for n in names if n not in conditional], "")]
    rows: dict[str, dict[str, Any]] = {}
    for name in conditional:
        active = [t for t in complete if name in t.params]
        if len(active) >= MIN_IMPORTANCE_TRIALS:
            groups.append((active, [name], f"conditional: over the {len(active)} trials where it is active"))
        else:
            rows[name] = {
                "fanova_mean": np.nan,
                "fanova_std": np.nan,
                "ped_anova": np.nan,
                "trials": len(active),
                "note": f"n/a (conditional): active in {len(active)} trials, fewer than {MIN_IMPORTANCE_TRIALS}",
            }
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for trials, wanted, note in groups:
            if not wanted:
                continue
            subset = optuna.create_study(direction=study.direction)  # in memory: only these trials
            subset.add_trials(trials)
            try:
                fanova = [
                    optuna.importance.get_param_importances(
                        subset, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)
                    )
                    for seed in FANOVA_SEEDS
                ]
                ped = optuna.importance.get_param_importances(
                    subset, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
                )
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


def _importance_display(frame: pd.DataFrame) -> pd.DataFrame:
    """fANOVA as mean ± std; a parameter without a number says why instead of showing 0."""
    missing = frame.fanova_mean.isna()
    return pd.DataFrame(
        {
            "parameter": frame.parameter,
            f"fANOVA (mean ± std, {len(FANOVA_SEEDS)} seeds)": [
                note.split(":")[0] or "n/a" if gap else tables.mean_std(m, s)
                for gap, note, m, s in zip(missing, frame.note, frame.fanova_mean, frame.fanova_std)
            ],
            "PED-ANOVA": [
                note.split(":")[0] or "n/a" if gap else tables.metric(v)
                for gap, note, v in zip(frame.ped_anova.isna(), frame.note, frame.ped_anova)
            ],
            "trials": frame.trials,
            "note": frame.note.replace("", tables.DASH),
        }
    )


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
