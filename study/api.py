"""The notebook API: a study's trials as one flat pandas frame, and the report's tables and figures
on a study object.

    from study import load_trials
    trials = load_trials("dr_focal")                 # results/optuna.db
    done = trials[trials.state == "COMPLETE"]
    done.plot.scatter("val_kappa", "test_kappa")

Everything here reads the storage only; nothing trains. `optuna.trial.FrozenTrial` keeps the
metrics as nested dicts in user attributes; these frames flatten them, one column per number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the imports a notebook pays for when it calls a function, not when it imports `study`
    import optuna
    import pandas as pd

    from study.records import AblationValues
    from study.report.build import Report

    StorageArg = str | optuna.storages.BaseStorage | None  # a URL, a storage object, or None: `storage.resolve`

FIRST = ("number", "state", "value")  # the leading columns; then params, then the trial's record


def open_study(name: str, storage: StorageArg = None,
               results: str | Path = "results") -> optuna.Study:
    """The Optuna study `name` in `storage`: a storage URL, an Optuna storage object (used as it
    is: e.g. `optuna.storages.JournalStorage`), or by default $STUDY_STORAGE, else the results
    folder's SQLite file (`study.storage.resolve`, as the CLI). A missing file or an unknown name
    raises `InputError` with one line saying which."""
    from study import storage as storages

    where = storages.resolve(storage, results=results, origin=storages.ARGUMENT)
    storages.require_file(where, " (or pass storage=URL)")
    return storages.load_study(name, storages.open_storage(where, existing=True))


def load_trials(name: str | optuna.Study, storage: StorageArg = None, results: str | Path = "results") -> pd.DataFrame:
    """One row per finished trial of the study: `number, state, value`, one column per sampled
    parameter (NaN in a trial where it was not active: `focal_gamma` of a cross-entropy trial),
    `best_epoch, seconds, fail_reason`, then `val_<metric>` and `test_<metric>` for every metric
    the trial recorded (`val_kappa`, `test_kappa`, `test_recall_<class>`, ...). Running and waiting
    trials are left out: they have nothing to show yet. Each test metric's 95 % patient-bootstrap
    interval, recorded when the trial ended, is `test_<metric>_low` / `test_<metric>_high` (NaN
    for an older trial that recorded none)."""
    from study.records import RECORD_COLUMNS

    study = _study(name, storage, results)
    trials = _finished(study)
    params = list(dict.fromkeys(p for t in trials for p in t.params))
    rows = [{**_head(t), **{p: t.params.get(p, math.nan) for p in params}, **_record(t)} for t in trials]
    return _frame(rows, [*FIRST, *params, *RECORD_COLUMNS])


def load_ablation(name: str | optuna.Study, storage: StorageArg = None,
                  results: str | Path = "results") -> pd.DataFrame:
    """One row per trained seed of an ablation: `number, state, value, variant, seed`, the
    variant's parameters (NaN where inactive in that variant; a retuned parameter at the value
    its retune picked), then the trial's record as in `load_trials`. `name` is the ablation study
    (`dr_focal.ablation`, or the name given to `ablate --study-name`) or its parent (`dr_focal`)."""
    from study.records import RECORD_COLUMNS, SEED, VARIANT

    study, plan = _ablation_study(name, storage, results)
    params = plan.params()
    rows = []
    for t in _finished(study):
        variant = t.params.get(VARIANT)
        values = plan.values(variant)
        rows.append({**_head(t), VARIANT: variant, SEED: t.params.get(SEED),
                     **{p: values.get(p, math.nan) for p in params}, **_record(t)})
    return _frame(rows, [*FIRST, VARIANT, SEED, *params, *RECORD_COLUMNS])


def factor_table(study: str | optuna.Study, storage: StorageArg = None,
                 results: str | Path = "results") -> pd.DataFrame:
    """The report's factor table (`factors.csv`): per level of each sampled parameter, counts and
    the level's best trial. A map of the search, not an ablation (see the report's caption)."""
    from study.report import frames

    study = _study(study, storage, results)
    return frames.factor_table(frames.trial_frame(study), frames.factors(study), _maximize(study))


def cell_table(study: str | optuna.Study, storage: StorageArg = None, results: str | Path = "results") -> pd.DataFrame:
    """The report's cell table (`cells.csv`): the best trial per combination of the study's
    recorded `[report] cells`."""
    from study.report import frames

    study = _study(study, storage, results)
    return frames.cell_table(frames.trial_frame(study), _maximize(study), frames.recorded_layout(study).cells)


def ablation_table(study: str | optuna.Study, storage: StorageArg = None,
                   results: str | Path = "results") -> pd.DataFrame:
    """The report's ablation statistics (`ablation_study.csv`): per variant and metric n, mean,
    std, the paired difference with its 95 % CI, p, Holm-adjusted p and P(better). `study` is the
    ablation study or its parent."""
    from study.report.ablation import ablation_frame

    return ablation_frame(_ablation_study(study, storage, results)[0])


def importance_table(study: str | optuna.Study, storage: StorageArg = None,
                     results: str | Path = "results") -> tuple[pd.DataFrame, str]:
    """The report's importances and the sentence that qualifies them (empty frame and the reason
    when the study has too few complete trials)."""
    from study.report.importance import importance_table as table

    return table(_study(study, storage, results))


def write_report(study: str | optuna.Study, out: str | Path | None = None,
                 formats: Sequence[str] = ("md", "csv", "tex"),
                 storage: StorageArg = None, results: str | Path = "results",
                 ablation: str | optuna.Study | None = None) -> Report:
    """What `study report` writes (tables, figures, report.md) for a study object, into `out`
    (default `results/<study name>`); `ablation` adds its table."""
    from study.report.build import build_report

    study = _study(study, storage, results)
    folder = Path(out) if out is not None else Path(results) / study.study_name
    paired = _study(ablation, storage, results) if ablation is not None else None
    return build_report(study, folder, list(formats), "python", paired)


def _study(study: str | optuna.Study, storage: StorageArg, results: str | Path) -> optuna.Study:
    return open_study(study, storage, results) if isinstance(study, str) else study


def _ablation_study(name: str | optuna.Study, storage: StorageArg,
                    results: str | Path) -> tuple[optuna.Study, AblationValues]:
    """The ablation study `name`, or the default-named ablation of the parent study `name`, with
    its variants' values."""
    from objectives.errors import InputError
    from study.records import ABLATION_SUFFIX, AblationValues

    if isinstance(name, str):
        try:
            study = open_study(name if name.endswith(ABLATION_SUFFIX) else name + ABLATION_SUFFIX, storage, results)
        except InputError:  # not a parent with a default-named ablation: the name itself must be one
            study = open_study(name, storage, results)
    else:
        study = name
    plan = AblationValues.from_study(study)
    if plan is None:
        raise InputError(f"{study.study_name} is not an ablation study (made by `study ablate`)")
    return study, plan


def _maximize(study: optuna.Study) -> bool:
    import optuna

    return study.direction == optuna.study.StudyDirection.MAXIMIZE


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state not in (TrialState.RUNNING, TrialState.WAITING)]


def _head(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    value = math.nan if trial.value is None else trial.value
    return {"number": trial.number, "state": trial.state.name, "value": value}


def _record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The trial's record flattened (`records.TrialRecord.row`, shared with the report's frames)."""
    from study.records import TrialRecord

    return TrialRecord.from_trial(trial).row()


def _frame(rows: list[dict[str, Any]], leading: list[str]) -> pd.DataFrame:
    """The rows as a frame: `leading` columns first, then the metrics, validation before test."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    rest = [c for c in frame.columns if c not in leading]
    ordered = [c for c in leading if c in frame] + sorted(rest, key=lambda c: (not c.startswith("val_"), rest.index(c)))
    return frame.reindex(columns=ordered if rows else leading)
