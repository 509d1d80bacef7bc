"""`study list`: the named studies and every study in the storage, with their trial counts."""

from __future__ import annotations

import argparse

import optuna

from study import storage
from study.cli.common import add_storage, storage_of
from study.records import StudyRecord, Summary
from study.spaces import registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_storage(parser)


def run(args: argparse.Namespace) -> int:
    where = storage_of(args)
    present: list[str] = []
    if not where.absent:
        store = storage.open_storage(where, read_only=True)
        present = storage.study_names(store)
    print(f"storage: {where.shown}")
    print(f"{'study':<24} {'complete':>8} {'pruned':>7} {'failed':>7} {'running':>8}  best")
    for name in sorted(set(registry.named_studies()) | set(present)):
        if name not in present:
            print(f"{name:<24} {'-':>8} {'-':>7} {'-':>7} {'-':>8}  not started")
            continue
        study = optuna.load_study(study_name=name, storage=store)
        summary = Summary.of(study)
        metric = StudyRecord.from_study(study).metric
        best = f"{metric}={summary.best.value:.4f} (trial {summary.best.number})" if summary.best else "-"
        failed = "; failed: " + ", ".join(f"{r} x{n}" for r, n in summary.reasons) if summary.reasons else ""
        print(
            f"{name:<24} {summary.complete:>8} {summary.pruned:>7} {summary.failed:>7} {summary.running:>8}  "
            f"{best}{failed}"
        )
    return 0
