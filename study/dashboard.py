"""`study dashboard`: optuna-dashboard on the study's storage, with the trial-figure artifacts.

It reads the same storage `run` writes, so it can be open while a study runs; binds 127.0.0.1
unless told otherwise, since the dashboard has no authentication.
"""

from __future__ import annotations

import optuna
from optuna.artifacts import FileSystemArtifactStore

from objectives.errors import InputError
from study import storage


def study_url(host: str, port: int, study_id: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard/studies/{study_id}"


def serve(name: str, url: str, artifacts: FileSystemArtifactStore, host: str, port: int) -> None:
    """Serve until interrupted; prints the study's URL first."""
    from optuna_dashboard import run_server

    store = storage.open_storage(url)
    try:
        study_id = store.get_study_id_from_name(name)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
        raise InputError(f"no study {name!r} in {storage.mask(url)} (it has: {', '.join(names) or 'none'})") from None
    print(f"dashboard: {study_url(host, port, study_id)}  (storage {storage.mask(url)}; Ctrl-C stops)", flush=True)
    try:
        run_server(store, host=host, port=port, artifact_store=artifacts)
    except OSError as exc:
        raise InputError(f"cannot serve on {host}:{port} ({exc.strerror or exc})") from None
