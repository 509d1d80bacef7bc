"""The real CLI in real subprocesses, on small real data, against a real SQLite storage."""

import hashlib
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_cli, tiny_space

pytestmark = pytest.mark.slow

PER_TRIAL_ATTRS = {
    "config",
    "curves",
    "best_epoch",
    "val_metrics",
    "val_confusion",
    "test_metrics",
    "test_confusion",
    "class_names",
}


def load(results: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{results / 'optuna.db'}")


def test_run_dr_focal_on_data_then_resume_and_list(tmp_path: Path, dr_dir: Path, torch_home: Path):
    args = (
        "run",
        "dr_focal",
        "--data",
        str(dr_dir),
        "--trials",
        "3",
        "--set",
        "image_size=32",
        "--set",
        "epochs=2",
        "--set",
        "arch=resnet18",
        "--set",
        "batch_size=16",
        "--results",
        str(tmp_path / "results"),
    )
    first = run_cli(*args, cwd=tmp_path, torch_home=torch_home)
    assert first.returncode == 0, first.stderr
    study = load(tmp_path / "results", "dr_focal")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete, "at least the start-up trials run to the end"
    for trial in complete:
        assert PER_TRIAL_ATTRS <= set(trial.user_attrs)
        assert len(trial.user_attrs["curves"]["val_kappa"]) == 2
        assert trial.value == trial.user_attrs["val_metrics"]["kappa"]
        best = trial.user_attrs["best_epoch"]
        assert trial.user_attrs["curves"]["val_kappa"][best - 1] == trial.value
        assert sum(map(sum, trial.user_attrs["test_confusion"])) == 20
        assert set(trial.user_attrs["test_metrics"]) >= {"accuracy", "balanced_accuracy", "macro_f1", "kappa", "recall"}
        assert trial.user_attrs["config"]["arch"] == "resnet18"
    for trial in finished:
        assert f"trial {trial.number:>3} {trial.state.name}" in first.stdout
    assert "best: trial" in first.stdout and str(tmp_path / "results" / "optuna.db") in first.stdout
    manifest = tmp_path / "results" / "dr_focal" / "split.csv"
    rows = manifest.read_text().splitlines()
    assert rows[0] == "image,split,group,label" and len(rows) == 1 + 80
    assert rows[1].startswith("train_0000.jpeg,") and {r.split(",")[1] for r in rows[1:]} == {"train", "val", "test"}
    assert study.user_attrs["split_hash"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert all(t.user_attrs["split_hash"] == study.user_attrs["split_hash"] for t in complete)
    assert study.user_attrs["sampler"]["class"] == "TPESampler" and study.user_attrs["sampler"]["group"] is True
    assert study.user_attrs["pruner"] == {"class": "MedianPruner", "n_startup_trials": 4, "n_warmup_steps": 5}
    assert study.user_attrs["fixed"]["norm_mean"] == pytest.approx([0.485, 0.456, 0.406])  # pretrained may be used

    again = run_cli(*args[:4], "--trials", "6", *args[6:], cwd=tmp_path, torch_home=torch_home)
    assert again.returncode == 0, again.stderr
    study = load(tmp_path / "results", "dr_focal")
    assert len([t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 6
    assert [t.number for t in study.trials] == list(range(len(study.trials)))
    assert "3 finished trials, running to 6" in again.stdout

    done = run_cli(*args[:4], "--trials", "6", *args[6:], cwd=tmp_path, torch_home=torch_home)
    assert done.returncode == 0 and "already has 6 finished trials" in done.stdout

    listing = run_cli("list", "--results", str(tmp_path / "results"), cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("dr_focal"))
    counts = row.split()[1:5]
    n_complete = len([t for t in study.trials if t.state == TrialState.COMPLETE])
    assert counts == [str(n_complete), str(6 - n_complete), "0", "0"]
    assert f"kappa={study.best_value:.4f}" in row


def test_embedded_default_run_generates_data_and_resumes(tmp_path: Path):
    space = tiny_space(tmp_path / "tiny.toml", trials=2)
    first = run_cli("run", str(space), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "pretrained weights not found, running with pretrained=false" in first.stderr
    assert "resnet18-f37072fd.pth" in first.stderr
    assert "embedded dataset synthetic-fundus" in first.stdout
    data = next((tmp_path / "results" / "data").glob("synthetic-fundus-*"))
    assert len(list(data.glob("*.jpeg"))) == 140
    study = load(tmp_path / "results", "tiny")
    assert len(study.trials) == 2
    assert all(t.user_attrs["config"]["pretrained"] is False for t in study.trials)
    assert study.user_attrs["pinned"] == {"pretrained": False}
    second = run_cli("run", str(space), "--trials", "3", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert len(load(tmp_path / "results", "tiny").trials) == 3
    assert len(list((tmp_path / "results" / "cache").glob("*.npy"))) == 2  # train + test, decoded once


def test_median_pruner_prunes_trials_with_shorter_curves(tmp_path: Path, dr_dir: Path):
    """lr is either useless (1e-7) or good (0.05); after two start-up trials the median pruner
    stops the bad ones after their warm-up epoch, with their curves kept."""
    space = tmp_path / "prune.toml"
    space.write_text(
        'schema = 2\n[study]\ndirection = "minimize"\nmetric = "loss"\nsampler = "random"\n'
        'pruner = "median"\ntrials = 8\nstartup_trials = 2\nwarmup_epochs = 1\nseed = 1\n'
        '[fixed]\nnum_classes = 5\nhflip = true\nvflip = true\n'
        'epochs = 4\nbatch_size = 16\nimage_size = 32\narch = "resnet18"\npretrained = false\n'
        '[space]\nlr = { choices = [1e-7, 0.05] }\n'
    )
    result = run_cli("run", str(space), "--data", str(dr_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = load(tmp_path / "results", "prune")
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert pruned, result.stdout
    assert len(pruned) + len(complete) == 8
    for trial in pruned:
        assert 1 <= len(trial.user_attrs["curves"]["val_loss"]) < 4
        assert "PRUNED" in result.stdout
    assert all(len(t.user_attrs["curves"]["val_loss"]) == 4 for t in complete)


def test_nan_trial_is_recorded_and_study_goes_on(tmp_path: Path, dr_dir: Path):
    space = tmp_path / "nan.toml"
    space.write_text(
        'schema = 2\n[study]\nsampler = "grid"\npruner = "none"\ntrials = 2\n'
        '[fixed]\nnum_classes = 5\nhflip = true\nvflip = true\n'
        'epochs = 1\nbatch_size = 16\nimage_size = 32\narch = "resnet18"\npretrained = false\n'
        '[space]\nlr = { choices = [1e30, 0.01] }\n'
    )
    result = run_cli("run", str(space), "--data", str(dr_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = load(tmp_path / "results", "nan")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.user_attrs["fail_reason"] for t in failed] == ["nan_loss"]
    assert failed[0].params["lr"] == 1e30
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 1
    assert "FAIL     nan_loss" in result.stdout
    listing = run_cli("list", cwd=tmp_path)
    assert "failed: nan_loss x1" in listing.stdout


def one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("run", "dr_focul"), ("unknown study 'dr_focul'", "dr_focal")),
        (("run", "dr_focal", "--set", "dropout=0.1"), ("--set dropout: unknown parameter",)),
        (("run", "dr_focal", "--set", "lr"), ("expected NAME=VALUE",)),
        (("run", "dr_focal", "--data", "/nonexistent/dr"), ("/nonexistent/dr: no such directory",)),
        (("run", "dr_focal", "--trials", "many"), ("argument --trials: invalid int value",)),
        (("run", "dr_focal", "--device", "tpu"), ("argument --device: invalid choice",)),
        (("run", "dr_focal", "--storage", "nosuchdb://x/y"), ("--storage nosuchdb://x/y",)),
        (("run", "missing.toml"), ("missing.toml: no such search-space file",)),
    ],
)
def test_bad_arguments_are_one_line_exit_2(tmp_path: Path, args, fragments):
    one_line_error(run_cli(*args, cwd=tmp_path), *fragments)
    assert not (tmp_path / "results" / "optuna.db").exists()


def test_bad_data_and_weights_stop_before_the_study_exists(tmp_path: Path, dr_dir: Path):
    (dr_dir / "train_0007.jpeg").unlink()
    (dr_dir / "train_0008.jpeg").unlink()
    one_line_error(run_cli("run", "dr_focal", "--data", str(dr_dir), "--set", "pretrained=false", cwd=tmp_path),
                   "2 train image(s) missing", "train_0007.jpeg")
    (dr_dir / "train_label.csv").write_text("level\n" + "0\n" * 30)
    one_line_error(run_cli("run", "dr_focal", "--data", str(dr_dir), "--set", "pretrained=false", cwd=tmp_path),
                   "has 60 rows but train_label.csv has 30")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(
        run_cli("run", "dr_focal", "--data", str(empty), "--set", "pretrained=false", cwd=tmp_path), "no known layout"
    )
    assert not (tmp_path / "results" / "optuna.db").exists()


@pytest.mark.parametrize("group_by, fragment", [
    ("([", "group_by '([': not a regular expression"),
    ("^(x)_", "matches none of the 80 image names, e.g. 'train_0000'"),
    ("^(train_000)\\d$", "matches only 10 of 80 image names; e.g. 'train_0010' does not match"),
])
def test_bad_group_by_is_one_line_and_writes_nothing(tmp_path: Path, dr_dir: Path, group_by: str, fragment: str):
    result = run_cli(
        "run",
        "dr_focal",
        "--data",
        str(dr_dir),
        "--set",
        "pretrained=false",
        "--set",
        f"group_by='{group_by}'",
        cwd=tmp_path,
    )
    one_line_error(result, fragment)
    assert not (tmp_path / "results" / "optuna.db").exists()


def test_missing_pretrained_weights_on_real_data_name_the_file(tmp_path: Path, dr_dir: Path, empty_torch_home: Path):
    result = run_cli("run", "dr_focal", "--data", str(dr_dir), cwd=tmp_path, torch_home=empty_torch_home)
    one_line_error(
        result, "resnet18-f37072fd.pth", str(empty_torch_home / "hub" / "checkpoints"), "resnet50-0676ba61.pth"
    )
    assert not (tmp_path / "results" / "optuna.db").exists()


def test_corrupt_jpeg_and_bad_label_via_cli(tmp_path: Path, dr_dir: Path, torch_home: Path):
    (dr_dir / "test_0003.jpeg").write_bytes(b"\xff\xd8\xff garbage")
    one_line_error(run_cli("run", "dr_focal", "--data", str(dr_dir), "--set", "arch=resnet18", "--set", "image_size=32",
                           cwd=tmp_path, torch_home=torch_home), "test_0003.jpeg: unreadable or corrupt image")
    (dr_dir / "test_label.csv").write_text("level\n" + "5\n" * 20)
    one_line_error(
        run_cli(
            "run", "dr_focal", "--data", str(dr_dir), "--set", "arch=resnet18", cwd=tmp_path, torch_home=torch_home
        ),
        "label 5",
        "outside 0..4",
    )
    assert not (tmp_path / "results" / "optuna.db").exists()


def test_changed_space_refuses_to_mix_trials(tmp_path: Path, dr_dir: Path):
    space = tmp_path / "s.toml"
    text = ('schema = 2\n[study]\npruner = "none"\ntrials = 1\n'
            '[fixed]\nnum_classes = 5\nhflip = true\nvflip = true\n'
            'epochs = 1\nbatch_size = 16\nimage_size = 32\narch = "resnet18"\npretrained = false\n'
            '[space]\nlr = { low = 0.001, high = 0.1, log = true }\n')
    space.write_text(text)
    assert run_cli("run", str(space), "--data", str(dr_dir), cwd=tmp_path).returncode == 0
    space.write_text(text.replace("high = 0.1", "high = 0.2"))
    one_line_error(run_cli("run", str(space), "--data", str(dr_dir), "--trials", "2", cwd=tmp_path),
                   "created with another search space", "--study-name", "--allow-space-change")


def test_cuda_requested_without_cuda(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    one_line_error(run_cli("run", "dr_focal", "--device", "cuda", cwd=tmp_path), "--device cuda: no CUDA device")


def test_five_failed_trials_in_a_row_end_run_with_exit_1_and_one_summary_line(tmp_path: Path, dr_dir: Path):
    """A recipe whose every trial diverges: the run stops after five and says so with a non-zero
    exit, never 0 as if the study were done."""
    space = tmp_path / "diverge.toml"
    space.write_text(
        'schema = 2\n[study]\nsampler = "random"\npruner = "none"\ntrials = 20\n'
        '[fixed]\nnum_classes = 5\nhflip = true\nvflip = true\n'
        'epochs = 1\nbatch_size = 16\nimage_size = 32\narch = "resnet18"\npretrained = false\n'
        '[space]\nlr = { low = 1e29, high = 1e30, log = true }\n'
    )
    result = run_cli("run", str(space), "--data", str(dr_dir), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("study: error: 5 trials failed in a row (trials 0-4; last: nan_loss)")
    assert "0 of 20 trials finished" in lines[0]
    assert [t.state for t in load(tmp_path / "results", "diverge").trials] == [TrialState.FAIL] * 5
