"""Checkpoints of running trials: saved atomically after epochs, loaded by the attempt that
re-runs a trial (a heartbeat retry or a re-queued interrupted trial)."""

from __future__ import annotations

from pathlib import Path

import torch

from objectives.atomic import atomic_path
from study.records import TrialRecord, TrialWriter
from study.run.reporter import Reporter


def checkpoint_file(folder: Path, number: int) -> Path:
    return folder / f"trial{number}.pt"


def save_checkpoint(state: dict, path: Path) -> None:
    """Atomically (`objectives.atomic`): a kill mid-write leaves the previous epoch's."""
    with atomic_path(path) as partial:
        torch.save(state, partial)


def resume_state(record: TrialRecord, folder: Path, writer: TrialWriter, reporter: Reporter) -> dict | None:
    """The checkpoint of the attempt this trial re-runs, with its epochs re-reported to Optuna so
    the pruner and the curves continue where that attempt stopped; None to start at epoch 1."""
    origin = record.origin
    if origin is None or not checkpoint_file(folder, origin).is_file():
        return None
    state = torch.load(checkpoint_file(folder, origin), map_location="cpu", weights_only=True)
    writer.resumed(origin, int(state["epoch"]))
    rows = [dict(zip(state["curves"], values)) for values in zip(*state["curves"].values())]
    for row in rows:
        reporter.replay(int(row["epoch"]), row)
    return state
