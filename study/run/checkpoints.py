"""Checkpoints of running trials: saved atomically after epochs, loaded by the attempt that
re-runs a trial (a heartbeat retry or a re-queued interrupted trial)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from objectives.atomic import atomic_path, report_damaged
from objectives.contract import RESUMES_FROM
from study.records import TrialRecord, TrialWriter
from study.run.reporter import Reporter

OWNER = "owner"  # {"study": name, "trial": number}: whose checkpoint it is


def checkpoint_file(folder: Path, number: int) -> Path:
    return folder / f"trial{number}.pt"


def checkpoint_owner(study_name: str, number: int) -> dict[str, Any]:
    """What a checkpoint records of the trial that saved it: a checkpoint found in a shared or
    copied results folder is resumed only by the trial it names (`resume_state`)."""
    return {"study": study_name, "trial": number}


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Atomically (`objectives.atomic`): a kill mid-write leaves the previous epoch's. Through a
    Python file, so a full or read-only disk raises OSError (torch's own writer of a path raises
    a RuntimeError, which would pass for the trial's failure, `failures.is_environment`)."""
    with atomic_path(path) as partial, partial.open("wb") as file:
        torch.save(state, file)


def read_checkpoint(path: Path, keys: Collection[str]) -> tuple[dict[str, Any] | None, str]:
    """(the checkpoint at `path`, "") or (None, why not): it does not load (truncated, not a
    checkpoint) or lacks one of `keys` (the objective's `CHECKPOINT_KEYS`: what its `run` resumes
    from) or what the runner replays (`objectives.contract.RESUMES_FROM`)."""
    keys = set(keys) | RESUMES_FROM
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises RuntimeError, EOFError, UnpicklingError, ...
        return None, f"{type(exc).__name__}: {exc}"
    missing = keys - set(state) if isinstance(state, dict) else keys
    if missing:
        return None, f"it lacks {', '.join(sorted(missing))}"
    rows = len(state["curves"].get("epoch", []))
    if rows != int(state["epoch"]):
        return None, f"{rows} curve rows for epoch {state['epoch']}"
    return state, ""


def resume_state(record: TrialRecord, folder: Path, writer: TrialWriter, reporter: Reporter,
                 study_name: str, keys: Collection[str]) -> dict[str, Any] | None:
    """The checkpoint of the attempt this trial re-runs, with its epochs re-reported to Optuna so
    the pruner and the curves continue where that attempt stopped; None to start at epoch 1.
    A checkpoint that names another study or trial (copied, planted, or saved before checkpoints
    named their owner) is not loaded: `weights_only` keeps code out, not someone else's weights."""
    origin = record.origin
    if origin is None:
        return None
    path = checkpoint_file(folder, origin)
    if not path.is_file():
        return None
    state, damage = read_checkpoint(path, keys)
    if state is None:
        report_damaged(path, damage, f"trial {writer.trial.number} restarts from epoch 1")
        path.unlink(missing_ok=True)
        return None
    owner = state.get(OWNER)
    if owner != checkpoint_owner(study_name, origin):
        whose = (f"it belongs to study {owner.get('study')!r} trial {owner.get('trial')!r}"
                 if isinstance(owner, dict) else "it does not say which study and trial it belongs to")
        report_damaged(path, whose, f"trial {writer.trial.number} restarts from epoch 1 (the file is left as it is)")
        return None
    writer.resumed(origin, int(state["epoch"]))
    rows = [dict(zip(state["curves"], values)) for values in zip(*state["curves"].values())]
    for row in rows:
        reporter.replay(int(row["epoch"]), row)
    return state
