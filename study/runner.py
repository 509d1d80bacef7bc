"""Running a study: storage, sampler, pruner, the trial wrapper, progress and the trial target.

`run_study` checks everything a study needs (search space, data, pretrained weights, storage)
before it writes anything, then runs trials until the study holds the target number of finished
(complete + pruned) trials, so a re-run after a crash or a larger `--trials` simply continues.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState
from tqdm import tqdm

from objectives.atomic import atomic_path, atomic_write_text
from objectives.contract import DataSource, TrialContext, flat
from objectives.data import detect_layout, ensure_embedded
from objectives.errors import InputError
from objectives.models import missing_weights, weights_normalisation
from objectives.train import Checkpointing, Diverged, Runtime
from study import figures, registry, storage
from study.space import SearchSpace, build_config, config_defaults

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILURES_IN_A_ROW = 5
CUDA_OOM = "cuda_oom"
CUDA_ERROR = "cuda_error"  # a sticky CUDA error: the process's CUDA context is unusable
CUDA_ERROR_EXIT = 75  # EX_TEMPFAIL: this process cannot go on, a fresh one can resume the study
MAX_WORKER_RESTARTS = 3  # fresh workers started in place of one that stopped on a CUDA error
CHECKPOINT_EVERY_S = 60.0  # mid-trial checkpoints at most this often (see `Checkpointing`)


@dataclass(frozen=True)
class RunOptions:
    """Everything `run` was asked for, explicit (no globals)."""

    space: SearchSpace
    results_dir: Path = Path("results")
    study_name: str | None = None
    storage_url: str | None = None
    data: Path | None = None
    layout: str | None = None  # forced data layout; None detects it
    trials: int | None = None
    timeout: float | None = None
    device: str = "auto"
    pruner: str | None = None
    cache: bool = True
    allow_space_change: bool = False
    workers: int = 1
    worker: int | None = None  # set in a worker process started by `run --workers N`
    heartbeat: int = storage.HEARTBEAT_SECONDS
    checkpoint_every: float = CHECKPOINT_EVERY_S
    compile: bool = False


@dataclass(frozen=True)
class Prepared:
    """A run whose inputs have all been checked: what `optimize` needs and nothing else."""

    space: SearchSpace
    module: ModuleType
    source: DataSource
    dataset: str
    device: torch.device
    study_name: str
    storage_url: str
    target: int
    results_dir: Path
    checkpoint_every: float = CHECKPOINT_EVERY_S
    compile: bool = False


class Output:
    """Where progress goes: bars on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.err = err
        self.bars = err.isatty()

    def line(self, text: str) -> None:
        tqdm.write(text, file=self.stream) if self.bars else print(text, file=self.stream, flush=True)

    def warn(self, text: str) -> None:
        print(f"study: warning: {text}", file=self.err, flush=True)

    def bar(self, total: int, desc: str, **kwargs: Any) -> tqdm:
        """A bar on a terminal (an `objectives.progress.BarFactory`, with tqdm's options)."""
        return tqdm(total=total, desc=desc, disable=not self.bars, file=self.err, dynamic_ncols=True, **kwargs)


def artifact_store(results_dir: Path) -> FileSystemArtifactStore:
    """Trial figures live in one file-system store beside the storage; the dashboard reads it."""
    path = results_dir / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = f" with CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        raise InputError(f"--device cuda: no CUDA device is available{shown} (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device(name)


def prepare(opts: RunOptions, out: Output) -> Prepared:
    """Check space, device, data and weights; nothing is written to the storage here."""
    space = opts.space
    module = registry.objective_module(space)
    device = resolve_device(opts.device)
    if opts.worker is not None and os.environ.get("STUDY_THREADS"):
        torch.set_num_threads(int(os.environ["STUDY_THREADS"]))  # the parent's share for this worker
    url = opts.storage_url or storage.default_url(opts.results_dir)
    storage.check_url(url)
    _check_writable(opts.results_dir)
    if opts.pruner is not None:
        space = dataclasses.replace(space, study=dataclasses.replace(space.study, pruner=opts.pruner))
    if opts.data is None:
        space = space.embedded_run()
    space.check_config(module.Config)
    space = _check_weights(space, embedded=opts.data is None, out=out)
    space = pretrained_normalisation(space)
    build_config(module.Config, space.with_defaults({**space.fixed, **space.pinned}))  # pins that contradict each other fail now
    cache_dir = opts.results_dir / "cache" if opts.cache else None
    if opts.data is None:
        dataset = space.embedded.get("dataset", module.EMBEDDED_DATASET)
        root = ensure_embedded(
            dataset,
            opts.results_dir / "data",
            train_images=int(space.embedded.get("train_images", 800)),
            test_images=int(space.embedded.get("test_images", 200)),
        )
        out.line(f"data: embedded dataset {dataset} ({root})")
    else:
        root, dataset = opts.data, str(opts.data.resolve())
        out.line(f"data: {root} ({detect_layout(root, opts.layout)[0]} layout)")
    source = DataSource(root=root, cache_dir=cache_dir, bar=out.bar, layout=opts.layout)
    return Prepared(
        space=space,
        module=module,
        source=source,
        dataset=dataset,
        device=device,
        study_name=opts.study_name or space.name,
        storage_url=url,
        target=opts.trials if opts.trials is not None else space.study.trials,
        results_dir=opts.results_dir,
        checkpoint_every=opts.checkpoint_every,
        compile=opts.compile,
    )


def _check_writable(folder: Path) -> None:
    """The results folder must take files (data, caches, checkpoints, artifacts) before trial one."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"--results {folder}: cannot write there ({exc.strerror or exc})") from None


def _check_weights(space: SearchSpace, *, embedded: bool, out: Output) -> SearchSpace:
    """Pretrained weights the space may need must be in torchvision's cache before trial one.

    On the embedded default a missing file pins ``pretrained = false`` with a warning, so the
    README's first command works offline; on real data it is an error naming the file."""
    if True not in space.possible_values("pretrained"):
        return space
    missing = missing_weights(a for a in space.possible_values("arch") if isinstance(a, str))
    if not missing:
        return space
    hint = f"{missing[0].name} into {missing[0].parent}/" + (f" (and {', '.join(p.name for p in missing[1:])})" if missing[1:] else "")
    if not embedded:
        raise InputError(f"pretrained weights missing and not downloadable: put {hint}, or --set pretrained=false")
    out.warn(f"pretrained weights not found, running with pretrained=false; to use them put {hint}")
    return space.pin("pretrained", False)


def pretrained_normalisation(space: SearchSpace) -> SearchSpace:
    """Where the space may use pretrained weights and sets no `norm_mean`/`norm_std` of its own,
    both arms of `pretrained` are normalised with the weights' own statistics.

    ImageNet weights expect ImageNet-normalised inputs (a fundus image's blue std is about 0.06
    against ImageNet's 0.225), and the FE phase freezes BatchNorm with ImageNet statistics, so
    the dataset's own statistics would handicap the pretrained arm; using the weights' values for
    the scratch arm too keeps `pretrained` a factor that changes one thing. The resolved values
    become settings, so they key the decoded data and enter the study's fingerprint."""
    if True not in space.possible_values("pretrained") or space.fixed.get("norm_mean") or space.pinned.get("norm_mean"):
        return space
    found = {weights_normalisation(a) for a in space.possible_values("arch") if isinstance(a, str)} - {None}
    if len(found) != 1:
        return space  # no arch with weights, or archs whose weights disagree: the data's own statistics
    mean, std = found.pop()
    return space.with_settings(add=True, norm_mean=list(mean), norm_std=list(std))


def run_study(opts: RunOptions, out: Output) -> optuna.Study:
    """Run (or resume) the study until it holds the target number of finished trials."""
    prep = prepare(opts, out)
    data = load_data(prep, out)
    study = _open_study(prep, data, opts.allow_space_change, opts.heartbeat)
    if opts.worker is None:
        requeue_interrupted(study, out)
    if not announce(study, prep, out):
        return study
    if opts.workers > 1 and opts.worker is None:
        run_workers(opts.workers, prep, out)
        print_summary(optuna.load_study(study_name=study.study_name, storage=study._storage), prep, out)
        return study
    # A seed that moves with the study's size: a resumed run does not replay the first run's
    # random start-up suggestions, and the same history still gives the same next suggestion.
    # Workers started together see the same history, so each offsets the seed by its index.
    sampler = _sampler(prep.space, prep.space.study.seed + len(study.trials) + 7919 * (opts.worker or 0))
    objective = _Objective(prep, trainer(prep, data, out))
    optimize(study, prep, out, objective, sampler, opts.timeout)
    if opts.worker is None:
        print_summary(study, prep, out)
    return study


def load_data(prep: Prepared, out: Output) -> _DataCache:
    """Decode (or read the cache of) and validate every image before any study is written; write
    the split manifest and warn where the data's own test split shares groups with train."""
    base = _base_config(prep)
    data = _DataCache(prep.module, prep.source, prep.results_dir / _safe(prep.study_name), flat(base).get("split_seed"))
    splits = data.get(base)
    manifest = splits.manifest
    if manifest is not None:
        counts = manifest.counts()
        grouped = "by group" if any(manifest.group) else "per image (no groups)"
        out.line(f"split: {counts['train']} train, {counts['val']} validation, {counts['test']} test images, {grouped}; "
                 f"manifest {data.manifest_dir / 'split.csv'}")
        if manifest.shared_test_groups:
            shown = ", ".join(manifest.shared_test_groups[:3])
            out.warn(f"{len(manifest.shared_test_groups)} group(s) of the data's own test split also appear in train "
                     f"(e.g. {shown}): the test figures are optimistic; `study data inspect` lists them")
    return data


def trainer(prep: Prepared, data: _DataCache, out: Output) -> TrialTrainer:
    if prep.device.type == "cuda":
        # every trial of a study repeats the same few input shapes: let cuDNN time its algorithms once
        torch.backends.cudnn.benchmark = True
    runtime = Runtime.for_device(prep.device, bar=functools.partial(out.bar, leave=False), compile=prep.compile)
    return TrialTrainer(prep, data, runtime, artifact_store(prep.results_dir))


def announce(study: optuna.Study, prep: Prepared, out: Output) -> bool:
    """Say where the study stands; False when it already holds its target."""
    done = _count(study, FINISHED)
    url = storage.mask(prep.storage_url)
    if done >= prep.target:
        out.line(f"study {study.study_name} already has {done} finished trials (target {prep.target}); "
                 f"raise --trials to add more. Storage: {url}")
        return False
    out.line(f"study {study.study_name}: {done} finished trials, running to {prep.target} on {prep.device} (storage {url})")
    return True


def requeue_interrupted(study: optuna.Study, out: Output) -> None:
    """Queue again, with the same params, each trial stopped by Ctrl-C/SIGTERM that has not been
    re-run yet; the re-run resumes from its checkpoint."""
    trials = study.get_trials(deepcopy=False)
    done = {t.user_attrs.get("resume_of") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == "interrupted" and t.number not in done:
            study.enqueue_trial(t.params, user_attrs={"resume_of": t.number})
            out.line(f"re-running interrupted trial {t.number} (from its last checkpoint)")


def run_workers(count: int, prep: Prepared, out: Output) -> None:
    """Start `count` worker processes of this same command on the same study; on CUDA worker i
    trains on entry i mod n of this process's n GPUs (`worker_gpus`), on the CPU on an equal
    share of the threads. Ctrl-C/SIGTERM reach all of them."""
    gpus = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count()) if prep.device.type == "cuda" else []
    assigned = worker_gpus(count, gpus)
    threads = max(1, (os.cpu_count() or 1) // count)

    def start(index: int) -> subprocess.Popen:
        command, env = worker_process(index, prep.device, assigned, threads, sys.argv[1:], os.environ)
        return subprocess.Popen(command, env=env)

    out.line(f"started {count} workers ({'GPU ' + ', '.join(assigned) if assigned else f'{threads} CPU thread(s) each'})")
    codes = supervise(count, start, out)
    if any(codes):
        raise WorkerFailed(max(codes))


def worker_process(index: int, device: torch.device, assigned: Sequence[str], threads: int, args: Sequence[str],
                   environ: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """Command line and environment of worker `index`: this process's arguments `args` with
    the device it chose made explicit (a worker that finds no GPU then stops with an error
    instead of training on the CPU), its GPU (`assigned[index]`, where there are GPUs) and its
    share of CPU threads."""
    env = {**environ, "STUDY_THREADS": str(threads)}
    if assigned:
        env["CUDA_VISIBLE_DEVICES"] = assigned[index]
    return [sys.executable, "-m", "study", *args, "--device", device.type, "--worker-index", str(index)], env


def visible_gpus(value: str | None, device_count: int) -> list[str]:
    """This process's GPUs as entries a child's CUDA_VISIBLE_DEVICES can name: `value` (this
    process's CUDA_VISIBLE_DEVICES) read as CUDA reads it, indices, ``GPU-`` UUIDs or ``MIG-``
    ids up to the first entry that is none of these (so "" and "-1" mean no GPU) and nothing when
    an entry repeats; or 0 .. `device_count` - 1 when it is unset."""
    if value is None:
        return [str(i) for i in range(device_count)]
    entries: list[str] = []
    for entry in (part.strip() for part in value.split(",")):
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        if entry in entries:
            return []
        entries.append(entry)
    return entries


def worker_gpus(count: int, gpus: Sequence[str]) -> list[str]:
    """The GPU of each of `count` workers: worker i gets entry i mod len(`gpus`); [] without GPUs."""
    return [gpus[i % len(gpus)] for i in range(count)] if gpus else []


def supervise(count: int, start: Callable[[int], subprocess.Popen], out: Output, *,
              max_restarts: int = MAX_WORKER_RESTARTS, poll_s: float = 0.5) -> list[int]:
    """Run workers 0 .. `count` - 1 (`start(i)` starts worker i) until all have exited; one that
    stops on a CUDA error (exit code `CUDA_ERROR_EXIT`) is replaced by a fresh process, at most
    `max_restarts` times per worker. Returns each worker's last exit code. On an exception
    (Ctrl-C, SIGTERM) every running worker gets SIGTERM and is waited for."""
    running = {index: start(index) for index in range(count)}
    codes = [0] * count
    restarts = [0] * count
    try:
        while running:
            for index, child in list(running.items()):
                code = child.poll()
                if code is None:
                    continue
                del running[index]
                codes[index] = code
                if code == CUDA_ERROR_EXIT and restarts[index] < max_restarts:
                    restarts[index] += 1
                    out.line(f"worker {index} stopped on a CUDA error; starting a fresh worker in its place "
                             f"(restart {restarts[index]} of {max_restarts})")
                    running[index] = start(index)
            if running:
                time.sleep(poll_s)
    except BaseException:
        for child in running.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in running.values():
            child.wait()
        raise
    return codes


class WorkerFailed(RuntimeError):
    """A worker process exited with a non-zero code (its own message is above)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"a worker exited with code {code}")
        self.code = code


class CudaContextLost(RuntimeError):
    """A trial failed with a sticky CUDA error (recorded as `cuda_error`): every later CUDA call of
    this process would fail too, so it stops; a fresh process resumes the study."""

    code = CUDA_ERROR_EXIT

    def __init__(self, detail: str) -> None:
        super().__init__(f"{detail}; this process can no longer use its GPU: run the same command again to resume the study")


def _base_config(prep: Prepared) -> Any:
    """The config of the fixed settings and pins (what every trial shares)."""
    return build_config(prep.module.Config, prep.space.with_defaults({**prep.space.fixed, **prep.space.pinned}))


class _DataCache:
    """Decoded splits per data part of a config (`config.data`): loaded once per process, shared by trials.

    Every split a trial uses is written as a manifest into `manifest_dir` when first loaded:
    ``split.csv`` for the study's own `split_seed`, ``split-<seed>.csv`` for any other (an
    ablation's per-seed validation splits), so every trial's split can be checked.
    """

    def __init__(self, module: ModuleType, source: DataSource, manifest_dir: Path, base_split_seed: int | None) -> None:
        self.module = module
        self.source = source
        self.manifest_dir = manifest_dir
        self.base_split_seed = base_split_seed
        self.loaded: dict[Hashable, Any] = {}
        self.hashes: dict[Hashable, str] = {}

    def get(self, config: Any) -> Any:
        key = config.data
        if key not in self.loaded:
            splits = self.module.load_data(key, self.source)
            if splits.manifest is not None:
                seed = getattr(key, "split_seed", None)
                name = "split.csv" if seed == self.base_split_seed else f"split-{seed}.csv"
                text = splits.manifest.csv_text()
                atomic_write_text(self.manifest_dir / name, text)
                self.hashes[key] = splits.manifest.digest()
            self.loaded[key] = splits
        return self.loaded[key]

    def manifest_hash(self, config: Any) -> str:
        """sha256 of the manifest of `config`'s split (loaded first if needed)."""
        self.get(config)
        return self.hashes[config.data]


def _open_study(prep: Prepared, data: _DataCache, allow_change: bool, heartbeat: int) -> optuna.Study:
    settings = prep.space.study
    store = storage.open_storage(prep.storage_url, heartbeat=heartbeat)
    study = optuna.create_study(
        study_name=prep.study_name,
        storage=store,
        direction=settings.direction,
        load_if_exists=True,
    )
    fingerprint = prep.space.fingerprint(config_defaults(prep.module.Config))
    recorded = study.user_attrs.get("space_hash")
    if recorded is None:
        base = _base_config(prep)
        splits = data.get(base)
        attrs = {
            "space_hash": fingerprint,
            "space_file": str(prep.space.path),
            "objective": settings.objective,
            "metric": settings.metric,
            "dataset": prep.dataset,
            "fixed": dict(prep.space.fixed),
            "pinned": dict(prep.space.pinned),
            "sampler": sampler_settings(prep.space),
            "pruner": pruner_settings(prep.space),
            "report": prep.space.report.record(),
        }
        if splits.manifest is not None:
            attrs["split_hash"] = data.manifest_hash(base)
            attrs["shared_test_groups"] = len(splits.manifest.shared_test_groups)
        for key, value in attrs.items():
            study.set_user_attr(key, value)
    elif (recorded != fingerprint or study.user_attrs.get("dataset") != prep.dataset) and not allow_change:
        raise InputError(
            f"study {prep.study_name} was created with another search space, settings or dataset; "
            f"fork it with --study-name NEW or accept the change with --allow-space-change"
        )
    return study


def sampler_settings(space: SearchSpace) -> dict[str, Any]:
    """The sampler's class and arguments, as recorded in the study (the seed of each run is
    `seed` + the study's trials so far + 7919 x the worker's index)."""
    settings = space.study
    if settings.sampler == "random":
        return {"class": "RandomSampler", "seed": settings.seed}
    if settings.sampler == "grid":
        return {"class": "GridSampler", "seed": settings.seed}
    if settings.sampler == "cmaes":
        return {"class": "CmaEsSampler", "seed": settings.seed}
    # multivariate with group=True: conditional parameters (fe_epochs, focal_*) are modelled
    # jointly within their condition instead of falling back to independent sampling
    return {"class": "TPESampler", "seed": settings.seed, "multivariate": True, "group": True, "constant_liar": True,
            "n_startup_trials": settings.sampler_startup_trials}


def _sampler(space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    kind = space.study.sampler
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    args = {k: v for k, v in sampler_settings(space).items() if k not in ("class", "seed")}
    with warnings.catch_warnings():  # `group` is "experimental" in Optuna 5, and what conditional spaces need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, **args)


def pruner_settings(space: SearchSpace) -> dict[str, Any]:
    """The pruner's class and arguments, as recorded in the study. Steps are fine-tuning epochs
    (see `_Reporter`), so Hyperband's largest resource is `epochs` (a trial without FE)."""
    settings = space.study
    if settings.pruner == "none":
        return {"class": "NopPruner"}
    if settings.pruner == "hyperband":
        return {"class": "HyperbandPruner", "min_resource": 1, "max_resource": max(int(space.fixed.get("epochs", 1)), 1),
                "reduction_factor": 3}
    return {"class": "MedianPruner", "n_startup_trials": settings.startup_trials, "n_warmup_steps": settings.warmup_epochs}


def _pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    args = pruner_settings(space)
    kind = getattr(optuna.pruners, args.pop("class"))
    return kind(**args)


def optimize(study: optuna.Study, prep: Prepared, out: Output, objective: Callable[[optuna.Trial], float],
             sampler: optuna.samplers.BaseSampler, timeout: float | None) -> None:
    """Run trials until the study holds `prep.target` finished ones, counting every worker's (or
    the timeout, five failures in a row, or a grid sampler's last point), printing one line per
    trial. A trial is asked for only while finished + running < target; a worker that sees the
    remaining trials already running waits (failing stale ones, whose retries it may then run).
    Workers that check at the same moment may each start one, so W workers end with at most
    target + W - 1 finished trials, every one trained. After a trial that failed with a sticky
    CUDA error no other trial starts: `CudaContextLost` is raised."""
    study.sampler = sampler
    study.pruner = _pruner(prep.space)
    metric = prep.space.study.metric
    failures: list[int] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    stopped = False
    context_lost: list[str] = []  # set by a sticky CUDA error: the process must end

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal stopped
        out.line(describe(trial, metric))
        if context_lost:
            stopped = True
            return
        if prep.device.type == "cuda":
            # The trial's model, optimizer and batches are gone by now (nothing keeps its frames);
            # give their memory back, so that other workers on this GPU can use it
            torch.cuda.empty_cache()
        if trial.state in FINISHED:
            bar.update(1)
            failures.clear()
        elif trial.state == TrialState.FAIL:
            failures.append(trial.number)
            if len(failures) >= MAX_FAILURES_IN_A_ROW:
                out.warn(f"{len(failures)} trials failed in a row; stopping (last: {trial.user_attrs.get('fail_reason')})")
                stopped = True

    def guarded(trial: optuna.Trial) -> float:
        try:
            return objective(trial)
        except Exception as exc:
            if failure_reason(exc) == CUDA_ERROR:
                context_lost.append(f"trial {trial.number} failed with {CUDA_ERROR} ({_first_line(exc)})")
            raise

    with out.bar(prep.target, f"trials of {study.study_name}", initial=_count(study, FINISHED)) as bar:
        while not stopped and (deadline is None or time.monotonic() < deadline):
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            exhausted = isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)
            if finished >= prep.target or exhausted:  # a grid runs each point once, failed ones too
                break
            if finished + running >= prep.target:
                optuna.storages.fail_stale_trials(study)
                time.sleep(1.0)
                continue
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            study.optimize(guarded, n_trials=1, timeout=left, callbacks=[after_trial], catch=(Exception,))
    if context_lost:
        raise CudaContextLost(context_lost[0])


class _Objective:
    """The search study's objective: the space suggests a config, `TrialTrainer` trains it."""

    def __init__(self, prep: Prepared, trainer: TrialTrainer) -> None:
        self.prep = prep
        self.trainer = trainer

    def __call__(self, trial: optuna.Trial) -> float:
        space = self.prep.space
        values = space.suggest(trial)
        if "seed" not in space.names():
            values["seed"] = trial_seed(trial, space.study.seed)
        return self.trainer(trial, values)


def trial_seed(trial: optuna.Trial, base: int) -> int:
    """`base` + the trial's number; a trial that re-runs an earlier one (a heartbeat retry or a
    re-queued interrupted trial) keeps that trial's seed, since it resumes that trial's weights."""
    origin = resumed_from(trial)
    if origin is not None:
        earlier = {t.number: t for t in trial.study.get_trials(deepcopy=False)}.get(origin)
        seed = earlier.user_attrs.get("config", {}).get("seed") if earlier is not None else None
        if isinstance(seed, int):
            return seed
    return base + trial.number


class TrialTrainer:
    """Train one config inside one Optuna trial and record it: config, curves (every epoch, so
    pruned trials keep theirs), best epoch, validation and test metrics and confusion matrices as
    user attrs, and the confusion-matrix and curves figures as Optuna artifacts."""

    def __init__(self, prep: Prepared, data: _DataCache, runtime: Runtime, artifacts: FileSystemArtifactStore | None) -> None:
        self.prep = prep
        self.data = data
        self.runtime = runtime
        self.artifacts = artifacts

    def __call__(self, trial: optuna.Trial, values: dict[str, Any]) -> float:
        settings = self.prep.space.study
        reporter = _Reporter(trial, settings.metric)
        checkpoints = self.prep.results_dir / "checkpoints" / _safe(trial.study.study_name)
        own = checkpoints / f"trial{trial.number}.pt"
        if "fail_reason" in trial.user_attrs:  # a retry inherits its failed original's attrs
            trial.set_user_attr("fail_reason", None)
        try:
            config = build_config(self.prep.module.Config, self.prep.space.with_defaults(values))
            recorded = flat(config)
            reporter = _Reporter(trial, settings.metric, fe_epochs=recorded.get("fe_epochs", 0), epochs=recorded["epochs"])
            trial.set_user_attr("config", recorded)
            splits = self.data.get(config)
            trial.set_user_attr("class_names", list(splits.class_names))
            if splits.manifest is not None:
                trial.set_user_attr("split_hash", self.data.manifest_hash(config))
            resume = _resume_state(trial, checkpoints, reporter)
            context = TrialContext(self.runtime, reporter, settings.metric, settings.direction == "maximize",
                                   Checkpointing(save=lambda state: _save_checkpoint(state, own), resume=resume,
                                                 every_s=self.prep.checkpoint_every))
            started = time.perf_counter()
            result = self.prep.module.run(config, splits, context)
        except optuna.TrialPruned as exc:
            self._upload_figures(trial, reporter.curves, pruned=True)
            own.unlink(missing_ok=True)
            raise without_frames(exc)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")  # the checkpoint stays: `run` resumes it
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", failure_reason(exc))
            raise without_frames(exc)
        own.unlink(missing_ok=True)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        trial.set_user_attr("curves", result.curves)
        trial.set_user_attr("best_epoch", result.best_epoch)
        for split, evaluation in (("val", result.val), ("test", result.test)):
            trial.set_user_attr(f"{split}_metrics", {"loss": evaluation.loss, **evaluation.metrics})
            trial.set_user_attr(f"{split}_confusion", evaluation.confusion)
        self._upload_figures(trial, result.curves, confusion=result.test.confusion, class_names=list(splits.class_names))
        return metric_value(result.val.loss, result.val.metrics, settings.metric)

    def _upload_figures(self, trial: optuna.Trial, curves: dict[str, list], *, pruned: bool = False,
                        confusion: list[list[int]] | None = None, class_names: list[str] | None = None) -> None:
        """Curves for every finished trial, the test confusion matrix for complete ones."""
        if self.artifacts is None:
            return
        metric = self.prep.space.study.metric
        with tempfile.TemporaryDirectory() as tmp:
            line = figures.Curve(f"trial {trial.number}", curves, pruned)
            paths = [figures.curves_figure([line], metric, Path(tmp) / f"curves_trial{trial.number}.png")]
            if confusion is not None and class_names is not None:
                title = f"trial {trial.number}: test confusion (row-normalised)"
                paths.append(figures.confusion_figure(confusion, class_names, title, Path(tmp) / f"confusion_trial{trial.number}.png"))
            for path in paths:
                upload_artifact(artifact_store=self.artifacts, file_path=str(path), study_or_trial=trial, mimetype="image/png")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def resumed_from(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int | None:
    """The latest earlier attempt this trial re-runs: a heartbeat retry of a dead worker's trial
    (the last entry of Optuna's retry history) or a re-queued interrupted one (`resume_of`)."""
    frozen = trial if isinstance(trial, optuna.trial.FrozenTrial) else trial.study._storage.get_trial(trial._trial_id)
    history = frozen.system_attrs.get("retry_history", [])  # what RetryHeartbeatStaleTrialCallback records
    return history[-1] if history else frozen.user_attrs.get("resume_of")


def _resume_state(trial: optuna.Trial, checkpoints: Path, reporter: _Reporter) -> dict | None:
    """The checkpoint of the trial this one re-runs, with its epochs re-reported to Optuna so the
    pruner and the curves continue where the first attempt stopped; None to start at epoch 1."""
    origin = resumed_from(trial)
    path = checkpoints / f"trial{origin}.pt"
    if origin is None or not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    trial.set_user_attr("resumed_from", {"trial": origin, "epoch": int(state["epoch"])})
    rows = [dict(zip(state["curves"], values)) for values in zip(*state["curves"].values())]
    for row in rows:
        reporter.replay(int(row["epoch"]), row)
    return state


def _save_checkpoint(state: dict, path: Path) -> None:
    """Atomically (`objectives.atomic`): a kill mid-write leaves the previous epoch's."""
    with atomic_path(path) as partial:
        torch.save(state, partial)


def pruning_step(epoch: int, fe_epochs: int) -> int | None:
    """The step at which epoch `epoch` is reported to the pruner: its fine-tuning epoch number
    (1 for the first FT epoch), or None for a frozen-backbone (FE) epoch, which is not reported."""
    return epoch - fe_epochs if epoch > fe_epochs else None


def may_prune(epoch: int, fe_epochs: int, epochs: int) -> bool:
    """Whether the pruner is asked after `epoch`: in fine-tuning, and never after the last epoch
    (pruning then saves nothing and would hide a fully trained trial's metrics)."""
    return pruning_step(epoch, fe_epochs) is not None and epoch < epochs


class _Reporter:
    """The objective's per-epoch callback: keeps the curves in the storage (so pruned trials
    keep theirs), reports the metric to Optuna and raises TrialPruned when the pruner says so.

    The pruner sees fine-tuning epochs only, numbered from the first FT epoch (`pruning_step`):
    a head-only model is a different regime that fine-tuning overtakes, so FE values never enter
    other trials' medians, a trial with a long FE phase is compared with others after the same
    number of FT epochs, warm-up counts FT epochs, and Hyperband's rungs start at the first FT
    epoch. The pruner never decides the FE/FT question the study asks. A trial that reaches its
    last epoch always completes (`may_prune`).
    """

    def __init__(self, trial: optuna.Trial, metric: str, *, fe_epochs: int = 0, epochs: int = 0) -> None:
        self.trial = trial
        self.metric = metric
        self.fe_epochs = fe_epochs
        self.epochs = epochs
        self.curves: dict[str, list] = {}

    def replay(self, epoch: int, row: dict[str, Any]) -> None:
        """Record an epoch trained by an earlier attempt of this trial, without pruning."""
        for key, value in row.items():
            self.curves.setdefault(key, []).append(value)
        self.trial.set_user_attr("curves", self.curves)
        step = pruning_step(epoch, self.fe_epochs)
        if step is not None:
            self.trial.report(float(row[f"val_{self.metric}"]), step=step)

    def __call__(self, epoch: int, row: dict[str, Any]) -> None:
        self.replay(epoch, row)
        if may_prune(epoch, self.fe_epochs, self.epochs) and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")


def metric_value(loss: float, metrics: dict[str, Any], name: str) -> float:
    return float(loss if name == "loss" else metrics[name])


def without_frames(exc: BaseException) -> BaseException:
    """`exc` with its traceback, and those of the exceptions chained to it, dropped.

    Optuna keeps a failed or pruned trial's exception in a local of the frame that caught it,
    and that frame is on the exception's traceback: a reference cycle through every frame the
    exception passed (`run`, `fit`, the model's forward), so the model, its optimizer state and
    batches would live, on the GPU, until the cyclic garbage collector happened to run.
    """
    chained: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while chained:
        link = chained.pop()
        if link is not None and id(link) not in seen:
            seen.add(id(link))
            link.__traceback__ = None
            chained += [link.__cause__, link.__context__]
    return exc


# cudaError_t values after which the CUDA context is unusable (every later call fails too):
# ECC uncorrectable, illegal address, launch timeout, context destroyed, device-side assert,
# hardware stack error, illegal instruction, misaligned address, invalid address space,
# invalid PC, launch failure, unknown
_STICKY_CUDA_CODES = frozenset({214, 700, 702, 709, 710, 714, 715, 716, 717, 718, 719, 999})
_STICKY_CUDA_TEXT = ("device-side assert triggered", "an illegal memory access was encountered", "unspecified launch failure",
                     "misaligned address", "an illegal instruction was encountered", "uncorrectable ECC error",
                     "hardware stack error", "invalid program counter", "the launch timed out", "context is destroyed",
                     "CUDA error: unknown error")
# allocation failures outside PyTorch's caching allocator: cudaErrorMemoryAllocation (2) from any
# CUDA call, cuBLAS/cuSOLVER ..._ALLOC_FAILED, cuDNN 9's CUDNN_STATUS_INTERNAL_ERROR_{HOST,DEVICE}_
# ALLOCATION_FAILED (CUDNN_STATUS_ALLOC_FAILED before), cuDNN frontend workspace failures
_CUDA_OOM_TEXT = ("out of memory", "ALLOC_FAILED", "ALLOCATION_FAILED", "Not enough memory for workspace", "NOT_ENOUGH_WORKSPACE")


def failure_reason(exc: BaseException) -> str:
    """What a failed trial records: `nan_loss`; `cuda_oom` for any CUDA allocation failure
    (PyTorch's allocator, or cuBLAS/cuDNN's own); `cuda_error` for a sticky CUDA error (the
    process must end, see `CudaContextLost`); otherwise the exception's class and first line.
    CUDA errors reach Python as `torch.AcceleratorError` (with the cudaError_t in `error_code`)
    or, from cuBLAS/cuDNN checks, as a plain RuntimeError with the status in its message."""
    if isinstance(exc, Diverged):
        return exc.reason
    if isinstance(exc, torch.OutOfMemoryError):
        return CUDA_OOM
    if isinstance(exc, RuntimeError):
        code, text = getattr(exc, "error_code", None), str(exc)
        if code == 2 or any(fragment in text for fragment in _CUDA_OOM_TEXT):
            return CUDA_OOM
        if code in _STICKY_CUDA_CODES or any(fragment in text for fragment in _STICKY_CUDA_TEXT):
            return CUDA_ERROR
    text = _first_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else ""


def describe(trial: optuna.trial.FrozenTrial, metric: str) -> str:
    """One line per finished trial: number, state, validation metric, params."""
    params = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    curves = trial.user_attrs.get("curves", {})
    epochs = len(curves.get("epoch", []))
    if trial.state == TrialState.COMPLETE:
        status = f"val {metric}={trial.value:.4f} (best epoch {trial.user_attrs.get('best_epoch')}/{epochs})"
    elif trial.state == TrialState.PRUNED:
        last = curves.get(f"val_{metric}", [float("nan")])[-1]
        status = f"after epoch {epochs}, val {metric}={last:.4f}"
    else:
        status = trial.user_attrs.get("fail_reason", "")
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete and trial.datetime_start else 0.0
    return f"trial {trial.number:>3} {trial.state.name:<8} {status} | {params} [{seconds:.0f}s]"


def print_summary(study: optuna.Study, prep: Prepared, out: Output) -> None:
    metric = prep.space.study.metric
    counts = {s.name: _count(study, (s,)) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    out.line("trials: " + ", ".join(f"{n} {name.lower()}" for name, n in counts.items()))
    if counts["COMPLETE"]:
        best = study.best_trial
        test = best.user_attrs.get("test_metrics", {})
        out.line(f"best: trial {best.number} val {metric}={best.value:.4f}, test {metric}={test.get(metric, float('nan')):.4f} "
                 f"| {' '.join(f'{k}={_fmt(v)}' for k, v in best.params.items())}")
    location = storage.sqlite_file(prep.storage_url)
    out.line(f"results: {location if location else storage.mask(prep.storage_url)} (study {study.study_name})")


def _count(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
