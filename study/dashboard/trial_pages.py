"""A trial's page on the dashboard: its figures (curves, test confusion matrix) as Optuna artifacts
and a Markdown note (config, best epoch, validation and test metrics, fail or prune reason).

Drawing the figures costs more than a short trial can spare, so it happens while the next trial
trains: in a separate, low-priority process (matplotlib in a thread of the training process would
hold the GIL that PyTorch's Python loop needs between kernels, and slow every step), fed by one
background thread. Optuna lets an artifact be attached only while its trial is running, so the
trial attaches each figure's file at once as a small placeholder image (`upload_artifact`,
milliseconds), and the thread then writes the drawn figure under the same artifact id
(`ArtifactStore.write`). Notes are study attributes and may be written after the trial has
finished. `close()` waits for the queue, so a process ends with every page drawn.
"""

from __future__ import annotations

import atexit
import io
import math
import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import optuna
from optuna.artifacts import upload_artifact
from optuna.storages import BaseStorage

from objectives.metrics import headline_first, long_label
from study.dashboard.renderer import receive as renderer_receive
from study.dashboard.renderer import send as renderer_send
from study.log import get_logger
from study.records import TrialRecord, interval_bounds, interval_resamples

_log = get_logger(__name__)

# A 1x1 transparent PNG: the artifact's content until its figure is drawn (a dashboard opened in
# that instant shows an empty image, never a broken one).
PLACEHOLDER = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                            "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")
class ArtifactStore(Protocol):
    """What Optuna's artifact stores (file system, S3, GCS) offer (`upload_artifact` takes one);
    the pages only write an artifact's bytes."""

    def open_reader(self, artifact_id: str) -> BinaryIO: ...

    def write(self, artifact_id: str, content_body: BinaryIO) -> None: ...

    def remove(self, artifact_id: str) -> None: ...


@dataclass(frozen=True)
class Page:
    """Everything a trial's page shows, as plain data (no model, no live trial).

    `state` is the outcome the note states: COMPLETE, PRUNED or FAIL (a trial is still running
    while the trainer builds its page)."""

    study_name: str
    number: int
    state: str
    metric: str
    params: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    val: Mapping[str, Any] = field(default_factory=dict)
    test: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None
    curves: Mapping[str, list[Any]] = field(default_factory=dict)
    confusion: Sequence[Sequence[int]] | None = None
    class_names: Sequence[str] = ()
    seconds: float | None = None
    intervals: Mapping[str, Any] | None = None  # records.TEST_INTERVALS; None: an older run, or no test
    epochs: int | None = None  # the epochs the trial was to train (the objective's `ROLES.epochs`)


def note(page: Page) -> str:
    """The trial's Markdown note: outcome and reason, metrics table, then the config."""
    lines = [f"## Trial {page.number}: {page.state.lower()}"]
    if page.reason:
        lines.append(f"**{'Pruned' if page.state == 'PRUNED' else 'Failed'}:** {page.reason}")
    facts = []
    if page.best_epoch is not None:
        of = f" of {page.epochs}" if page.epochs else ""
        facts.append(f"best epoch (on validation {page.metric}): **{page.best_epoch}**{of}")
    if page.seconds is not None:
        facts.append(f"training time: {page.seconds:.1f} s")
    lines += [" · ".join(facts)] if facts else []
    shown = [m for m in headline_first(page.metric) if m in page.val or m in page.test]  # the registry's
    if shown:
        lines += ["", "| split | " + " | ".join(long_label(m) for m in shown) + " |",
                  "| :-- | " + " | ".join("--:" for _ in shown) + " |"]
        bounds = interval_bounds(page.intervals)
        for split, values in (("validation", page.val), ("test", page.test)):
            if values:
                cells = [_number(values.get(m), m) + (_bounds(bounds.get(m)) if split == "test" else "")
                         for m in shown]
                lines.append(f"| {split} | " + " | ".join(cells) + " |")
        if page.test and page.intervals:
            lines.append(f"\nTest: 95 % intervals [low, high] from a bootstrap over test patients "
                         f"({interval_resamples(page.intervals)} resamples).")
        elif page.test and page.state == "COMPLETE":
            lines.append("\nTest intervals missing (older run).")
    sampled = {k: v for k, v in page.params.items()}
    rest = {k: v for k, v in page.config.items() if k not in sampled}
    if sampled:
        lines += ["", "**Sampled:** " + ", ".join(f"`{k}={_value(v)}`" for k, v in sampled.items())]
    if rest:  # four settings per line: the note's panel is narrow and does not wrap code
        items = [f"`{k}={_value(v)}`" for k, v in rest.items()]
        rows = [", ".join(items[i:i + 4]) for i in range(0, len(items), 4)]
        lines += ["", "**Config:** " + ",  \n".join(rows)]
    return "\n".join(lines) + "\n"


def heartbeat_note(trial: optuna.trial.FrozenTrial, metric: str, retried: bool) -> str:
    """The note of a trial failed because its worker stopped sending heartbeats (killed, lost)."""
    record = TrialRecord.from_trial(trial)
    then = ("Optuna queued a retry with the same parameters, which resumes from its checkpoint" if retried
            else "its retries are used up, so it stays failed")
    page = Page("", trial.number, "FAIL", metric, dict(trial.params), record.config,
                reason=f"its worker stopped sending heartbeats after {record.epochs} epoch(s) (killed or lost); {then}",
                curves=record.curves)
    return note(page)


def save_note(study: optuna.Study, storage: BaseStorage, number: int, text: str) -> None:
    """optuna-dashboard's `save_note` for trial `number` of `study` (finished or not)."""
    from optuna_dashboard import save_note as dashboard_save_note

    dashboard_save_note(_trial(study, storage, number), text)


def read_note(study: optuna.Study, storage: BaseStorage, number: int) -> str:
    """The note trial `number` of `study` has on the dashboard ("" when none)."""
    from optuna_dashboard import get_note

    return get_note(_trial(study, storage, number))


def _trial(study: optuna.Study, storage: BaseStorage, number: int) -> optuna.Trial:
    """A handle on trial `number` through the storage's public ids (a FrozenTrial has none)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))


class TrialPages:
    """Attaches each trial's figures (placeholders at once, drawn on the background thread) and
    saves its note. `enabled=False` does nothing: the off arm of `benchmarks/overhead.py`."""

    def __init__(self, artifacts: ArtifactStore | None, *, enabled: bool = True) -> None:
        self.artifacts = artifacts
        self.enabled = enabled
        self._jobs: queue.Queue[tuple[optuna.Study, BaseStorage, Page, dict[str, str]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def attach(self, trial: optuna.Trial, page: Page) -> None:
        """Call while `trial` still runs: attach its figures' placeholders, queue drawing them and
        the note. Never raises: a page that cannot be made costs a warning, not the trial."""
        if not self.enabled:
            return
        ids: dict[str, str] = {}
        try:
            if self.artifacts is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    for kind in _figure_kinds(page):
                        path = Path(tmp) / f"{kind}_trial{page.number}.png"
                        path.write_bytes(PLACEHOLDER)
                        ids[kind] = upload_artifact(artifact_store=self.artifacts, file_path=str(path),
                                                    study_or_trial=trial, mimetype="image/png")
        except Exception as exc:  # noqa: BLE001 - a dashboard page must never fail a trained trial
            self._warn(page, exc)
        self._start()
        self._jobs.put((trial.study, trial.storage, page, ids))

    def close(self) -> None:
        """Wait until every queued page is drawn and saved (a process that ends without calling
        it still waits: `attach` registers this with `atexit`)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="trial-pages", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def _drain(self) -> None:
        renderer: subprocess.Popen[bytes] | None = None
        try:
            while (job := self._jobs.get()) is not None:
                study, storage, page, ids = job
                try:
                    if ids:  # figures were attached, so there is a store (`attach`)
                        if renderer is None or renderer.poll() is not None:
                            renderer = _start_renderer()
                        artifacts = self.artifacts
                        assert artifacts is not None
                        for kind, artifact_id in ids.items():
                            artifacts.write(artifact_id, io.BytesIO(_render(renderer, kind, page)))
                    save_note(study, storage, page.number, note(page))
                except Exception as exc:  # noqa: BLE001 - see attach
                    self._warn(page, exc)
        finally:
            if renderer is not None:
                if renderer.stdin is not None:  # (always: the renderer's stdin is a pipe)
                    renderer.stdin.close()
                renderer.wait()

    def _warn(self, page: Page, exc: BaseException) -> None:
        text = f"trial {page.number}'s dashboard page: {type(exc).__name__}: {exc}".splitlines()[0]
        self.errors.append(text)
        _log.warning("%s", text)


def _start_renderer() -> subprocess.Popen[bytes]:
    """`study.dashboard.renderer` in a child process, importable from wherever this `study` package is."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen([sys.executable, "-m", "study.dashboard.renderer"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)


def _render(renderer: subprocess.Popen[bytes], kind: str, page: Page) -> bytes:
    """One figure's PNG from the renderer process."""
    stdin, stdout = renderer.stdin, renderer.stdout
    assert stdin is not None and stdout is not None  # `_start_renderer` opens both pipes
    fields = {"number": page.number, "state": page.state, "metric": page.metric, "curves": dict(page.curves),
              "confusion": page.confusion, "class_names": list(page.class_names)}
    renderer_send(stdin, True, pickle.dumps((kind, fields)))
    answer = renderer_receive(stdout)
    if answer is None:
        raise RuntimeError(f"the figure renderer exited with code {renderer.wait()}")
    ok, payload = answer
    if not ok:
        raise RuntimeError(f"the figure renderer could not draw {kind}: {payload.decode()}")
    return payload


def _figure_kinds(page: Page) -> list[str]:
    kinds = ["curves"] if page.curves.get("epoch") else []
    if page.confusion is not None and page.class_names:
        kinds.append("confusion")
    return kinds


def _number(value: Any, metric: str = "") -> str:
    """A metric at 3 decimals; a loss (unbounded) at 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}" if metric == "loss" else f"{value:.3f}"


def _bounds(bounds: Sequence[float | None] | None) -> str:
    """`` [low, high]`` of a recorded interval; empty where there is none (the loss, an old run)."""
    if not bounds or any(b is None for b in bounds):
        return ""
    return f" [{bounds[0]:.3f}, {bounds[1]:.3f}]"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
