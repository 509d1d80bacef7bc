"""An objective module of the contract's first form (`Config`, `EMBEDDED_DATASET`, `load_data` and
`run` as `objectives/contract.py` describes), with a model whose predictions are fixed (lr 0, a head
that always predicts class `predict`), so which trial completes, is pruned or fails is known in
advance; `fail` raises inside the model's forward, in the middle of an epoch. `run_trials` runs a
study over it with the runner's own loop. The GPU path's unit tests (memory after every trial) and
its e2e test (torch.compile) both use it, so it lives here rather than in either test file."""

from __future__ import annotations

import gc
import io
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

from objectives import contract
from objectives.contract import DataSource, TrialContext
from objectives.data import ImageSet, Splits
from objectives.losses import build_loss
from objectives.models import build_model
from objectives.train import Runtime, fit
from study import storage
from study.run import data as run_data
from study.run.output import Output
from study.run.prepare import Prepared
from study.run.samplers import make_pruner
from study.run.session import Session
from study.run.trainer import SearchObjective
from study.spaces.space_file import load_space

from conftest import fit_cfg


def tiny_splits(size: int = 16, train: int = 24, seed: int = 0) -> Splits:
    """Random uint8 images of three classes; validation and test are mostly class 0."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(train) % 3, [0, 0, 0, 0, 0, 0, 1, 2], [0, 0, 0, 0, 0, 1, 2, 2]])
    images = rng.integers(0, 256, size=(len(labels), size, size, 3), dtype=np.uint8)
    rows = np.arange(len(labels))
    return Splits(
        train=ImageSet(images, labels, rows[:train]),
        val=ImageSet(images, labels, rows[train : train + 8]),
        test=ImageSet(images, labels, rows[train + 8 :]),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        class_names=("a", "b", "c"),
    )


FAILURES = {"boom": lambda: RuntimeError("boom"),
            "cuda": lambda: torch.AcceleratorError("CUDA error: an illegal memory access was encountered")}


MODELS: list[weakref.ref] = []  # every trial's model, weakly
ALIVE_AT_START: list[int] = []  # how many earlier trials' models were still alive when a trial began
FRAMES_AT_START: list[int] = []  # graphs compiled so far, when the compile backend counts them
MEMORY_AT_START: list[int] = []  # bytes of GPU memory allocated when a trial began (0 on the CPU)


@dataclass(frozen=True)
class NoData:
    """The data part: these trials all share `tiny_splits`."""

@dataclass(frozen=True)
class Train:
    epochs: int = 2
    lr: float = 0.0
    predict: int = 0
    fail: str = ""
    arch: str = "convnet"
    fe_epochs: int = 0
    batch_size: int = 8
    seed: int = 0


@dataclass(frozen=True)
class Config:
    data: NoData = NoData()
    train: Train = Train()


EMBEDDED_DATASET = "digits"  # not used: these studies run on `tiny_splits`


def load_data(data: NoData, source: DataSource) -> Splits:
    return tiny_splits()


def run(config: Config, splits: Splits, context: TrialContext):
    config = config.train
    ALIVE_AT_START.append(sum(ref() is not None for ref in MODELS))
    FRAMES_AT_START.append(getattr(context.runtime.compile_backend, "frame_count", 0))
    MEMORY_AT_START.append(torch.cuda.memory_allocated() if context.runtime.device.type == "cuda" else 0)
    model = build_model(config.arch, splits.num_classes, pretrained=False, seed=config.seed)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[config.predict] = 10.0
    if config.fail:
        model.register_forward_hook(_fail_on_second_call(FAILURES[config.fail]))
    MODELS.append(weakref.ref(model))
    cfg = fit_cfg(epochs=config.epochs, fe_epochs=config.fe_epochs, lr=config.lr, momentum=0.0, weight_decay=0.0,
                    batch_size=config.batch_size, metric=context.metric, maximize=context.maximize, seed=config.seed)
    return fit(
        model,
        build_loss("ce", class_counts=[1, 1, 1]),
        splits,
        cfg,
        context.runtime,
        context.report,
        context.checkpoint,
    )


def _fail_on_second_call(error):
    calls = []

    def hook(module, inputs, output):
        calls.append(1)
        if len(calls) == 2:
            raise error()

    return hook


SPACE = """schema = 2
[study]
objective = "support.gpu_path"  # not used: the runner is handed this module as the objective module
direction = "maximize"
metric = "accuracy"
sampler = "random"
pruner = "median"
startup_trials = 1
warmup_epochs = 0
[fixed]
epochs = 2
[space]
predict = { choices = [0, 1] }
fail = { choices = ["", "boom", "cuda"] }
"""


def enqueued(params: list[dict]) -> optuna.Study:
    """A study on in-memory storage with these trials queued."""
    study = optuna.create_study(study_name="memory", storage=optuna.storages.InMemoryStorage(), direction="maximize")
    for p in params:
        study.enqueue_trial(p)
    return study


def run_trials(tmp_path: Path, study: optuna.Study, runtime: Runtime, space: str = SPACE) -> str:
    """Run `study` with the runner's own loop (`optimize`, `TrialTrainer`, `fit`) until 3 trials
    have finished, with the automatic garbage collector off: whatever is freed is freed by
    reference counting. Returns what the runner printed."""
    path = tmp_path / "space.toml"
    path.write_text(space)
    prep = Prepared(
        space=load_space(path),
        module=contract.objective(sys.modules[__name__]),  # a module of the contract's first form
        source=DataSource(root=tmp_path),
        dataset="tiny",
        device=runtime.device,
        study_name="memory",
        storage=storage.resolve(study._storage),  # the study object's own storage, passed through
        target=3,
        results_dir=tmp_path,
        checkpoint_every=0.0,
    )
    quiet = Output(io.StringIO(), io.StringIO())
    out = io.StringIO()
    session = Session(prep, run_data.load_data(prep, quiet), Output(out, io.StringIO()), runtime=runtime)
    MODELS.clear()
    ALIVE_AT_START.clear()
    FRAMES_AT_START.clear()
    MEMORY_AT_START.clear()
    gc.collect()
    gc.disable()
    try:
        session.optimize(study, SearchObjective(study, prep, session.trainer), target=prep.target,
                         sampler=optuna.samplers.RandomSampler(seed=0),
                         pruner=make_pruner(prep.space, prep.module.ROLES))
    finally:
        alive = [ref() is not None for ref in MODELS]
        gc.enable()
        assert not any(alive), f"models still alive after their trials: {alive}"
    return out.getvalue()
