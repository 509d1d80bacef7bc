"""How a command ends: one line on stderr and an exit code per error type, SIGTERM as Ctrl-C.

Shared by `python -m study` and the worker processes it starts (`study.run.worker`), so a worker
ends exactly as the command would. Bad input is `objectives.errors.InputError` (exit 2); the other
errors that end a command on purpose are `ExitError`s, each with its code. That line is printed,
not logged: ``-q`` never silences it and an application's logging set-up never reroutes it; ``-v``
shows the traceback of what ended the command before it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from objectives.errors import InputError
from study.log import get_logger

_log = get_logger(__name__)

INPUT_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT
TERMINATED_EXIT = 143  # 128 + SIGTERM
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE, as a shell pipeline expects
CUDA_ERROR_EXIT = 75  # EX_TEMPFAIL: this process cannot go on, a fresh one can resume the study
ENVIRONMENT_EXIT = 74  # EX_IOERR: the results folder, the storage or the cache failed; fix it, then resume
TRIALS_FAILING_EXIT = 1  # trials kept failing: the run stopped (see the reasons with `list` or `report`)


class ExitError(Exception):
    """An error that ends the command with `code` after one line on stderr."""

    code = 1

    def line(self) -> str:
        return f"study: error: {self}"


class UsageError(ExitError):
    """A command line argparse (or one of its validators) refused, as argparse words it."""

    code = INPUT_ERROR_EXIT

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog

    def line(self) -> str:
        return f"{self.prog}: error: {self}"


class WorkerFailed(ExitError):
    """A worker process exited with a non-zero code (its own message is above); the command ends
    with the same code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"a worker exited with code {code}")
        self.code = code


class CudaContextLost(ExitError):
    """A trial failed with a sticky CUDA error (recorded as `cuda_error`): every later CUDA call of
    this process would fail too, so it stops; a fresh process resumes the study."""

    code = CUDA_ERROR_EXIT

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"{detail}; this process can no longer use its GPU: run the same command again to resume the study"
        )


class EnvironmentFailed(ExitError):
    """The run's own environment failed (the results folder unwritable or full, the storage
    unreachable, the cache unreadable): not the trial's fault, so the run stops instead of failing
    trial after trial; the same command resumes once the environment is fixed."""

    code = ENVIRONMENT_EXIT


class TrialsFailing(ExitError):
    """`MAX_FAILURES_IN_A_ROW` trials failed in a row (`study.run.loop`): the run stops, and says
    so with a non-zero exit, so that a script or scheduler never takes it for a finished study."""

    code = TRIALS_FAILING_EXIT


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the running trial is recorded as interrupted."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def exit_code(body: Callable[[], int]) -> int:
    """Run `body` with SIGTERM raising `Terminated`; its return value, or the exit code of the
    error that ended it, after that error's one line on stderr. Any other exception is a bug and
    keeps its traceback."""
    signal.signal(signal.SIGTERM, _terminate)

    def end(line: str) -> None:  # in an except block: exc_info is the exception that ended the command
        _log.debug("what ended the command:", exc_info=True)
        print(line, file=sys.stderr)

    try:
        return body()
    except InputError as exc:
        end(f"study: error: {exc}")
        return INPUT_ERROR_EXIT
    except ExitError as exc:
        end(exc.line())
        return exc.code
    except Terminated:
        end("study: terminated (SIGTERM); run again to resume")
        return TERMINATED_EXIT
    except KeyboardInterrupt:
        end("study: interrupted; run again to resume")
        return INTERRUPTED_EXIT
    except Exception as exc:
        from study.run.failures import environment_cause  # optuna and sqlalchemy: only when something failed

        cause = environment_cause(exc)
        if cause is None:
            raise
        if isinstance(cause, BrokenPipeError):  # `study list | head`: the reader is gone, nothing to say
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's final flush is quiet
            return BROKEN_PIPE_EXIT
        end(f"study: error: {environment_line(cause)}")
        return ENVIRONMENT_EXIT


def environment_line(cause: BaseException) -> str:
    """One line for an error of the storage or a folder that escaped a command (a storage damaged
    past its first pages, a server gone mid-command, a read-only output folder)."""
    if isinstance(cause, OSError):
        where = f" ({cause.filename})" if cause.filename else ""
        return f"{cause.strerror or cause}{where}; fix the folder, then run again"
    driver = getattr(cause, "orig", None) or cause.__cause__ or cause
    text = (str(driver).strip() or type(driver).__name__).splitlines()[0][:300]
    return f"the storage failed ({text}); check it (a damaged file, a server that went away), then run again"
