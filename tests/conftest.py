"""Shared fixtures: small real datasets written as files (the DR lab's JPEGs, CIFAR-10 batches,
ImageFolder trees), a TORCH_HOME with checkpoint files made here, a runner for the real CLI in a
subprocess, and one real study (`made`) that every test of `report` and `ablate` reads instead of
training its own. It serves both layers, tests/unit and tests/e2e, and checks at collection that
the folder and the `slow` marker agree."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from PIL import Image

from objectives import image_classifier
from objectives.data import Augment
from objectives.train import FitConfig

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

# ---------------------------------------------------------------- the two layers
# The folder tells the layer and the `slow` marker defines it (`pytest -m "not slow"` is the fast
# layer), so the two must agree; collection stops when they do not.
LAYERS = {"unit": False, "e2e": True}  # folder under tests/ -> whether its tests are marked slow


def layer_problem(path: PurePosixPath, slow: bool) -> str | None:
    """What is wrong with a test in file `path` (relative to tests/) that is or is not marked
    `slow`, or None: every test under tests/e2e is slow, none under tests/unit is, and a test file
    anywhere else has no layer (it would run in whichever layer its marker says, unseen)."""
    folder = path.parts[0] if len(path.parts) > 1 else ""
    if folder not in LAYERS:
        return "is outside tests/unit and tests/e2e: move it to the folder of its layer"
    if slow and not LAYERS[folder]:
        return "is marked slow but lies under tests/unit: move it to tests/e2e"
    if not slow and LAYERS[folder]:
        return "lies under tests/e2e but is not marked slow: mark it @pytest.mark.slow or move it to tests/unit"
    return None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: a slow test in tests/unit is caught by the fast run too
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).resolve().parent
    problems = []
    for item in items:
        path = Path(item.path).resolve()
        if tests in path.parents:
            slow = item.get_closest_marker("slow") is not None
            why = layer_problem(PurePosixPath(path.relative_to(tests).as_posix()), slow)
            if why:
                problems.append(f"{item.nodeid} {why}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise pytest.UsageError(problems[0] + more)


def class_image(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """A noisy image whose colour and bright blob depend on the label: learnable in 2 epochs."""
    base = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
    base[..., 0] += np.uint8(40 * label)
    c = size // 2
    r = max(2, size // 8 + label * size // 16)
    base[c - r : c + r, c - r : c + r, 1] = 200
    return Image.fromarray(base)


def write_dr_lab(root: Path, train_labels: list[int], test_labels: list[int], size: int = 48, seed: int = 0) -> Path:
    """The DR lab layout: four one-column CSVs with headers and DIR/<name>.jpeg."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        names = [f"{split}_{i:04d}" for i in range(len(labels))]
        for name, label in zip(names, labels):
            class_image(label, size, rng).save(root / f"{name}.jpeg", quality=92)
        (root / f"{split}_img.csv").write_text("image\n" + "".join(f"{n}\n" for n in names))
        (root / f"{split}_label.csv").write_text("level\n" + "".join(f"{label}\n" for label in labels))
    return root


def dr_labels(n: int, seed: int = 0) -> list[int]:
    """About the DR grade mix, every grade present at least twice."""
    rng = np.random.default_rng(seed)
    labels = list(rng.choice(5, size=n - 10, p=[0.73, 0.07, 0.15, 0.025, 0.025])) + [0, 1, 2, 3, 4] * 2
    return [int(x) for x in rng.permutation(labels)]


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar(parent: Path, per_batch: int = 20, seed: int = 0, protocol: int = 2) -> Path:
    """A small ``cifar-10-batches-py`` in the real format: pickled dicts with bytes keys (as
    Python 2's cPickle wrote them), 'data' a (N, 3072) uint8 array, R then G then B planes."""
    root = parent / "cifar-10-batches-py"
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
        with open(root / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=protocol)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_vis": 3072}
    with open(root / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=protocol)
    return root


def write_imagefolder(root: Path, counts: dict[str, int], split: str = "train", size: int = 24, seed: int = 0) -> Path:
    """PNG (RGB, grayscale, RGBA) and JPEG files in split/<class>/, plus a file to ignore."""
    rng = np.random.default_rng(seed)
    for label, (name, n) in enumerate(counts.items()):
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(n):
            img = class_image(label, size, rng)
            kind = i % 4
            if kind == 0:
                img.save(folder / f"{i}.png")
            elif kind == 1:
                img.convert("L").save(folder / f"{i}.png")
            elif kind == 2:
                rgba = img.convert("RGBA")
                rgba.putalpha(128)
                rgba.save(folder / f"{i}.png")
            else:
                img.save(folder / f"{i}.jpg", quality=90)
        (folder / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def dr_dir(tmp_path: Path) -> Path:
    return write_dr_lab(tmp_path / "dr", dr_labels(60), dr_labels(20, seed=1))


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME whose hub cache holds a resnet18 checkpoint made here (random weights, the
    real file name and format), so the pretrained path runs without a network."""
    from torchvision.models import resnet18

    from objectives.models import weights_file

    home = tmp_path_factory.mktemp("torch_home")
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    try:
        target = weights_file("resnet18")
    finally:
        if previous is None:
            del os.environ["TORCH_HOME"]
        else:
            os.environ["TORCH_HOME"] = previous
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(123)
    torch.save(resnet18().state_dict(), target)
    return home


@pytest.fixture
def empty_torch_home(tmp_path: Path) -> Path:
    home = tmp_path / "empty_torch_home"
    home.mkdir()
    return home


def repo_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess that imports this checkout: the repo first on PYTHONPATH,
    before whatever PYTHONPATH the suite itself runs with (packages carried to a GPU machine)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_cli(*args: str, cwd: Path, torch_home: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m study ARGS` in a real subprocess, offline-style (TORCH_HOME under our control)."""
    env = repo_env(TORCH_HOME=str(torch_home or cwd / "no_torch_home"))
    return subprocess.run(
        [sys.executable, "-m", "study", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def tiny_space(
    path: Path,
    *,
    train_images: int = 100,
    test_images: int = 40,
    epochs: int = 2,
    image_size: int = 32,
    trials: int = 3,
    extra: str = "",
) -> Path:
    """dr_focal.toml with an embedded section small enough for a test."""
    text = (ROOT / "search_spaces" / "dr_focal.toml").read_text()
    head = text.split("[embedded]")[0]
    path.write_text(
        head
        + extra
        + f'[embedded]\ndataset = "synthetic-fundus"\ntrain_images = {train_images}\ntest_images = {test_images}\n'
        + f"trials = {trials}\nepochs = {epochs}\nimage_size = {image_size}\nbatch_size = 16\n"
    )
    return path


# The study `made` runs: both archs, pretraining, FE epochs, lr, loss and focal gamma, 2 epochs at 32 px.
ANALYSIS_SPACE = """schema = 2
[study]
objective = "image_classifier"
sampler = "random"
pruner = "median"
trials = 7
startup_trials = 3
seed = 3
[report.endpoints]
referable = { positive = [2, 3, 4] }
[fixed]
epochs = 2
batch_size = 16
image_size = 32
split_seed = 0
num_classes = 5
weight_decay = 5e-4
hflip = true
vflip = true
[space]
arch = { choices = ["resnet18", "resnet50"] }
pretrained = { choices = [true, false] }
fe_epochs = { low = 0, high = "epochs - 1", when = { pretrained = true } }
lr = { low = 1e-3, high = 5e-2, log = true }
loss = { choices = ["ce", "focal"] }
focal_gamma = { low = 0.0, high = 3.0, when = { loss = "focal" } }
"""


def storage_of(root: Path) -> str:
    return f"sqlite:///{root / 'results' / 'optuna.db'}"


@pytest.fixture(scope="session")
def made(tmp_path_factory: pytest.TempPathFactory, torch_home: Path) -> tuple[Path, Path, Path]:
    """One real study `abl` (7 finished trials over both archs and pretraining, plus one FAIL
    trial) made by `run` on tiny DR-layout data: (folder with results/, data folder, TORCH_HOME).
    Session-scoped: every test of `report` and `ablate` reads it instead of training its own."""
    from torchvision.models import resnet50

    from objectives.models import weights_file

    os.environ["TORCH_HOME"] = str(torch_home)
    try:
        target = weights_file("resnet50")
    finally:
        del os.environ["TORCH_HOME"]
    if not target.exists():
        torch.save(resnet50().state_dict(), target)
    root = tmp_path_factory.mktemp("analysis")
    data = write_dr_lab(root / "dr", dr_labels(50), dr_labels(20, seed=1), size=40)
    (root / "abl.toml").write_text(ANALYSIS_SPACE)
    result = run_cli("run", str(root / "abl.toml"), "--data", str(data), cwd=root, torch_home=torch_home)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="abl", storage=storage_of(root))
    failed = study.ask()  # a worker that died with its reason recorded: the report must cope
    failed.set_user_attr("fail_reason", "cuda_oom")
    study.tell(failed, state=TrialState.FAIL)
    return root, data, torch_home


def fit_cfg(**settings) -> FitConfig:
    """A `FitConfig` for tests that call `fit` directly: the image classifier's settings at their
    (one set of) defaults, flipped both ways (what these tests trained with before `FitConfig`
    lost its own defaults), metric kappa maximised, then `settings`."""
    base = image_classifier.fit_config(image_classifier.TrainConfig(), metric="kappa", maximize=True)
    return dataclasses.replace(base, augment=Augment(hflip=True, vflip=True), **settings)
