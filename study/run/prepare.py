"""Preparing a run: check the space, device, storage URL, results folder, data, pretrained
weights and the normalisation rule before anything is written to the storage."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from objectives.contract import DataSource, Objective
from objectives.data import detect_layout, embedded_root, ensure_embedded
from objectives.errors import InputError
from study import paths, storage
from study.run.options import CHECKPOINT_EVERY_S, RunOptions
from study.run.output import Output
from study.spaces import registry
from study.spaces.space import SearchSpace, build_config


@dataclass(frozen=True)
class Prepared:
    """A run whose inputs have all been checked: what the trial loop needs and nothing else."""

    space: SearchSpace
    module: Objective  # `objectives.contract.objective` of the study's module
    source: DataSource
    dataset: str
    device: torch.device
    study_name: str
    storage: storage.Resolved
    target: int
    results_dir: Path
    checkpoint_every: float = CHECKPOINT_EVERY_S
    compile: bool = False
    trial_pages: bool = True
    embedded: bool = False  # no --data: `provide_data` generates the embedded dataset at `source.root`

    def base_config(self) -> object:
        """The config of the fixed settings and pins (what every trial shares)."""
        return build_config(self.module.Config, self.space.with_defaults({**self.space.fixed, **self.space.pinned}))

    def folder(self, kind: str | None = None) -> Path:
        """results/<study> (the split manifests), or results/<kind>/<study> (checkpoints)."""
        return paths.study_folder(self.results_dir, self.study_name, kind)


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
    if opts.space is None:
        raise ValueError("prepare needs the options' space")
    space = opts.space
    module = registry.objective_module(space)
    device = resolve_device(opts.device)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)  # a worker's share of the machine's threads
    where = storage.resolve(opts.storage_url, results=opts.results_dir)
    storage.check_for_writing(where)
    check_writable(opts.results_dir)
    if opts.pruner is not None:
        space = dataclasses.replace(space, study=dataclasses.replace(space.study, pruner=opts.pruner))
    if opts.data is None:
        space = space.embedded_run()
    space.check_config(module.Config)
    space = settle(space, module, embedded=opts.data is None, out=out)
    build_config(
        module.Config, space.with_defaults({**space.fixed, **space.pinned})
    )  # pins that contradict each other fail now
    cache_dir = opts.results_dir / "cache" if opts.cache else None
    if opts.data is None:
        dataset = space.embedded.get("dataset", module.EMBEDDED_DATASET)
        root = embedded_root(dataset, opts.results_dir / "data", train_images=embedded_size(space)[0],
                             test_images=embedded_size(space)[1])  # generated once the storage is checked
    else:
        root, dataset = opts.data, str(opts.data.resolve())
        out.line(f"data: {root} ({detect_layout(root, opts.layout)[0]} layout)")
    return Prepared(
        space=space,
        module=module,
        source=DataSource(root=root, cache_dir=cache_dir, bar=out.bar, layout=opts.layout),
        dataset=dataset,
        device=device,
        study_name=opts.study_name or space.name,
        storage=where,
        target=opts.trials if opts.trials is not None else space.study.trials,
        results_dir=opts.results_dir,
        checkpoint_every=opts.checkpoint_every,
        compile=opts.compile,
        trial_pages=opts.trial_pages,
        embedded=opts.data is None,
    )


def embedded_size(space: SearchSpace) -> tuple[int, int]:
    """(train, test) images of the embedded dataset a run of `space` without --data uses."""
    return int(space.embedded.get("train_images", 800)), int(space.embedded.get("test_images", 200))


def provide_data(prep: Prepared, out: Output) -> None:
    """Generate the embedded dataset where the run uses it (once: it is kept under results/data/);
    called after the storage and the study in it were checked, since it writes files."""
    if prep.embedded:
        train, test = embedded_size(prep.space)
        root = ensure_embedded(prep.dataset, prep.results_dir / "data", train_images=train, test_images=test)
        out.line(f"data: embedded dataset {prep.dataset} ({root})")


def check_writable(folder: Path) -> None:
    """The results folder must take files (data, caches, checkpoints, artifacts) before trial one."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"--results {folder}: cannot write there ({exc.strerror or exc})") from None


def settle(space: SearchSpace, objective: Objective, *, embedded: bool, out: Output) -> SearchSpace:
    """`space` with what the objective settles before trial one (`Objective.settle`: the image
    classifier's pretrained weights and normalisation): its warnings shown, its pins and added
    settings applied."""
    settled = objective.settle(space.possible_values, embedded=embedded)
    for line in settled.warnings:
        out.warn(line)
    for name, value in settled.pins.items():
        space = space.pin(name, value)
    return space.with_settings(add=True, **settled.adds) if settled.adds else space
