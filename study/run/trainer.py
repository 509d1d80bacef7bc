"""The per-trial recorder: train one config inside one Optuna trial and record it; and the search
study's objective, which asks the space for that config."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.contract import TrialContext, flat
from objectives.train import Checkpointing, Runtime
from study import paths
from study.dashboard.trial_pages import Page, TrialPages
from study.predictions import Predictions, split_rows, write_predictions
from study.records import INTERRUPTED, TrialRecord, TrialWriter, write_test_intervals
from study.report.uncertainty import RESAMPLES, interval_record, test_intervals
from study.run.checkpoints import OWNER, checkpoint_file, checkpoint_owner, resume_state, save_checkpoint
from study.run.data import DataCache
from study.run.failures import failure_reason, first_line, without_frames
from study.run.prepare import Prepared
from study.run.reporter import Reporter
from study.run.samplers import pruner_feed, pruner_settings
from study.spaces.space import build_config


def stored(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """What the storage holds of a running trial (its inherited attrs, Optuna's retry history)."""
    return next(t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number == trial.number)


def metric_value(loss: float, metrics: dict[str, Any], name: str) -> float:
    return float(loss if name == "loss" else metrics[name])


class TrialTrainer:
    """Train one config inside one Optuna trial and record it (`study.records`): config, curves
    (every epoch, so pruned trials keep theirs), best epoch, validation and test metrics and
    confusion matrices, and its dashboard page (figures and note, `study.dashboard.trial_pages`)."""

    def __init__(self, prep: Prepared, data: DataCache, runtime: Runtime, pages: TrialPages) -> None:
        self.prep = prep
        self.data = data
        self.runtime = runtime
        self.pages = pages

    def checkpoints(self, study_name: str) -> Path:
        return paths.study_folder(self.prep.results_dir, study_name, "checkpoints")

    def abandon(self, study_name: str, number: int) -> None:
        """Delete the checkpoint of a trial that nothing will resume (its heartbeat retries used up)."""
        _delete([checkpoint_file(self.checkpoints(study_name), number)])

    def __call__(self, study: optuna.Study, trial: optuna.Trial, values: dict[str, Any]) -> float:
        settings = self.prep.space.study
        objective = self.prep.module
        writer = TrialWriter(trial)
        reporter = Reporter(trial, settings.metric)
        folder = self.checkpoints(study.study_name)
        own = checkpoint_file(folder, trial.number)
        spent: list[Path] = [own]  # checkpoints to delete once this attempt ends (the one it resumed too)
        writer.clear_failure()
        recorded: dict[str, Any] = {}
        page = functools.partial(Page, study.study_name, trial.number, metric=settings.metric,
                                 params=dict(trial.params))
        try:
            config = build_config(objective.Config, self.prep.space.with_defaults(values))
            recorded = flat(config)
            epochs = objective.ROLES.epoch_count(config)
            page = functools.partial(page, epochs=epochs)
            reporter = Reporter(
                trial, settings.metric, fe_epochs=objective.ROLES.fe_epoch_count(config), epochs=epochs,
                feed=pruner_feed(pruner_settings(self.prep.space, objective.ROLES), settings.direction),
            )
            writer.config(recorded)
            splits = self.data.get(config)
            writer.data(splits.class_names, self.data.manifest_hash(config) if splits.manifest is not None else None)
            record = TrialRecord.from_trial(stored(study, trial))
            if record.origin is not None:
                spent.append(checkpoint_file(folder, record.origin))
            resume = resume_state(record, folder, writer, reporter, study.study_name, objective.CHECKPOINT_KEYS)
            owner = checkpoint_owner(study.study_name, trial.number)
            context = TrialContext(self.runtime, reporter, settings.metric, settings.direction == "maximize",
                                   Checkpointing(save=functools.partial(_save, own, spent, owner), resume=resume,
                                                 every_s=self.prep.checkpoint_every))
            started = time.perf_counter()
            result = objective.run(config, splits, context)
        except optuna.TrialPruned as exc:
            reason = f"the {settings.pruner} pruner stopped it {exc}".rstrip()
            self.pages.attach(trial, page("PRUNED", config=recorded, reason=reason, curves=dict(reporter.curves)))
            _delete(spent)
            raise without_frames(exc)
        except KeyboardInterrupt:
            writer.failed(INTERRUPTED)  # the checkpoint stays: `run` resumes it
            raise
        except Exception as exc:
            _delete(spent)  # a failed trial is never resumed (an environment error stops the run: `loop`)
            reason = failure_reason(exc)
            writer.failed(reason)
            self.pages.attach(trial, page("FAIL", config=recorded, reason=f"{reason}: {first_line(exc)}",
                                          curves=dict(reporter.curves)))
            raise without_frames(exc)
        _delete(spent)
        seconds = time.perf_counter() - started
        evaluations = {split: (evaluation.loss, evaluation.metrics, evaluation.confusion)
                       for split, evaluation in (("val", result.val), ("test", result.test))}
        writer.result(seconds, result.curves, result.best_epoch, evaluations)
        if getattr(result, "weights", None):  # an objective that starts from pretrained weights names them
            writer.weights(result.weights)
        intervals = _keep_predictions(study, trial, splits, result, self.data.manifest_hash(config)
                                      if splits.manifest is not None else None)
        metrics = {split: {"loss": loss, **values} for split, (loss, values, _) in evaluations.items()}
        self.pages.attach(trial, page("COMPLETE", config=recorded, best_epoch=result.best_epoch, val=metrics["val"],
                                      test=metrics["test"], curves=result.curves, confusion=result.test.confusion,
                                      class_names=list(splits.class_names), seconds=seconds,
                                      intervals=intervals))
        return metric_value(result.val.loss, result.val.metrics, settings.metric)


def _keep_predictions(study: optuna.Study, trial: optuna.Trial, splits: Any, result: Any,
                      split_hash: str | None) -> dict[str, Any] | None:
    """Store the best epoch's val and test probabilities (`study.predictions`), then compute the
    test metrics' patient-bootstrap intervals once, seeded by the trial's number, and record them
    (`records.TEST_INTERVALS`); returns that record (None where the objective gave no probabilities)."""
    kept: dict[str, Predictions] = {}
    for split, evaluation in (("val", result.val), ("test", result.test)):
        if getattr(evaluation, "probabilities", None) is None:
            continue
        labels, groups = split_rows(splits, split)
        kept[split] = Predictions(evaluation.probabilities, labels, groups)
        write_predictions(study, trial, split, kept[split], split_hash)
    test = kept.get("test")
    if test is None or not len(test.labels):
        return None
    record = interval_record(test_intervals(test.probabilities, test.labels, test.groups, B=RESAMPLES,
                                            seed=trial.number), seed=trial.number)
    write_test_intervals(trial, record)
    return record


def _save(own: Path, spent: list[Path], owner: dict[str, Any], state: dict[str, Any]) -> None:
    """Save this attempt's checkpoint, marked with the study and trial it belongs to; the one it
    resumed from (a heartbeat retry's or an interrupted trial's origin, ~300 MB for a ResNet50) is
    then superseded and deleted."""
    save_checkpoint({**state, OWNER: owner}, own)
    _delete(spent[1:])


def _delete(paths: list[Path]) -> None:
    """Remove checkpoints no attempt will resume; one that cannot be removed is left (a full or
    read-only disk is reported where it matters, when a checkpoint is written)."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def trial_seed(study: optuna.Study, trial: optuna.Trial, base: int, setting: str) -> int:
    """`base` + the trial's number; a trial that re-runs an earlier one (a heartbeat retry or a
    re-queued interrupted trial) keeps that trial's seed (its recorded `setting`, the objective's
    seed), since it resumes that trial's weights."""
    origin = TrialRecord.from_trial(stored(study, trial)).origin
    if origin is not None:
        earlier = next((t for t in study.get_trials(deepcopy=False) if t.number == origin), None)
        seed = TrialRecord.from_trial(earlier).config.get(setting) if earlier is not None else None
        if isinstance(seed, int):
            return seed
    return base + trial.number


class SearchObjective:
    """The search study's objective: the space suggests a config, `TrialTrainer` trains it."""

    def __init__(self, study: optuna.Study, prep: Prepared, trainer: TrialTrainer) -> None:
        self.study = study
        self.space = prep.space
        self.trainer = trainer

    def __call__(self, trial: optuna.Trial) -> float:
        values = self.space.suggest(trial)
        seed = self.trainer.prep.module.ROLES.seed
        if seed is not None and seed not in self.space.names():
            values[seed] = trial_seed(self.study, trial, self.space.study.seed, seed)
        return self.trainer(self.study, trial, values)
