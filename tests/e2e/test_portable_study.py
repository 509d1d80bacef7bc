"""A study is portable: it records the TOML it ran with and identifies its data by content, so
`ablate`, `report` and a resumed `run` work from another folder or machine (another path to the
same data, no copy of the file), and an edited file of the same name is refused, not mixed in."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from conftest import dr_labels, run_cli, storage_of, write_dr_lab

pytestmark = pytest.mark.slow
SPACE = """schema = 2
[study]
metric = "kappa"
sampler = "random"
pruner = "none"
trials = 2
seed = 1
[fixed]
arch = "convnet"
pretrained = false
epochs = 1
batch_size = 16
image_size = 32
num_classes = 5
[space]
lr = { low = 1e-3, high = 5e-2, log = true }
loss = { choices = ["ce", "focal"] }
"""


def test_a_study_resumes_and_ablates_from_its_recorded_space_and_data_content(tmp_path: Path):
    first = tmp_path / "machine_a"
    data = write_dr_lab(first / "dr", dr_labels(40), dr_labels(16, seed=1), size=32)
    space = first / "portable.toml"
    space.write_text(SPACE)
    made = run_cli("run", str(space), "--data", str(data), cwd=first)
    assert made.returncode == 0, made.stderr
    study = optuna.load_study(study_name="portable", storage=storage_of(first))
    assert study.user_attrs["space_text"] == SPACE

    # machine B: the results folder and the data copied to other paths, the TOML file left behind
    second = tmp_path / "machine_b"
    shutil.copytree(first / "results", second / "results")
    moved = shutil.copytree(data, second / "images")
    resumed = run_cli("run", "portable", "--data", str(moved), "--trials", "3", cwd=second)
    assert resumed.returncode == 0, resumed.stderr
    assert len(optuna.load_study(study_name="portable", storage=storage_of(second)).trials) == 3
    ablated = run_cli("ablate", "portable", "--data", str(moved), "--seeds", "3", cwd=second)
    assert ablated.returncode == 0, ablated.stderr
    assert run_cli("report", "portable", cwd=second).returncode == 0

    # other data at the same path is not the same data: refused in one line
    labels = (moved / "train_label.csv").read_text().splitlines()
    labels[1] = str((int(labels[1]) + 1) % 5)
    (moved / "train_label.csv").write_text("\n".join(labels) + "\n")
    changed = run_cli("run", "portable", "--data", str(moved), "--trials", "4", cwd=second)
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1
    assert "another search space, settings or dataset" in changed.stderr

    # an edited file of the same name is the one-line "space changed" error, not a silent change
    space.write_text(SPACE.replace("high = 5e-2", "high = 9e-2"))
    edited = run_cli("run", str(space), "--data", str(data), "--trials", "3", cwd=first)
    assert edited.returncode == 2 and len(edited.stderr.strip().splitlines()) == 1
    assert "created with another search space" in edited.stderr
