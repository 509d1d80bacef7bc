"""Opening Optuna storages: which one a command or call means (`resolve`: --storage, $STUDY_STORAGE,
the results folder's SQLite file, or an Optuna storage object), any RDB URL or a JournalStorage
file, one-line errors that say where the URL came from, masked passwords."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sqlite3
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url

from objectives.errors import InputError
from study.log import get_logger

_log = get_logger(__name__)

HEARTBEAT_SECONDS = 60
GRACE_FACTOR = 3  # a trial whose worker sent no heartbeat for 3 intervals is failed and retried
MAX_RETRY = 2


STORAGE_ENV = "STUDY_STORAGE"  # the storage URL from the environment: a password on the command line shows in `ps`
JOURNAL = "journal"  # journal:///path.log: Optuna's JournalStorage on one append-only file (no heartbeats)

# Where a storage came from, as its errors name it: a URL the user never typed on this command line
# (the environment's, the default file) must not be blamed on --storage.
FLAG, ENVIRONMENT, ARGUMENT, DEFAULT = "--storage", f"${STORAGE_ENV}", "storage=", "default"
LABELS = {FLAG: "--storage {}", ENVIRONMENT: f"${STORAGE_ENV} {{}}", ARGUMENT: "storage={}",
          DEFAULT: "default storage {}"}


def default_url(results_dir: Path) -> str:
    return f"sqlite:///{(results_dir / 'optuna.db').resolve()}"


@dataclass(frozen=True)
class Resolved:
    """The storage a command or an API call uses: its URL (or the Optuna storage object it was
    given, passed through unchanged) and where it came from (`origin`: FLAG, ENVIRONMENT,
    ARGUMENT or DEFAULT), so every message shows it masked and names its source."""

    url: str
    origin: str = FLAG
    given: BaseStorage | None = None

    @property
    def shown(self) -> str:
        """The URL with its password masked (`mask`), or the storage object's class."""
        return f"{type(self.given).__name__} object" if self.given is not None else mask(self.url)

    @property
    def label(self) -> str:
        """How errors begin: ``--storage URL``, ``$STUDY_STORAGE URL``, ``storage=URL``, ..."""
        return LABELS.get(self.origin, self.origin + " {}").format(self.shown)

    @property
    def file(self) -> Path | None:
        """The local file of a SQLite or journal URL; None for servers, in-memory and objects."""
        return None if self.given is not None else local_file(self.url)

    @property
    def absent(self) -> bool:
        """A local storage file that does not exist yet: a new storage, which holds no study."""
        return self.file is not None and not self.file.exists()


def require_file(where: Resolved, hint: str = "") -> None:
    """A one-line InputError where `where` is a local file that does not exist: a command or call
    that only reads must not create an empty storage (`hint`: what else the caller could do)."""
    if where.absent:
        raise InputError(f"no storage at {where.file}; run a study first{hint}")


def resolve(given: str | BaseStorage | Resolved | None = None, *, results: str | Path = "results",
            origin: str = FLAG, environ: Mapping[str, str] | None = None) -> Resolved:
    """The one place that decides which storage is meant: `given` (a URL from --storage or the
    API's `storage=`, named by `origin`; an Optuna `BaseStorage`, passed through), else
    $STUDY_STORAGE (`environ`, default os.environ), else results/optuna.db. An empty string counts
    as not given, as an unset variable does."""
    if isinstance(given, Resolved):
        return given
    if isinstance(given, BaseStorage):
        return Resolved("", ARGUMENT if origin == FLAG else origin, given)
    if given:
        return Resolved(given, origin)
    from_env = (os.environ if environ is None else environ).get(STORAGE_ENV)
    if from_env:
        return Resolved(from_env, ENVIRONMENT)
    return Resolved(default_url(Path(results)), DEFAULT)


# query parameters that carry a password (libpq's and the drivers' spellings)
SECRET_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword"})


def malformed(url: str) -> str | None:
    """Why `url` cannot be shown even masked, or None. A raw ``@`` in a password
    (``postgresql://u:p@ss@host/db``) makes the host ``ss@host`` and the password half shown: such a
    URL is never echoed."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    if authority.count("@") > 1:
        return "more than one '@' before the host (write an '@' in the password as %40)"
    return None


def mask(url: str) -> str:
    """The URL with any password (in the user part or the query) replaced by ***, for everything
    the tool prints or writes; a URL that does not parse is not echoed at all. Never raises: it
    builds error messages."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("sqlite", JOURNAL):
        return url  # a file path: no credentials, and shown as typed (SQLAlchemy would escape '@')
    hidden = f"{scheme}://<not shown>" if scheme.replace("+", "").isalnum() else "<not shown>"
    if malformed(url):
        return hidden
    try:
        parsed = make_url(url)
        query = {k: ("***" if k.lower() in SECRET_KEYS else v) for k, v in parsed.query.items()}
        shown = parsed.set(query=query).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - ArgumentError, a port that is not a number (ValueError), ...
        return hidden
    return shown.replace("%2A%2A%2A", "***")


def sqlite_file(url: str) -> Path | None:
    """The database file of a sqlite URL, None for other backends, in-memory databases and URLs
    that do not parse (`check_url` says what is wrong with those)."""
    return local_file(url, ("sqlite",))


def local_file(url: str, backends: tuple[str, ...] = ("sqlite", JOURNAL)) -> Path | None:
    """The file of a sqlite or journal URL (three slashes: a relative path, four: an absolute one,
    as SQLAlchemy reads sqlite URLs), None otherwise."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return None
    if parsed.get_backend_name() not in backends or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def with_driver(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy and ``mysql://`` means mysqlclient; the
    `postgres` and `mysql` extras install psycopg 3 and PyMySQL, so a plain URL is pointed at them
    where the default driver is absent (an explicit ``scheme+driver://`` is left alone)."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
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


def check_url(where: str | Resolved) -> str:
    """The URL's backend name, after checking that it parses and its driver imports; this
    connects to nothing, so it can run before any other work. (Resolving the dialect alone does
    not import the driver: importing its DBAPI module does.) A storage object passes ("")."""
    where = resolve(where)
    if where.given is not None:
        return ""
    url = where.url
    problem = malformed(url)
    if problem is not None:
        raise InputError(f"{where.label}: a malformed URL, {problem}")
    if url.split("://", 1)[0] == JOURNAL:
        if local_file(url) is None:
            raise InputError(f"{where.label}: a journal URL names a file (journal:///results/optuna.log)")
        return JOURNAL
    try:
        parsed = make_url(with_driver(url))
        parsed.port  # noqa: B018 - a port that is not a number raises here, not at connect time
        dialect = parsed.get_dialect()
    except sqlalchemy.exc.ArgumentError:
        raise InputError(
            f"{where.label}: not a storage URL (e.g. sqlite:///results/optuna.db, postgresql://user@host/db)"
        ) from None
    except ValueError:
        raise InputError(f"{where.label}: the port is not a number") from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise InputError(
            f"{where.label}: unknown database scheme {parsed.drivername!r} (use sqlite://, postgresql:// or journal://)"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        backend = parsed.get_backend_name()
        hint = DRIVER_HINTS.get(backend, f"install a Python driver for {backend}")
        raise InputError(f"{where.label}: database driver missing ({exc}); {hint}") from None
    return parsed.get_backend_name()


def check_for_writing(where: str | Resolved) -> str:
    """`check_url`, and a SQLite file that exists must not be another program's database: one
    that holds tables but none of Optuna's is refused before Optuna adds its own to it."""
    where = resolve(where)
    backend = check_url(where)
    path = sqlite_file(where.url) if where.given is None else None
    if path is not None and path.is_file():
        tables = _sqlite_tables(path, where)
        if tables and not tables & OPTUNA_TABLES:
            raise InputError(f"{where.label}: not an Optuna storage (it holds other tables: "
                             f"{', '.join(sorted(tables)[:5])}); left untouched, give another file")
    return backend


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
        from study import records
        from study.dashboard import trial_pages

        attempts = records.retry_attempts(trial)  # before Optuna's retry appends to the history
        super().__call__(study, trial)
        if self.storage is None:
            return

        retried = attempts <= self.max_retry
        try:
            records.record_stale_failure(self.storage, trial._trial_id)
            if not retried and self.abandon is not None:
                self.abandon(study.study_name, trial.number)
            text = trial_pages.heartbeat_note(trial, records.StudyRecord.metric_of(study), retried)
            trial_pages.save_note(study, self.storage, trial.number, text)
        except Exception as exc:  # noqa: BLE001 - the bookkeeping must not stop the retry (already queued)
            _log.warning("trial %s's failure record: %s: %s", trial.number, type(exc).__name__, exc)


def open_storage(where: str | Resolved | BaseStorage, *, heartbeat: int = HEARTBEAT_SECONDS,
                 read_only: bool = False, existing: bool = False) -> BaseStorage:
    """An RDB storage with heartbeats, so a trial whose worker died is failed and retried with the
    same parameters instead of staying RUNNING; unreachable, damaged or malformed storages raise
    InputError in one line. SQLite waits up to 60 s for a lock, so several local workers share one file.
    A storage object is returned as it is; a journal URL opens Optuna's JournalStorage (`open_journal`).

    `existing` (report, dashboard): the storage must already hold Optuna's tables, which are looked
    for before Optuna is let near it (its RDBStorage creates tables and stamps versions even with
    `skip_table_creation`), and no folder is created; `read_only` (list, `load_trials`) also opens a
    SQLite file read-only and runs no heartbeat."""
    where = resolve(where)
    if where.given is not None:
        return where.given
    url = where.url
    scheme = check_url(where) if read_only or existing else check_for_writing(where)
    if scheme == JOURNAL:
        return open_journal(where, reading=read_only or existing)
    path = sqlite_file(url)
    target = with_driver(url)
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if scheme == "sqlite" else {"pool_pre_ping": True}
    if read_only or existing:
        target = _read_only_target(where, path)
        if path is not None and not read_only:
            target = with_driver(url)
        elif path is not None:  # sqlite3 opens the file itself, read-only: SQLAlchemy's URL would re-quote the path
            uri = _read_only_uri(path)
            engine_kwargs = {"creator": lambda: sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False)}
    elif path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5 but are what we rely on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if read_only:
                return RDBStorage(target, engine_kwargs=engine_kwargs, skip_table_creation=True)
            retry = RetryAndNote(max_retry=MAX_RETRY)
            store = RDBStorage(
                target,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=GRACE_FACTOR * heartbeat,
                heartbeat_stale_trial_callback=retry,
            )
            retry.storage = store
            return store
    except RuntimeError as exc:  # Optuna's schema check: tables of an older or newer Optuna
        raise InputError(schema_message(where, str(exc))) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError, ValueError) as exc:
        raise InputError(f"{where.label}: cannot open storage ({reason(exc)})") from None


def open_journal(where: Resolved, *, reading: bool) -> JournalStorage:
    """Optuna's JournalStorage on the URL's file: one append-only log that processes on one machine
    (or a shared file system) write under a lock file beside it. It has no heartbeats: a trial whose
    worker died stays RUNNING. Reading needs the file (and changes nothing); writing creates it."""
    path = local_file(where.url)
    if path is None:  # check_url refused it already
        raise InputError(f"{where.label}: a journal URL names a file")
    if reading and not path.is_file():
        raise InputError(f"no storage at {path}; run a study first")
    if not reading:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except (OSError, ValueError, KeyError, TypeError) as exc:  # not a journal: a line that is not Optuna's JSON
        raise InputError(f"{where.label}: cannot open storage ({reason(exc)})") from None


def reason(exc: BaseException) -> str:
    """The first line of a storage error, from the driver's own exception where there is one."""
    cause = getattr(exc, "orig", None) or exc.__cause__ or exc
    text = str(cause).strip() or type(cause).__name__
    return text.splitlines()[0][:300]


def schema_message(where: str | Resolved, optuna_says: str) -> str:
    """Optuna refuses tables another Optuna version set up: say which way and what to do."""
    where = resolve(where)
    if "upgrade" in optuna_says:
        return (f"{where.label}: its tables were set up by an older Optuna than this one "
                f"({optuna.__version__}); upgrade them with `optuna storage upgrade --storage URL`, but on a shared "
                f"storage that breaks colleagues still on the older Optuna: upgrade everyone together")
    return (f"{where.label}: its tables were set up by a newer Optuna than this one ({optuna.__version__}); "
            f"install that Optuna (pip install -U optuna)")


def _read_only_uri(path: Path) -> str:
    return f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"


OPTUNA_TABLES = frozenset({"studies", "trials", "version_info", "alembic_version"})


def _sqlite_tables(path: Path, where: Resolved) -> set[str]:
    """The tables of a SQLite file, read through a read-only connection (nothing is written)."""
    try:
        with contextlib.closing(sqlite3.connect(_read_only_uri(path), uri=True, timeout=60)) as db:
            return {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
    except sqlite3.Error as exc:
        raise InputError(f"{where.label}: cannot open storage ({exc})") from None


def _read_only_target(where: Resolved, path: Path | None) -> str:
    """The URL to open `where` with for reading only, after checking it holds Optuna's tables."""
    if path is not None:
        if not path.is_file():
            raise InputError(f"no storage at {path}; run a study first")
        if not OPTUNA_TABLES <= _sqlite_tables(path, where):
            raise InputError(f"{where.label}: not an Optuna storage (it lacks Optuna's tables); left untouched")
        return "sqlite://"
    try:
        engine = sqlalchemy.create_engine(with_driver(where.url), pool_pre_ping=True)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise InputError(f"{where.label}: cannot open storage ({reason(exc)})") from None
    if not OPTUNA_TABLES <= tables:
        raise InputError(f"{where.label}: not an Optuna storage (it lacks Optuna's tables); left untouched")
    return with_driver(where.url)


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
