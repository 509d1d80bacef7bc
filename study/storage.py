"""Opening Optuna storages: the default SQLite file, any RDB URL, one-line errors, masked passwords."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import make_url

from objectives.errors import InputError

HEARTBEAT_SECONDS = 60
GRACE_FACTOR = 3  # a trial whose worker sent no heartbeat for 3 intervals is failed and retried
MAX_RETRY = 2


def default_url(results_dir: Path) -> str:
    return f"sqlite:///{(results_dir / 'optuna.db').resolve()}"


def mask(url: str) -> str:
    """The URL with any password replaced by ***, for everything the tool prints or writes."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def sqlite_file(url: str) -> Path | None:
    """The database file of a sqlite URL, None for other backends or in-memory databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def with_driver(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy and ``mysql://`` means mysqlclient; the
    `postgres` and `mysql` extras install psycopg 3 and PyMySQL, so a plain URL is pointed at them
    where the default driver is absent (an explicit ``scheme+driver://`` is left alone)."""
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return url
    for plain, default_module, ours in (("postgresql", "psycopg2", "psycopg"), ("mysql", "MySQLdb", "pymysql")):
        if (
            parsed.drivername == plain
            and importlib.util.find_spec(default_module) is None
            and importlib.util.find_spec(ours)
        ):
            return parsed.set(drivername=f"{plain}+{ours}").render_as_string(hide_password=False)
    return url


# What to install for a database URL whose driver is missing: the project's extra where it has one.
DRIVER_HINTS = {
    "postgresql": "pip install -e '.[postgres]' (psycopg 3, used for postgresql:// URLs)",
    "mysql": "pip install -e '.[mysql]' (PyMySQL, used for mysql:// URLs)",
}


def check_url(url: str) -> str:
    """The URL's backend name, after checking that it parses and its driver imports; this
    connects to nothing, so it can run before any other work. (Resolving the dialect alone does
    not import the driver: importing its DBAPI module does.)"""
    try:
        parsed = make_url(with_driver(url))
        dialect = parsed.get_dialect()
    except sqlalchemy.exc.ArgumentError:
        raise InputError(
            f"--storage {mask(url)}: not a storage URL (e.g. sqlite:///results/optuna.db, postgresql://user@host/db)"
        ) from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise InputError(
            f"--storage {mask(url)}: unknown database scheme {make_url(url).drivername!r} "
            f"(use sqlite:// or postgresql://)"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        backend = parsed.get_backend_name()
        hint = DRIVER_HINTS.get(backend, f"install a Python driver for {backend}")
        raise InputError(f"--storage {mask(url)}: database driver missing ({exc}); {hint}") from None
    return parsed.get_backend_name()


class RetryAndNote(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker stopped sending heartbeats, its reason (`heartbeat`)
    and its dashboard note, written by the worker that fails it (no other process knows it
    failed). Its checkpoint goes to the retry, which resumes from it and then deletes it; where
    the retries are used up nothing will resume it, so `abandon` (set by the process that runs
    trials, which knows the results folder) deletes it here."""

    def __init__(self, max_retry: int) -> None:
        with warnings.catch_warnings():  # "experimental" in Optuna 5, and what heartbeats rely on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry)
        self.max_retry = max_retry
        self.storage: RDBStorage | None = None  # set once the storage that calls this exists
        self.abandon: Callable[[str, int], None] | None = None  # (study name, trial number): delete its checkpoint

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attempts = len(trial.system_attrs.get("retry_history", [])) + 1  # as Optuna counts them (before it appends)
        super().__call__(study, trial)
        if self.storage is None:
            return
        from study import records, trial_pages

        retried = attempts <= self.max_retry
        try:
            records.record_stale_failure(self.storage, trial._trial_id)
            if not retried and self.abandon is not None:
                self.abandon(study.study_name, trial.number)
            text = trial_pages.heartbeat_note(trial, study.user_attrs.get("metric", "value"), retried)
            trial_pages.save_note(study, self.storage, trial.number, text)
        except Exception as exc:  # noqa: BLE001 - the bookkeeping must not stop the retry (already queued)
            print(f"study: warning: trial {trial.number}'s failure record: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


def open_storage(url: str, *, heartbeat: int = HEARTBEAT_SECONDS) -> RDBStorage:
    """An RDB storage with heartbeats, so a trial whose worker died is failed and retried with the
    same parameters instead of staying RUNNING; unreachable or malformed URLs raise InputError.
    SQLite waits up to 60 s for a lock, so several local workers share one file."""
    scheme = check_url(url)
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs = {"connect_args": {"timeout": 60}} if scheme == "sqlite" else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5 but are what we rely on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = RetryAndNote(max_retry=MAX_RETRY)
            store = RDBStorage(
                with_driver(url),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=GRACE_FACTOR * heartbeat,
                heartbeat_stale_trial_callback=retry,
            )
            retry.storage = store
            return store
    except (sqlalchemy.exc.SQLAlchemyError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise InputError(f"--storage {mask(url)}: cannot open storage ({reason})") from None


def study_names(store: optuna.storages.BaseStorage | str) -> list[str]:
    """The names of the studies in a storage, in the storage's order."""
    return [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]


def load_study(name: str, store: optuna.storages.BaseStorage) -> optuna.Study:
    """The study `name`, or a one-line InputError naming the studies the storage has."""
    try:
        return optuna.load_study(study_name=name, storage=store)
    except KeyError:
        raise InputError(
            f"no study {name!r} in the storage (it has: {', '.join(study_names(store)) or 'none'})"
        ) from None
