"""`study dashboard`: optuna-dashboard on the study's storage, with the trial-figure artifacts.

It reads the same storage `run` writes, so it can be open while a study runs; binds 127.0.0.1
unless told otherwise, since the dashboard has no authentication.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import optuna

from objectives.errors import InputError
from study import paths, storage
from study.log import get_logger

_log = get_logger(__name__)


def study_url(host: str, port: int, study_id: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard/studies/{study_id}"


def serve(name: str, where: storage.Resolved, results: Path, host: str, port: int) -> None:
    """Serve until interrupted: the storage and the study checked, then the address bound, and
    only then the artifact folder made and the study's URL printed (optuna-dashboard's own server
    would print "Listening on ..." before it fails to bind)."""
    from optuna_dashboard import run_server

    store = storage.open_storage(where, existing=True)
    try:
        study_id = store.get_study_id_from_name(name)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
        raise InputError(f"no study {name!r} in {where.shown} (it has: {', '.join(names) or 'none'})") from None
    check_bind(host, port)
    if not is_loopback(host):
        _log.warning("serving on %s, not a loopback address: the dashboard has no authentication, so anyone who "
                     "reaches %s:%s can read and annotate every study in this storage", host, host, port)
    print(f"dashboard: {study_url(host, port, study_id)}  (storage {where.shown}; Ctrl-C stops)", flush=True)
    try:
        run_server(store, host=host, port=port, artifact_store=paths.artifact_store(results))
    except OSError as exc:
        raise InputError(f"cannot serve on {host}:{port} ({exc.strerror or exc})") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, port: int) -> None:
    """Bind `host:port` once and let it go: a port in use or an address this machine lacks is one
    line before anything is printed or created."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise InputError(f"cannot serve on {host}:{port} ({exc.strerror or exc})") from None
