"""N worker processes on one PostgreSQL study: trials per second, the storage's share of wall
time, the connections the workers hold, and one worker killed with SIGKILL mid-run.

Each worker is a light process that drives the tool's own trial loop (`study.run.loop.optimize`,
the loop `run` and every `--workers` process run) on a storage opened by `study.storage.
open_storage` (heartbeats, Optuna's retry of a dead worker's trial, its `heartbeat` reason). Its
objective is the trivial kind a plug-in objective can be: it sleeps a few milliseconds per epoch
and reports each epoch through the tool's `Reporter` (curves as a user attr, `trial.report`, the
median pruner's `should_prune`). It does not go through `TrialTrainer` (which prepares data and
imports torch): a worker of this benchmark never imports torch, and checks that it did not.

What it checks at the end: the study holds its target of finished trials (at most workers - 1
more), every trial finished or failed with a reason, none RUNNING or WAITING, no trial number
twice; the killed worker's trial was failed by the heartbeat (reason `heartbeat`) and its retry
finished. Ends with exit code 1 if any check fails.

    python benchmarks/storage_load.py --url postgresql://study:PW@127.0.0.1/study_bench --workers 16
    STUDY_BENCH_URL=postgresql://... python benchmarks/storage_load.py --workers 64 --trials 600
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/storage_load.py` from anywhere, without PYTHONPATH
    sys.path.insert(0, str(ROOT))

STUDY = "storage_load"
METRIC = "accuracy"


# ---------------------------------------------------------------- a worker (no torch)
class StorageClock:
    """Seconds the calling threads spent inside the storage's methods: every public method of the
    RDB storage instance is wrapped, so what Optuna's cache (`_CachedStorage`) sends through to
    the database is timed, the worker's heartbeat thread apart from its main thread."""

    def __init__(self, store: object) -> None:
        self.main = 0.0
        self.other = 0.0
        self.calls = 0
        for name in dir(type(store)):
            method = getattr(store, name)
            if not name.startswith("_") and callable(method) and name not in ("get_heartbeat_interval",):
                setattr(store, name, self._timed(method))

    def _timed(self, method):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                if threading.current_thread() is threading.main_thread():
                    self.main += spent
                    self.calls += 1
                else:
                    self.other += spent

        return timed


def work(url: str, index: int, target: int, epochs: int, epoch_ms: float, heartbeat: int) -> int:
    """Worker `index`: run trials of the study until it holds `target` finished ones; print its
    figures as one JSON line."""
    import optuna

    from study import storage
    from study.exits import exit_code
    from study.records import TrialWriter
    from study.run.loop import optimize
    from study.run.output import Output
    from study.run.reporter import Reporter

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    started = time.perf_counter()
    slept = [0.0]
    clock: list[StorageClock] = []

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        writer = TrialWriter(trial)
        writer.clear_failure()
        writer.config({"lr": lr, "epochs": epochs, "worker": index})
        trial.set_user_attr("worker", index)
        reporter = Reporter(trial, METRIC, epochs=epochs)
        value = 0.0
        for epoch in range(1, epochs + 1):
            before = time.perf_counter()
            time.sleep(epoch_ms / 1000)
            slept[0] += time.perf_counter() - before
            value = 1 - (1 - min(lr * 10, 0.9)) ** epoch
            reporter(epoch, {"epoch": epoch, f"val_{METRIC}": value})
        return value

    def body() -> int:
        store = storage.open_storage(url, heartbeat=heartbeat)  # as `run` opens it: a refusal is one line
        clock.append(StorageClock(store))
        study = optuna.load_study(study_name=STUDY, storage=store, sampler=optuna.samplers.RandomSampler(seed=index),
                                  pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2))
        with open(os.devnull, "w") as quiet:
            optimize(study, objective, target=target, out=Output(quiet, sys.stderr), metric=METRIC, wait_s=0.2,
                     stale_after_s=storage.GRACE_FACTOR * heartbeat)
        return 0

    code = exit_code(body)
    wall = time.perf_counter() - started
    timed = clock[0] if clock else StorageClock(None)
    print(json.dumps({"index": index, "code": code, "wall": wall, "storage": timed.main, "heartbeat": timed.other,
                      "calls": timed.calls, "slept": slept[0], "torch": "torch" in sys.modules,
                      "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
    return code


# ---------------------------------------------------------------- the parent
def fresh_study(url: str) -> None:
    import optuna

    from study import records, storage

    store = storage.open_storage(url)
    if STUDY in storage.study_names(store):
        optuna.delete_study(study_name=STUDY, storage=store)
    optuna.create_study(study_name=STUDY, storage=store, direction="maximize").set_user_attr(records.METRIC, METRIC)


class Monitor:
    """One connection, opened before the workers start (so never refused), that counts the
    connections to the benchmark's database (PostgreSQL's pg_stat_activity) and reads settings."""

    def __init__(self, url: str) -> None:
        import sqlalchemy

        from study import storage

        self.text = sqlalchemy.text
        engine = sqlalchemy.create_engine(storage.with_driver(url), poolclass=sqlalchemy.pool.NullPool)
        self.connection = engine.connect()

    def connections(self) -> int:
        query = "select count(*) from pg_stat_activity where datname = current_database()"
        count = int(self.connection.execute(self.text(query)).scalar())
        self.connection.commit()
        return count - 1  # not this one

    def setting(self, name: str) -> str:
        return str(self.connection.execute(self.text(f"show {name}")).scalar())


def finished_now(study) -> tuple[int, dict[int, int]]:
    """(finished trials, {worker index: trial number} of the RUNNING trials)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    return done, {t.user_attrs["worker"]: t.number for t in trials
                  if t.state == TrialState.RUNNING and "worker" in t.user_attrs}


def kill_inside_a_trial(study, children: list[subprocess.Popen], index: int) -> int | None:
    """SIGKILL worker `index` while it runs a trial: stopped first (SIGSTOP), so the trial it runs
    is known for certain; resumed (SIGCONT) when it was between trials. The trial killed, or None."""
    child = children[index]
    os.kill(child.pid, signal.SIGSTOP)
    time.sleep(0.1)  # what it was writing is written
    running = finished_now(study)[1]
    if index in running:
        os.kill(child.pid, signal.SIGKILL)
        return running[index]
    os.kill(child.pid, signal.SIGCONT)
    return None


def check(url: str, target: int, workers: int, victim: int | None) -> list[str]:
    """What must hold at the end; the problems found."""
    import optuna
    from optuna.trial import TrialState

    from study.records import HEARTBEAT, TrialRecord

    trials = [TrialRecord.from_trial(t) for t in optuna.load_study(study_name=STUDY, storage=url).trials]
    problems = []
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    if not target <= finished <= target + workers - 1:
        problems.append(f"{finished} finished trials, target {target} (at most {target + workers - 1})")
    open_ = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    if open_:
        problems.append(f"trials left RUNNING or WAITING: {open_}")
    silent = [t.number for t in trials if t.state == TrialState.FAIL and not t.fail_reason]
    if silent:
        problems.append(f"failed trials without a reason: {silent}")
    numbers = [t.number for t in trials]
    if len(set(numbers)) != len(numbers) or sorted(numbers) != list(range(len(numbers))):
        problems.append("trial numbers repeat or skip")
    if victim is not None:
        dead = next((t for t in trials if t.number == victim), None)
        retry = next((t for t in trials if t.retry_of == victim), None)
        if dead is None or dead.state != TrialState.FAIL or dead.fail_reason != HEARTBEAT:
            problems.append(f"the killed worker's trial {victim} is not failed with reason {HEARTBEAT}")
        if retry is None or retry.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            problems.append(f"the killed worker's trial {victim} has no finished retry")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("STUDY_BENCH_URL") or os.environ.get("STUDY_TEST_POSTGRES_URL"),
                        help="a PostgreSQL URL whose database the benchmark may fill (default: $STUDY_BENCH_URL)")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--trials", type=int, default=400, help="target of finished trials")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--epoch-ms", type=float, default=5.0, help="the objective's sleep per epoch")
    parser.add_argument("--heartbeat", type=int, default=1)
    parser.add_argument("--no-kill", action="store_true", help="do not kill a worker mid-run")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return work(args.url, args.worker, args.trials, args.epochs, args.epoch_ms, args.heartbeat)
    if not args.url:
        parser.error("give --url postgresql://... (or set STUDY_BENCH_URL)")

    import optuna
    import sqlalchemy

    from study import storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; load {os.getloadavg()[0]:.1f}; "
          f"optuna {optuna.__version__}, sqlalchemy {sqlalchemy.__version__}")
    print(f"storage: {storage.mask(args.url)}; {args.workers} workers, target {args.trials} trials of "
          f"{args.epochs} epochs x {args.epoch_ms:g} ms, heartbeat {args.heartbeat} s "
          f"(grace {storage.GRACE_FACTOR * args.heartbeat} s)")
    fresh_study(args.url)
    monitor = Monitor(args.url)
    watched = optuna.load_study(study_name=STUDY, storage=args.url)  # before the workers take every slot
    command = [sys.executable, __file__, "--url", args.url, "--trials", str(args.trials), "--epochs", str(args.epochs),
               "--epoch-ms", str(args.epoch_ms), "--heartbeat", str(args.heartbeat)]
    started = time.perf_counter()
    children = [subprocess.Popen([*command, "--worker", str(i)], stdout=subprocess.PIPE, text=True)
                for i in range(args.workers)]
    victim: int | None = None
    killed: int | None = None
    peak = 0
    while any(child.poll() is None for child in children):
        time.sleep(0.5)
        peak = max(peak, monitor.connections())
        if args.no_kill or killed is not None:
            continue
        try:
            done, running = finished_now(watched)
        except optuna.exceptions.StorageInternalError:  # no connection slot left: look again later
            continue
        if done >= args.trials * 0.4 and running:
            index = random.choice(sorted(running))
            victim = kill_inside_a_trial(watched, children, index)
            if victim is not None:
                killed = index
                print(f"killed worker {killed} (SIGKILL) while it ran trial {victim}, at {done} finished trials")
    wall = time.perf_counter() - started
    reports = [json.loads(line) for child in children for line in child.stdout.read().splitlines() if line]
    codes = {i: child.returncode for i, child in enumerate(children)}

    problems = check(args.url, args.trials, args.workers, victim)
    trials = optuna.load_study(study_name=STUDY, storage=args.url).trials
    finished = sum(t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL for t in trials)
    worker_wall = sum(r["wall"] for r in reports)
    tally = ", ".join(f"{list(codes.values()).count(c)} x {c}" for c in sorted(set(codes.values())))
    print(f"workers' exit codes: {tally}" + (f" (worker {killed} killed: -9)" if killed is not None else ""))
    print(f"trials: {len(trials)} in the study, {finished} finished, "
          f"{sum(t.state == optuna.trial.TrialState.FAIL for t in trials)} failed")
    print(f"wall: {wall:.1f} s; {finished / wall:.1f} finished trials/s")
    print(f"storage share of the workers' wall time: {sum(r['storage'] for r in reports) / worker_wall:.0%} "
          f"(main threads, {sum(r['calls'] for r in reports)} calls; the objective slept "
          f"{sum(r['slept'] for r in reports) / worker_wall:.0%}; heartbeat threads "
          f"{sum(r['heartbeat'] for r in reports) / worker_wall:.1%} on the side; the rest is the workers' own "
          f"Python (start-up, sampler, loop) and waiting for a core)")
    print(f"connections: peak {peak} to this database (max_connections {monitor.setting('max_connections')}); "
          f"each worker's engine pools up to 5 + 10 overflow (SQLAlchemy's default QueuePool) and uses one per thread")
    print(f"memory: {max(r['rss_mib'] for r in reports):.0f} MiB peak RSS per worker (no torch: "
          f"{'none imported it' if not any(r['torch'] for r in reports) else 'IMPORTED'})")
    if any(r["torch"] for r in reports):
        problems.append("a worker imported torch")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("checks: " + ("all passed" if not problems else f"{len(problems)} failed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
