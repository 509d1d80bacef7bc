"""A session: one process's prepared run on one storage (checked inputs, decoded data, the trial
trainer), shared by `run` (`run_study`) and `ablate`, which both run trials through it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal, cast

import optuna
import torch

from objectives import contract
from objectives.errors import InputError
from objectives.train import Runtime
from study import paths, records, storage
from study.dashboard.trial_pages import TrialPages
from study.run import loop
from study.run.data import DataCache, load_data
from study.run.options import RunOptions
from study.run.output import Output, announce, print_summary
from study.run.prepare import Prepared, prepare, provide_data
from study.run.samplers import make_pruner, make_sampler, pruner_settings, run_seed, sampler_settings
from study.run.trainer import SearchObjective, TrialTrainer
from study.run.workers import run_workers
from study.spaces.space import config_defaults


class Session:
    """Checked inputs (`prep`), their decoded data, the storage and, once a trial is to run, the
    trainer: what every study a command runs in this process shares."""

    def __init__(
        self,
        prep: Prepared,
        data: DataCache | None,
        out: Output,
        *,
        store: optuna.storages.BaseStorage | None = None,
        heartbeat: int = storage.HEARTBEAT_SECONDS,
        runtime: Runtime | None = None,
    ) -> None:
        self.prep = prep
        self._data = data
        self.out = out
        self._store = store
        self._heartbeat = heartbeat
        self._runtime = runtime
        self._trainer: TrialTrainer | None = None
        self._warned: set[str] = set()  # studies whose missing content hash was warned about

    @classmethod
    def open(cls, opts: RunOptions, out: Output, *, store: optuna.storages.BaseStorage | None = None,
             check: Callable[[Session], None] | None = None) -> Session:
        """Check everything `opts` asks for, then `check` the storage (the study in it), and only
        then generate and decode the data; nothing is written to the storage, and the split
        manifests wait for the caller's `data.accept()` once the data is known to be the study's."""
        prep = prepare(opts, out)
        session = cls(prep, None, out, store=store, heartbeat=opts.heartbeat)
        if check is not None:
            check(session)
        provide_data(prep, out)
        session.data = load_data(prep, out)
        return session

    @property
    def data(self) -> DataCache:
        """The decoded data; `open` loads it only after its `check`, which must not need it."""
        assert self._data is not None, "the session's data is loaded after its check"
        return self._data

    @data.setter
    def data(self, value: DataCache) -> None:
        self._data = value

    @property
    def store(self) -> optuna.storages.BaseStorage:
        """The storage, opened when a study is first asked for."""
        if self._store is None:
            self._store = storage.open_storage(self.prep.storage, heartbeat=self._heartbeat)
        return self._store

    @property
    def trainer(self) -> TrialTrainer:
        if self._trainer is None:
            if self.prep.device.type == "cuda":
                # every trial of a study repeats the same few input shapes: let cuDNN time its algorithms once
                torch.backends.cudnn.benchmark = True
            runtime = self._runtime or Runtime.for_device(
                self.prep.device, bar=functools.partial(self.out.bar, leave=False), compile=self.prep.compile
            )
            pages = TrialPages(paths.artifact_store(self.prep.results_dir), enabled=self.prep.trial_pages)
            self._trainer = TrialTrainer(self.prep, self.data, runtime, pages)
        return self._trainer

    def study(self, name: str, direction: str | optuna.study.StudyDirection,
              ours: Callable[[optuna.Study], bool]) -> optuna.Study:
        """The study `name` in this session's storage, created if new; an existing one only if it is
        ours by `ours` and optimises in `direction` (`check_adoptable`)."""
        return adopt(self.store, name, direction, ours, self.prep.storage)

    def fingerprint(self) -> str:
        return self.prep.space.fingerprint(config_defaults(self.prep.module.Config))

    def check_search_study(self, allow_change: bool) -> None:
        """Before any data is decoded or file written: the storage opens, and a search study of
        this name already in it is ours (`check_adoptable`) and of this space (or `allow_change`)."""
        prep = self.prep
        if prep.storage.absent:
            return  # a new SQLite or journal file holds no study yet: created once the data has been read
        if prep.study_name not in storage.study_names(self.store):
            return
        study = optuna.load_study(study_name=prep.study_name, storage=self.store)
        check_adoptable(study, prep.space.study.direction, records.StudyRecord.is_ours, prep.storage)
        recorded = records.StudyRecord.from_study(study)
        if recorded.space_hash is not None and recorded.space_hash != self.fingerprint() and not allow_change:
            raise self.changed()

    def changed(self) -> InputError:
        return InputError(
            f"study {self.prep.study_name} was created with another search space, settings or dataset; "
            f"fork it with --study-name NEW or accept the change with --allow-space-change"
        )

    def search_study(self, allow_change: bool) -> optuna.Study:
        """The search study, recording what defines it when new (`records.StudyRecord`); one made
        with another space, settings or dataset (or other image bytes under the same names) is
        refused unless `allow_change`. The split manifests and the data summary are written once
        that is settled."""
        prep = self.prep
        study = self.study(prep.study_name, prep.space.study.direction, records.StudyRecord.is_ours)
        fingerprint = self.fingerprint()
        recorded = records.StudyRecord.from_study(study)
        base = prep.base_config()
        if recorded.space_hash is None:
            manifest = self.data.get(base).manifest
            records.StudyRecord(
                space_hash=fingerprint,
                space_file=str(prep.space.path),
                space_text=prep.space.text,
                objective=prep.space.study.objective,
                metric=prep.space.study.metric,
                dataset=prep.dataset,
                fixed=dict(prep.space.fixed),
                pinned=dict(prep.space.pinned),
                sampler=sampler_settings(prep.space),
                pruner=pruner_settings(prep.space, prep.module.ROLES),
                report=prep.space.report.filled(contract.report_groups(prep.module)),
                split_hash=self.data.manifest_hash(base) if manifest is not None else None,
                shared_test_groups=len(manifest.shared_test_groups) if manifest is not None else None,
                content_hash=self.data.content_hash(base),
            ).write(study)
        elif not allow_change:
            if recorded.space_hash != fingerprint or not self.same_manifest(study):
                raise self.changed()
            replaced = self.content_difference(study)
            if replaced is not None:
                raise InputError(f"study {prep.study_name}: {replaced}; fork it with --study-name NEW or accept the "
                                 f"change with --allow-space-change")
        self.data.accept()
        if records.DataSummary.from_study(study) is None and (summary := self.data.summary(base)) is not None:
            summary.write(study)  # counts of the data just checked to be the study's (an older study gets its own)
        return study

    def same_data(self, study: optuna.Study) -> bool:
        """Whether this session's data is the data `study` ran on: the same manifest
        (`same_manifest`) and the same image bytes (`content_difference`)."""
        return self.same_manifest(study) and self.content_difference(study) is None

    def same_manifest(self, study: optuna.Study) -> bool:
        """By content where the study recorded its split manifest's hash (the same images, labels,
        groups and split at another path, on another machine, is the same data), by the recorded
        path or name otherwise."""
        recorded = records.StudyRecord.from_study(study)
        if recorded.split_hash is not None:
            base = self.prep.base_config()
            return self.data.get(base).manifest is not None and self.data.manifest_hash(base) == recorded.split_hash
        return recorded.dataset == self.prep.dataset

    def content_difference(self, study: optuna.Study) -> str | None:
        """None when this session's images have the bytes `study` recorded (`records.CONTENT_HASH`;
        no path and no mtime enter it, so a copied folder matches), else one clause saying they
        differ: replaced images under the same names. A study recorded before content hashes were
        kept is accepted, with one warning line per study and process."""
        recorded = records.StudyRecord.from_study(study).content_hash
        content = self.data.content_hash(self.prep.base_config())
        if content is None:
            return None  # an objective whose data names no content: the manifest is all there is
        if recorded is None:
            if study.study_name not in self._warned:
                self._warned.add(study.study_name)
                self.out.warn(f"study {study.study_name} recorded no hash of its images' bytes (an older run): "
                              f"images replaced under the same names would go unnoticed")
            return None
        if content != recorded:
            return (f"the images have other bytes under the same names (content ...{_short(content)}, the study "
                    f"recorded ...{_short(recorded)}): were images replaced?")
        return None

    def announce(self, study: optuna.Study, target: int) -> bool:
        """Say where `study` stands; False when it already holds `target` finished trials."""
        return announce(study, target, str(self.prep.device), self.prep.storage, self.out)

    def optimize(self, study: optuna.Study, objective: Callable[[optuna.Trial], float], *, target: int,
                 sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner | None = None,
                 timeout: float | None = None, max_failures: int | None = loop.MAX_FAILURES_IN_A_ROW) -> None:
        """Run `objective`'s trials of `study` up to `target` (`loop.optimize`; `max_failures`:
        failed trials in a row that stop it, None for never)."""
        study.sampler = sampler
        study.pruner = pruner or optuna.pruners.NopPruner()
        retry = getattr(self._store, "get_heartbeat_stale_trial_callback", lambda: None)()
        if isinstance(retry, storage.RetryAndNote) and self._trainer is not None:
            retry.abandon = self._trainer.abandon  # a dead worker's trial that no retry will resume: its checkpoint
        try:
            loop.optimize(study, objective, target=target, out=self.out, metric=self.prep.space.study.metric,
                          timeout=timeout, cuda=self.prep.device.type == "cuda", max_failures=max_failures,
                          stale_after_s=storage.GRACE_FACTOR * self._heartbeat)
        finally:
            if self._trainer is not None:
                self._trainer.pages.close()  # the last trials' figures and notes

    def summary(self, study: optuna.Study) -> None:
        print_summary(study, self.prep.space.study.metric, self.prep.storage, self.out)


def _short(content: str) -> str:
    """A content hash as messages show it: its last 12 hex digits."""
    return content[-12:]


def direction_name(direction: str | optuna.study.StudyDirection) -> str:
    return direction.name.lower() if isinstance(direction, optuna.study.StudyDirection) else direction


def adopt(store: optuna.storages.BaseStorage, name: str, direction: str | optuna.study.StudyDirection,
          ours: Callable[[optuna.Study], bool], url: str | storage.Resolved) -> optuna.Study:
    """The study `name`: created in `direction` if the storage has none, else loaded and checked
    (`check_adoptable`): never a same-named study that this tool did not make."""
    direction = direction_name(direction)
    if name not in storage.study_names(store):
        try:
            # Optuna types `direction` as the two names' Literal and checks a str itself (ValueError)
            return optuna.create_study(study_name=name, storage=store,
                                       direction=cast(Literal["minimize", "maximize"], direction))
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another worker created it a moment ago: load and check it like any other
    study = optuna.load_study(study_name=name, storage=store)
    check_adoptable(study, direction, ours, url)
    return study


def check_adoptable(study: optuna.Study, direction: str | optuna.study.StudyDirection,
                    ours: Callable[[optuna.Study], bool], url: str | storage.Resolved) -> None:
    """Refuse a same-named study this tool did not make: one that optimises in another direction
    (its sampler would minimise what we maximise, and "best" would be the worst), or one that holds
    trials without our record of what defines them (they would count toward the target and their
    attributes be overwritten). A study with no trials is taken over: a crash between creating a
    study and recording it leaves exactly that. Records can be forged by whoever can write to the
    storage: this guards against accidents; code is guarded by `registry.trusted_objective`."""
    direction = direction_name(direction)
    where = f"study {study.study_name} in {storage.resolve(url).shown}"
    fork = "; choose another name with --study-name"
    if len(study.directions) != 1:
        raise InputError(f"{where} has {len(study.directions)} objectives, not made by this tool{fork}")
    found = study.direction.name.lower()
    if found != direction:
        raise InputError(f"{where} is set to {found} its objective, this study would {direction} it: not made by "
                         f"this study{fork}")
    if study.get_trials(deepcopy=False) and not ours(study):
        raise InputError(f"{where} holds trials that this tool did not record (no record of what defines them): not "
                         f"made by this study{fork}")


def run_study(opts: RunOptions, out: Output) -> optuna.Study:
    """Run (or resume) the search study until it holds the target number of finished trials: with
    `opts.workers` > 1 in that many worker processes, else here."""
    session = Session.open(opts, out, check=lambda s: s.check_search_study(opts.allow_space_change))
    prep = session.prep
    study = session.search_study(opts.allow_space_change)
    if opts.worker is None:
        loop.requeue_interrupted(study, out)
    if not session.announce(study, prep.target):
        return study
    if opts.workers > 1 and opts.worker is None:
        run_workers(opts, prep.device, out)
        session.summary(study)
        return study
    sampler = make_sampler(prep.space, run_seed(prep.space, len(study.trials), opts.worker))
    session.optimize(study, SearchObjective(study, prep, session.trainer), target=prep.target, sampler=sampler,
                     pruner=make_pruner(prep.space, prep.module.ROLES), timeout=opts.timeout)
    if opts.worker is None:
        session.summary(study)
    return study
