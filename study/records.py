"""Every key a trial or a study stores in the Optuna storage, with its writer and a typed reader.

Writers (the run loop, `ablate`, the heartbeat's retry) and readers (`report`, `list`, the notebook
API, the dashboard notes, the storage callbacks) use only the names, classes and functions here,
so a key is spelled once and a damaged value reads as missing in one place. `TrialRecord.row` is
the one flattener of a trial into columns (`load_trials` shows it, the report's frames pick from
it). The keys and their meanings are those of every study the tool has written: a study made by an
earlier version reads back with the same classes (a key it lacks reads as empty).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from objectives.contract import CLASSIFIER_ROLES
from study.spaces.report_layout import ReportLayout

SPLITS = ("val", "test")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts toward a study's target
STALE = "stale worker"  # how a FAIL trial without a recorded reason is shown (its worker died)

ABLATION_SUFFIX = ".ablation"  # `ablate NAME` stores its trials as study NAME.ablation
RETUNE_SUFFIX = ".retune."  # `ablate --retune` searches variant V in study ABLATION.retune.V

# ---------------------------------------------------------------- trial user attrs
CONFIG = "config"  # the trial's flat config (every setting by name)
CURVES = "curves"  # per-epoch rows as columns: epoch, phase, train_*, val_* (kept every epoch)
BEST_EPOCH = "best_epoch"  # the epoch chosen on validation, 1-based
CLASS_NAMES = "class_names"
SPLIT_HASH = "split_hash"  # sha256 of the split manifest the trial trained on
FAIL_REASON = "fail_reason"  # nan_loss, cuda_oom, cuda_error, interrupted, or "Class: first line"
SECONDS = "seconds"  # wall time of `run` inside the trial
WEIGHTS = "weights"  # the pretrained weights a complete trial started from (``ResNet50_Weights.IMAGENET1K_V1``)
RESUMED_FROM = "resumed_from"  # {"trial": n, "epoch": e}: the checkpoint this attempt continued
RESUME_OF = "resume_of"  # set on a re-queued interrupted trial: the number of the one it re-runs
INTERRUPTED = "interrupted"  # the fail reason of a trial stopped by Ctrl-C / SIGTERM
HEARTBEAT = "heartbeat"  # the fail reason of a trial whose worker stopped sending heartbeats (killed, lost)
# fail reasons caused by the trial's own configuration (`objectives.train.Diverged.reason`): in an
# ablation such a seed is a result of its variant (it counts as a failure), never re-run. Any other
# reason (cuda_oom, cuda_error, heartbeat, interrupted, an exception of the environment) is the
# infrastructure's: `ablate` re-runs the cell, and a cell still missing only withholds the star.
TRIAL_FAILURES = frozenset({"nan_loss", "diverged"})


def is_trial_failure(reason: str | None) -> bool:
    """Whether a failed trial's recorded reason is its own configuration's (`TRIAL_FAILURES`)."""
    return reason in TRIAL_FAILURES


def metrics_key(split: str) -> str:
    """``val_metrics`` / ``test_metrics``: {"loss": .., <metric>: .., "recall": [..]}."""
    return f"{split}_metrics"


def confusion_key(split: str) -> str:
    """``val_confusion`` / ``test_confusion``: the count matrix, true class per row."""
    return f"{split}_confusion"


# {"intervals": {metric: [low, high]}, "methods", "dropped", "resamples", "seed", "level"}: 95 % patient
# bootstrap intervals of the test metrics (``recall_<c>`` per class), computed once as the trial ends
TEST_INTERVALS = "test_intervals"


def interval_key(metric: str, end: str) -> str:
    """``test_<metric>_low`` / ``test_<metric>_high``: the columns `load_trials` shows."""
    return f"test_{metric}_{end}"


def interval_bounds(record: Any) -> Mapping[str, Any]:
    """The {metric: [low, high]} of a `TEST_INTERVALS` record; {} for none (an older trial) or
    anything else a damaged storage holds."""
    bounds = record.get("intervals") if isinstance(record, Mapping) else None
    return bounds if isinstance(bounds, Mapping) else {}


def interval_resamples(record: Any) -> Any:
    """How many resamples a `TEST_INTERVALS` record's intervals were drawn from (None if unsaid)."""
    return record.get("resamples") if isinstance(record, Mapping) else None


# ---------------------------------------------------------------- trial and study system attrs
RETRY_HISTORY = "retry_history"  # Optuna's trial system attr: the earlier attempts a heartbeat retry re-runs


def retry_attempts(trial: FrozenTrial) -> int:
    """This attempt's number as Optuna's heartbeat retry counts it (before it appends to
    `RETRY_HISTORY`): 1 for a first attempt."""
    history = trial.system_attrs.get(RETRY_HISTORY)
    return (len(history) if isinstance(history, list) else 0) + 1


def complete_value(trial: FrozenTrial) -> float:
    """A COMPLETE trial's objective value: Optuna types `FrozenTrial.value` as optional because
    only a complete trial has one."""
    assert trial.value is not None, f"trial {trial.number} has no value (state {trial.state.name})"
    return float(trial.value)

# (`study.predictions` writes and reads them: compressed, chunked arrays the dashboard never lists)
PREDICTIONS = "predictions"  # trial: predictions:<split> header, predictions:<split>:<i> chunks
PREDICTION_ROWS = "prediction_rows"  # study: prediction_rows:<rows>:<split> header, ...:<i> chunks


def predictions_key(split: str) -> str:
    """The trial system attr of a split's probabilities header (its chunks add ``:<i>``)."""
    return f"{PREDICTIONS}:{split}"


def rows_key(rows: str, split: str) -> str:
    """The study system attr of a split's labels and groups under manifest hash `rows`."""
    return f"{PREDICTION_ROWS}:{rows}:{split}"


# ---------------------------------------------------------------- study user attrs
SPACE_HASH = "space_hash"
SPACE_FILE = "space_file"
SPACE_TEXT = "space_text"  # the TOML the study ran with: ablate and a resume by name use it, on any machine
OBJECTIVE = "objective"
METRIC = "metric"
DATASET = "dataset"
FIXED = "fixed"
PINNED = "pinned"
SAMPLER = "sampler"
PRUNER = "pruner"
REPORT = "report"
SHARED_TEST_GROUPS = "shared_test_groups"
CONTENT_HASH = "content_hash"  # the images' bytes (`objectives.data.decode.content_hash`): same names, same content
DATA_SUMMARY = "data_summary"  # `DataSummary`: counts per split and class, never an image name or a patient id
# an ablation study's (`ablate`): its plan, written before any trial, then the version marker last
PARENT, MODE, FACTORS, BASELINE, VARIANTS, LEVELS, SEEDS, RETUNE = (
    "parent", "mode", "factors", "baseline", "variants", "levels", "seeds", "retune")
RETUNED = "retuned"  # variant -> its retuned value (None where the parameter is inactive)
ABLATION_VERSION_KEY = "ablation_version"
ABLATION_VERSION = 3  # 3: split per seed from the objective's settings, retune on r seeds per candidate
REPORTED_VERSIONS = (2, 3)  # what `report` reads (2: fresh seeds, retune one seed per candidate)
SPLIT_PER_SEED = "split_per_seed"  # an ablation's plan: whether seed s also drew the validation split
# an ablation's plan: the objective's `Roles.loss` and `Roles.step_size` (absent: recorded before them, by the
# image classifier), so the report's loss caveat needs no objective and names no setting itself
LOSS_SETTINGS, STEP_SIZE = "loss_settings", "step_size"
VARIANT = "variant"  # the ablation grid's params (variant, seed); a retune study's attr `variant`
SEED = "seed"
TUNE_SEED = "tune_seed"  # a retune study's grid param (version 3): the tuning seed of the cell
# an ablation's retune plan (its `RETUNE` attr, a mapping; each retune study stores it as its own attrs
# beside `VARIANT`): the parameter, trials and seeds asked for, the candidates and the tuning seeds
PARAM, RETUNE_TRIALS, RETUNE_SEEDS = "param", "trials", "seeds"
CANDIDATES, TUNING_SEEDS = "candidates", "tuning_seeds"


@dataclass(frozen=True)
class TrialRecord:
    """What one trial stored, typed; `from_trial` reads any trial the tool ever wrote."""

    number: int
    state: TrialState
    value: float | None
    params: Mapping[str, Any]
    config: Mapping[str, Any]
    curves: Mapping[str, list[Any]]
    best_epoch: int | None
    val_metrics: Mapping[str, Any]
    test_metrics: Mapping[str, Any]
    val_confusion: list[list[int]] | None
    test_confusion: list[list[int]] | None
    class_names: list[str]
    fail_reason: str | None
    seconds: float | None
    split_hash: str | None
    resumed_from: Mapping[str, int] | None
    resume_of: int | None
    retry_of: int | None  # the latest attempt a heartbeat retry re-runs (Optuna's retry history)
    test_intervals: Mapping[str, Any] | None = None  # TEST_INTERVALS; None: an older trial, or not complete
    weights: str | None = None  # WEIGHTS; None: from scratch, an older trial, or not complete

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        attrs = trial.user_attrs
        with warnings.catch_warnings():  # the retry history's reader is "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
        return cls(
            number=trial.number, state=trial.state, value=trial.value, params=trial.params,
            config=_mapping(attrs.get(CONFIG)), curves=_mapping(attrs.get(CURVES)), best_epoch=attrs.get(BEST_EPOCH),
            val_metrics=_mapping(attrs.get(metrics_key("val"))), test_metrics=_mapping(attrs.get(metrics_key("test"))),
            val_confusion=attrs.get(confusion_key("val")), test_confusion=attrs.get(confusion_key("test")),
            class_names=_list(attrs.get(CLASS_NAMES)), fail_reason=attrs.get(FAIL_REASON), seconds=attrs.get(SECONDS),
            split_hash=attrs.get(SPLIT_HASH), resumed_from=attrs.get(RESUMED_FROM), resume_of=attrs.get(RESUME_OF),
            retry_of=history[-1] if history else None, test_intervals=attrs.get(TEST_INTERVALS),
            weights=attrs.get(WEIGHTS),
        )

    @property
    def epochs(self) -> int:
        """Epochs trained (and reported), pruned trials included."""
        return len(self.curves.get("epoch") or [])

    @property
    def origin(self) -> int | None:
        """The earlier attempt this trial re-runs: a heartbeat retry's, else a re-queued interrupted one's."""
        return self.retry_of if self.retry_of is not None else self.resume_of

    def metrics(self, split: str) -> Mapping[str, Any]:
        return self.val_metrics if split == "val" else self.test_metrics

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The recorded 95 % test interval of `metric` (``recall_<c>`` per class), None where the
        trial has none (an older run) or the metric has none."""
        try:  # a stored record is not trusted: anything but two numbers reads as none
            bounds = interval_bounds(self.test_intervals).get(metric)
            if bounds is None:
                return None
            low, high = bounds
            return float(low), float(high)
        except (AttributeError, TypeError, ValueError):
            return None

    def shown_reason(self) -> str:
        """The failure reason as `list` and `report` show it."""
        return str(self.fail_reason or STALE)

    def row(self) -> dict[str, Any]:
        """The trial's record as one flat row, one column per number: `RECORD_COLUMNS`, then each
        split's metrics as ``<split>_<name>`` (per-class lists such as recall as
        ``<split>_<name>_<class>``), then each recorded test interval as ``test_<metric>_low`` /
        ``_high``. The one flattener of a trial: `load_trials` shows it, the report's
        `trial_frame` picks its columns from it."""
        row: dict[str, Any] = {BEST_EPOCH: self.best_epoch, SECONDS: self.seconds, FAIL_REASON: self.fail_reason}
        for split in SPLITS:
            for metric, value in self.metrics(split).items():
                if isinstance(value, list):
                    row.update({f"{split}_{metric}_{c}": _number(v) for c, v in zip(self._class_labels(value), value)})
                else:
                    row[f"{split}_{metric}"] = _number(value)
        return {**row, **self._interval_columns()}

    def _class_labels(self, values: list[Any]) -> list[str]:
        """A per-class list's column suffixes: the class names, or indices where they do not fit."""
        names = self.class_names
        return [str(c) for c in names] if len(names) == len(values) else [str(i) for i in range(len(values))]

    def _interval_columns(self) -> dict[str, float]:
        """`test_<metric>_low` / `_high` from the intervals the trial recorded when it ended (never
        recomputed); per-class recall named by class like `test_recall_<class>`. A trial without
        them (an older run, a pruned trial) has no such columns."""
        classes = self.class_names
        out: dict[str, float] = {}
        for metric, bounds in interval_bounds(self.test_intervals).items():
            if metric.startswith("recall_") and metric[7:].isdigit() and int(metric[7:]) < len(classes):
                metric = f"recall_{classes[int(metric[7:])]}"
            try:
                low, high = (_number(b, strict=True) for b in bounds)
            except (TypeError, ValueError):
                continue  # not two numbers (a damaged record): no columns, as for a trial without intervals
            out[interval_key(metric, "low")], out[interval_key(metric, "high")] = low, high
        return out


RECORD_COLUMNS = (BEST_EPOCH, SECONDS, FAIL_REASON)  # a trial's own columns in `TrialRecord.row`, first


def _number(value: Any, *, strict: bool = False) -> Any:
    """A stored number for a row: None (a NaN stored by JSON) as NaN; `strict` also makes it a float."""
    if value is None:
        return math.nan
    return float(value) if strict else value


def _mapping(value: Any) -> Mapping[str, Any]:
    """A stored mapping, or {} where the key is missing or holds something else."""
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    """A stored list, or [] where the key is missing or holds something else."""
    return value if isinstance(value, list) else []


def _names(value: Any) -> tuple[str, ...] | None:
    """A stored list of setting names; None where the key is missing or holds something else."""
    return tuple(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


class TrialWriter:
    """Writes a live trial's user attrs (the keys above) as a trial trains."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def clear_failure(self) -> None:
        """A retry inherits its failed original's attrs: its own reason starts empty."""
        if FAIL_REASON in self.trial.user_attrs:
            self.trial.set_user_attr(FAIL_REASON, None)

    def failed(self, reason: str) -> None:
        self.trial.set_user_attr(FAIL_REASON, reason)

    def config(self, config: Mapping[str, Any]) -> None:
        self.trial.set_user_attr(CONFIG, dict(config))

    def data(self, class_names: Sequence[str], split_hash: str | None) -> None:
        self.trial.set_user_attr(CLASS_NAMES, list(class_names))
        if split_hash is not None:
            self.trial.set_user_attr(SPLIT_HASH, split_hash)

    def curves(self, curves: Mapping[str, list[Any]]) -> None:
        self.trial.set_user_attr(CURVES, curves)

    def weights(self, name: str) -> None:
        self.trial.set_user_attr(WEIGHTS, name)

    def resumed(self, trial: int, epoch: int) -> None:
        self.trial.set_user_attr(RESUMED_FROM, {"trial": trial, "epoch": epoch})

    def result(self, seconds: float, curves: Mapping[str, list[Any]], best_epoch: int,
               evaluations: Mapping[str, tuple[float, Mapping[str, Any], list[list[int]]]]) -> None:
        """The trained trial: its time, curves, best epoch, and per split (loss, metrics, confusion)."""
        self.trial.set_user_attr(SECONDS, seconds)
        self.trial.set_user_attr(CURVES, curves)
        self.trial.set_user_attr(BEST_EPOCH, best_epoch)
        for split, (loss, metrics, confusion) in evaluations.items():
            self.trial.set_user_attr(metrics_key(split), {"loss": loss, **metrics})
            self.trial.set_user_attr(confusion_key(split), confusion)


def write_test_intervals(trial: optuna.Trial, record: Mapping[str, Any]) -> None:
    """The trial's test intervals (`study.report.uncertainty.interval_record`), once, as it ends."""
    trial.set_user_attr(TEST_INTERVALS, dict(record))


def record_stale_failure(storage: optuna.storages.RDBStorage, trial_id: int) -> None:
    """Record `HEARTBEAT` as the reason of a trial the heartbeat has just failed. Optuna fails it
    before any callback runs and refuses attrs of a finished trial through its API, so the row is
    written in Optuna's own table, in one transaction (a reason it inherited is replaced)."""
    import json

    from optuna.storages._rdb import models

    table = models.TrialUserAttributeModel.__table__
    with storage.engine.begin() as connection:
        connection.execute(table.delete().where(table.c.trial_id == trial_id, table.c.key == FAIL_REASON))
        connection.execute(table.insert().values(trial_id=trial_id, key=FAIL_REASON, value_json=json.dumps(HEARTBEAT)))


@dataclass(frozen=True)
class StudyRecord:
    """What a search study records when it is created: what defines its trials (`space_hash`),
    where they came from, how they were sampled and pruned, and how `report` groups them."""

    space_hash: str | None = None
    space_file: str | None = None
    space_text: str | None = None
    objective: str | None = None
    metric: str = "value"
    dataset: str | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    pinned: Mapping[str, Any] = field(default_factory=dict)
    sampler: Mapping[str, Any] | None = None
    pruner: Mapping[str, Any] | None = None
    report: ReportLayout = field(default_factory=ReportLayout)
    split_hash: str | None = None
    shared_test_groups: int | None = None
    content_hash: str | None = None  # None: an older study, or an objective whose data names no content

    @classmethod
    def from_study(cls, study: optuna.Study) -> StudyRecord:
        attrs = study.user_attrs
        return cls(
            space_hash=attrs.get(SPACE_HASH), space_file=attrs.get(SPACE_FILE), space_text=attrs.get(SPACE_TEXT),
            objective=attrs.get(OBJECTIVE),
            metric=attrs.get(METRIC, "value"), dataset=attrs.get(DATASET), fixed=attrs.get(FIXED, {}),
            pinned=attrs.get(PINNED, {}), sampler=attrs.get(SAMPLER), pruner=attrs.get(PRUNER),
            report=ReportLayout.from_record(attrs.get(REPORT)), split_hash=attrs.get(SPLIT_HASH),
            shared_test_groups=attrs.get(SHARED_TEST_GROUPS), content_hash=attrs.get(CONTENT_HASH),
        )

    @staticmethod
    def metric_of(study: optuna.Study) -> str:
        """The study's recorded metric alone ("value" where none is), without reading the rest."""
        metric = study.user_attrs.get(METRIC, "value")
        return metric if isinstance(metric, str) else "value"

    @staticmethod
    def is_ours(study: optuna.Study) -> bool:
        """Whether `study` is a search study `run` made: it recorded what defines its trials."""
        return SPACE_HASH in study.user_attrs

    def write(self, study: optuna.Study) -> None:
        attrs: dict[str, Any] = {
            SPACE_HASH: self.space_hash,
            SPACE_FILE: self.space_file,
            SPACE_TEXT: self.space_text,
            OBJECTIVE: self.objective,
            METRIC: self.metric,
            DATASET: self.dataset,
            FIXED: dict(self.fixed),
            PINNED: dict(self.pinned),
            SAMPLER: self.sampler,
            PRUNER: self.pruner,
            REPORT: self.report.record(),
        }
        if self.split_hash is not None:
            attrs[SPLIT_HASH] = self.split_hash
            attrs[SHARED_TEST_GROUPS] = self.shared_test_groups
        if self.content_hash is not None:
            attrs[CONTENT_HASH] = self.content_hash
        for key, value in attrs.items():
            study.set_user_attr(key, value)


@dataclass(frozen=True)
class DataSummary:
    """Who is in a study's data, as `report` shows it without the data: images and patients
    (groups) per class in each split of the study's own split, groups shared between splits, and
    the hashes that identify the data. Counts only: no image name or patient id reaches the storage
    (it may be a shared database). `groups` is None where the data has no groups; a patient counts
    under the largest label of its images in that split (the worse eye, as the split stratifies)."""

    class_names: tuple[str, ...]
    split_seed: int | None
    images: Mapping[str, tuple[int, ...]]  # split -> images per class
    groups: Mapping[str, tuple[int, ...]] | None  # split -> patients per class
    shared: Mapping[str, int] | None  # "train-test", "val-test", "train-val" -> groups in both
    split_hash: str | None
    content_hash: str | None

    @classmethod
    def from_study(cls, study: optuna.Study) -> DataSummary | None:
        """The summary `run` recorded; None for a study made before summaries were kept."""
        saved = study.user_attrs.get(DATA_SUMMARY)
        if not isinstance(saved, Mapping):
            return None
        groups, shared = saved.get("groups"), saved.get("shared")
        try:
            summary = cls(
                class_names=tuple(str(c) for c in saved["class_names"]), split_seed=saved.get("split_seed"),
                images={str(k): tuple(int(n) for n in v) for k, v in saved["images"].items()},
                groups=None if groups is None else {str(k): tuple(int(n) for n in v) for k, v in groups.items()},
                shared=None if shared is None else {str(k): int(n) for k, n in shared.items()},
                split_hash=saved.get("split_hash"), content_hash=saved.get("content_hash"),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None  # not what `run` writes (an edited storage): reported as missing, never a traceback
        k = len(summary.class_names)
        parts = [*summary.images.values(), *(summary.groups or {}).values()]
        return summary if all(len(v) == k for v in parts) else None

    def record(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names), "split_seed": self.split_seed,
            "images": {k: list(v) for k, v in self.images.items()},
            "groups": None if self.groups is None else {k: list(v) for k, v in self.groups.items()},
            "shared": None if self.shared is None else dict(self.shared),
            "split_hash": self.split_hash, "content_hash": self.content_hash,
        }

    def write(self, study: optuna.Study) -> None:
        study.set_user_attr(DATA_SUMMARY, self.record())


@dataclass(frozen=True)
class AblationRecord:
    """An ablation study's plan (`ablate`): parent, mode, variants with their values and levels,
    the evaluation seeds and the retune grid; `retuned` once the retune phase picked."""

    parent: str | None
    mode: str
    factors: list[str]
    baseline: str
    variants: Mapping[str, Mapping[str, Any]]
    levels: Mapping[str, Mapping[str, Any]]
    seeds: list[int]
    retune: Mapping[str, Any] | None
    metric: str
    objective: str | None = None
    dataset: str | None = None
    retuned: Mapping[str, Any] | None = None
    version: int | None = ABLATION_VERSION
    split_per_seed: bool | None = None  # recorded from version 3 on (None: a version-2 plan)
    loss_settings: tuple[str, ...] | None = None  # None: recorded before loss roles were (see `loss_roles`)
    step_size: str | None = None

    @classmethod
    def from_study(cls, study: optuna.Study) -> AblationRecord:
        """The plan of a current ablation study (`is_current`); a KeyError for another study."""
        attrs = study.user_attrs
        return cls(
            parent=attrs.get(PARENT), mode=attrs.get(MODE, "one-at-a-time"), factors=attrs.get(FACTORS, []),
            baseline=attrs[BASELINE], variants=attrs[VARIANTS], levels=attrs.get(LEVELS, {}), seeds=attrs[SEEDS],
            retune=attrs.get(RETUNE), metric=attrs[METRIC], objective=attrs.get(OBJECTIVE), dataset=attrs.get(DATASET),
            retuned=attrs.get(RETUNED), version=attrs.get(ABLATION_VERSION_KEY),
            split_per_seed=attrs.get(SPLIT_PER_SEED), loss_settings=_names(attrs.get(LOSS_SETTINGS)),
            step_size=attrs.get(STEP_SIZE) if isinstance(attrs.get(STEP_SIZE), str) else None,
        )

    def loss_roles(self) -> tuple[tuple[str, ...], str | None]:
        """The settings that change the loss and the step size, as the plan recorded them; an
        ablation recorded before plans held them ran the image classifier, so its roles."""
        if self.loss_settings is None:
            return CLASSIFIER_ROLES.loss, CLASSIFIER_ROLES.step_size
        return self.loss_settings, self.step_size

    @staticmethod
    def version_of(study: optuna.Study) -> Any:
        """The ablation version the study recorded (None: an ablation of before versions, or none)."""
        return study.user_attrs.get(ABLATION_VERSION_KEY)

    @staticmethod
    def is_current(study: optuna.Study) -> bool:
        """Made by this design (version 3); `ablate` resumes only these."""
        return AblationRecord.version_of(study) == ABLATION_VERSION

    @staticmethod
    def is_reported(study: optuna.Study) -> bool:
        """An ablation `report` tabulates: this version or one before it that recorded its seeds
        (each reported as it ran; never resumed, see `study.ablation.ablate._existing`)."""
        return AblationRecord.version_of(study) in REPORTED_VERSIONS

    @property
    def factorial(self) -> bool:
        return self.mode == "factorial"

    def plan(self) -> dict[str, Any]:
        """The attrs as the study stores them, without the version marker and `retuned`."""
        return {
            PARENT: self.parent,
            MODE: self.mode,
            FACTORS: list(self.factors),
            BASELINE: self.baseline,
            VARIANTS: {k: dict(v) for k, v in self.variants.items()},
            LEVELS: {k: dict(v) for k, v in self.levels.items()},
            SEEDS: list(self.seeds),
            RETUNE: self.retune,
            METRIC: self.metric,
            OBJECTIVE: self.objective,
            DATASET: self.dataset,
            SPLIT_PER_SEED: self.split_per_seed,
            **({LOSS_SETTINGS: list(self.loss_settings), STEP_SIZE: self.step_size}
               if self.loss_settings is not None else {}),
        }

    def write(self, study: optuna.Study) -> None:
        for key, value in self.plan().items():
            study.set_user_attr(key, value)
        study.set_user_attr(ABLATION_VERSION_KEY, ABLATION_VERSION)  # last: a study without it holds no trials

    @staticmethod
    def write_retuned(study: optuna.Study, picked: Mapping[str, Any]) -> None:
        study.set_user_attr(RETUNED, dict(picked))


@dataclass(frozen=True)
class AblationValues:
    """Each variant's parameter values as an ablation study recorded them (any version that
    recorded `VARIANTS`), a retuned parameter at the value its retune picked: what `load_ablation`
    shows beside each seed."""

    variants: Mapping[str, Mapping[str, Any]]
    retuned: Mapping[str, Any]
    retune_param: str | None

    @classmethod
    def from_study(cls, study: optuna.Study) -> AblationValues | None:
        """The study's values; None where it recorded no variants (not an ablation study)."""
        attrs = study.user_attrs
        variants = attrs.get(VARIANTS)
        if not isinstance(variants, Mapping):
            return None
        param = _mapping(attrs.get(RETUNE)).get(PARAM)
        return cls(variants, _mapping(attrs.get(RETUNED)), param if isinstance(param, str) and param else None)

    def params(self) -> list[str]:
        """Every parameter a variant sets, in first-seen order, then the retuned one."""
        params = list(dict.fromkeys(p for values in self.variants.values() for p in values))
        return params if self.retune_param is None or self.retune_param in params else [*params, self.retune_param]

    def values(self, variant: Any) -> dict[str, Any]:
        """`variant`'s values ({} for one the plan lacks); its retuned parameter NaN where inactive."""
        values = dict(self.variants.get(variant, {}))
        if self.retune_param and variant in self.retuned:
            picked = self.retuned[variant]
            values[self.retune_param] = picked if picked is not None else math.nan
        return values


def is_retune_study(study: optuna.Study) -> bool:
    """Whether `study` is a retune study `ablate --retune` made (`write_retune_plan` recorded it)."""
    return VARIANT in study.user_attrs and PARAM in study.user_attrs


def write_retune_plan(study: optuna.Study, variant: str, param: str, retune: Mapping[str, Any]) -> None:
    """A retune study's attrs (once): its variant, the parameter and the plan's retune grid."""
    if VARIANT not in study.user_attrs:
        for key, value in {VARIANT: variant, PARAM: param, **retune}.items():
            study.set_user_attr(key, value)


def holds_other_retune(study: optuna.Study, retune: Mapping[str, Any]) -> bool:
    """Whether a retune study recorded another grid (candidates or tuning seeds) than `retune`."""
    return any(study.user_attrs.get(key) != retune[key] for key in (CANDIDATES, TUNING_SEEDS))


@dataclass(frozen=True)
class Summary:
    """Trial counts by state, failure reasons and the best trial: what `list`, the run's last
    lines and the report's settings all show, computed once here."""

    complete: int
    pruned: int
    failed: int
    running: int
    reasons: list[tuple[str, int]]  # most common first
    best: TrialRecord | None

    @classmethod
    def of(cls, study: optuna.Study) -> Summary:
        trials = study.get_trials(deepcopy=False)
        counts = Counter(t.state for t in trials)
        reasons = Counter(TrialRecord.from_trial(t).shown_reason() for t in trials if t.state == TrialState.FAIL)
        best = TrialRecord.from_trial(study.best_trial) if counts[TrialState.COMPLETE] else None
        return cls(counts[TrialState.COMPLETE], counts[TrialState.PRUNED], counts[TrialState.FAIL],
                   counts[TrialState.RUNNING], reasons.most_common(), best)

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def count(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return len(study.get_trials(deepcopy=False, states=states))
