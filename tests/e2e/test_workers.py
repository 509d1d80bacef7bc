"""Many workers, killed workers, interrupts: real processes on real storages."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study import storage as storage_module
from study.dashboard import trial_pages

from conftest import repo_env, run_cli

pytestmark = pytest.mark.slow

SPACE = """schema = 2
[study]
sampler = "random"
pruner = "none"
trials = 4
[fixed]
num_classes = 5
hflip = true
vflip = true
epochs = {epochs}
batch_size = 16
image_size = 32
arch = "resnet18"
pretrained = false
[space]
lr = {{ low = 1e-3, high = 3e-2, log = true }}
loss = {{ choices = ["ce", "focal"] }}
"""


def space_file(tmp_path: Path, epochs: int = 2) -> Path:
    path = tmp_path / "w.toml"
    path.write_text(SPACE.format(epochs=epochs))
    return path


def start(*args: str, cwd: Path) -> subprocess.Popen:
    """`python -m study ARGS` in its own session, with SIGINT at its default: a test suite started in
    the background of a non-interactive shell inherits SIGINT ignored, and so would the child (a
    Ctrl-C on a terminal reaches a foreground `run` with the default)."""
    env = repo_env(TORCH_HOME=str(cwd / "no_torch_home"))
    return subprocess.Popen([sys.executable, "-m", "study", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


# The tests that interrupt a trial mid-way train on the CPU: on a GPU (an H200) a tiny 5-epoch trial
# can end, and delete its checkpoint, between wait_for seeing trial0.pt and the signal arriving.
ON_CPU = ("--device", "cpu")


def wait_for(path_glob, folder: Path, timeout: float = 240) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(folder.glob(path_glob)) if folder.exists() else []
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"nothing matched {path_glob} in {folder}")


def finished(study: optuna.Study) -> list:
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def check_exact(study: optuna.Study, target: int) -> None:
    assert len(finished(study)) == target
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    numbers = [t.number for t in study.trials]
    assert len(set(numbers)) == len(numbers)


def check_target(study: optuna.Study, target: int, workers: int) -> None:
    """At least `target` finished trials, at most `workers` - 1 more (workers that asked at the same
    moment), none failed or left running: no trial exists only for bookkeeping."""
    assert target <= len(finished(study)) <= target + workers - 1
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.FAIL)]
    assert not [t for t in study.trials if t.user_attrs.get("fail_reason") == "surplus"]


def test_four_local_workers_share_one_sqlite_file(tmp_path: Path, dr_dir: Path):
    result = run_cli(
        "run", str(space_file(tmp_path)), "--data", str(dr_dir), "--trials", "6", "--workers", "4", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "database is locked" not in result.stderr + result.stdout
    assert "started 4 workers" in result.stdout
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path / 'results' / 'optuna.db'}")
    check_target(study, 6, workers=4)
    assert len({t.params["lr"] for t in finished(study)}) == len(
        finished(study)
    )  # workers do not replay each other's suggestions


def test_workers_on_postgresql(tmp_path: Path, dr_dir: Path):
    url = os.environ.get("STUDY_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("STUDY_TEST_POSTGRES_URL is not set (.ci/run starts PostgreSQL and sets it)")
    name = f"w_pg_{os.getpid()}_{int(time.time())}"
    result = run_cli("run", str(space_file(tmp_path)), "--data", str(dr_dir), "--trials", "9", "--workers", "3",
                     "--storage", url, "--study-name", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    check_target(optuna.load_study(study_name=name, storage=url), 9, workers=3)
    password = url.split("//", 1)[1].split("@")[0].partition(":")[2]
    if password:
        assert password not in result.stdout + result.stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_marks_trial_and_next_run_resumes_from_its_checkpoint(tmp_path: Path, dr_dir: Path, signum, code):
    space = space_file(tmp_path, epochs=5)
    args = ("run", str(space), "--data", str(dr_dir), "--trials", "2", "--checkpoint-every", "0", *ON_CPU)
    proc = start(*args, cwd=tmp_path)
    checkpoint = wait_for("trial0.pt", tmp_path / "results" / "checkpoints" / "w")
    os.killpg(proc.pid, signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    storage = f"sqlite:///{tmp_path / 'results' / 'optuna.db'}"
    first = optuna.load_study(study_name="w", storage=storage).trials[0]
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == "interrupted"
    assert checkpoint.exists()
    saved_epochs = len(first.user_attrs["curves"]["epoch"])

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "re-running interrupted trial 0" in again.stdout
    study = optuna.load_study(study_name="w", storage=storage)
    check_exact(study, 2)
    retry = next(t for t in study.trials if t.user_attrs.get("resume_of") == 0)
    assert retry.state == TrialState.COMPLETE and retry.params == first.params
    resumed = retry.user_attrs["resumed_from"]
    assert resumed["trial"] == 0 and resumed["epoch"] >= 1
    curves = retry.user_attrs["curves"]
    assert curves["epoch"] == [1, 2, 3, 4, 5]  # continued, not restarted
    k = resumed["epoch"]
    assert curves["train_loss"][:k] == first.user_attrs["curves"]["train_loss"][:k]
    assert saved_epochs >= k
    assert not list((tmp_path / "results" / "checkpoints" / "w").glob(f"trial{retry.number}.pt"))


def test_a_damaged_checkpoint_restarts_its_trial_from_epoch_1_with_one_warning(tmp_path: Path, dr_dir: Path):
    space = space_file(tmp_path, epochs=5)
    args = ("run", str(space), "--data", str(dr_dir), "--trials", "2", "--checkpoint-every", "0", *ON_CPU)
    proc = start(*args, cwd=tmp_path)
    checkpoint = wait_for("trial0.pt", tmp_path / "results" / "checkpoints" / "w")
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    with open(checkpoint, "r+b") as f:  # an interrupted copy of the results folder
        f.truncate(checkpoint.stat().st_size // 3)
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    warnings = [line for line in again.stderr.splitlines() if "is damaged" in line]
    assert len(warnings) == 1 and "checkpoints/w/trial0.pt is damaged" in warnings[0]
    assert "restarts from epoch 1" in warnings[0]
    assert "Traceback" not in again.stderr
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path / 'results' / 'optuna.db'}")
    check_exact(study, 2)
    retry = next(t for t in study.trials if t.user_attrs.get("resume_of") == 0)
    assert retry.state == TrialState.COMPLETE and "resumed_from" not in retry.user_attrs
    assert retry.user_attrs["curves"]["epoch"] == [1, 2, 3, 4, 5]


def test_killed_worker_trial_is_failed_by_heartbeat_and_retried_from_checkpoint(tmp_path: Path, dr_dir: Path):
    space = space_file(tmp_path, epochs=5)
    args = ("run", str(space), "--data", str(dr_dir), "--trials", "2", "--heartbeat", "1", "--checkpoint-every", "0")
    args = (*args, *ON_CPU)
    proc = start(*args, cwd=tmp_path)
    wait_for("trial0.pt", tmp_path / "results" / "checkpoints" / "w")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    storage = f"sqlite:///{tmp_path / 'results' / 'optuna.db'}"
    dead = optuna.load_study(study_name="w", storage=storage).trials[0]
    assert dead.state == TrialState.RUNNING  # nobody marked it: the process died
    time.sleep(4)  # past the grace period of 3 heartbeats
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="w", storage=storage)
    check_exact(study, 2)
    assert study.trials[0].state == TrialState.FAIL
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.params == dead.params and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["config"]["seed"] == dead.user_attrs["config"]["seed"]  # it resumes that trial's weights
    resumed = retry.user_attrs["resumed_from"]
    assert resumed["trial"] == 0 and resumed["epoch"] >= 1
    assert retry.user_attrs["curves"]["epoch"] == [1, 2, 3, 4, 5]
    assert retry.user_attrs.get("fail_reason") is None
    assert study.trials[0].user_attrs["fail_reason"] == "heartbeat"  # not a silent FAIL
    assert not (tmp_path / "results" / "checkpoints" / "w" / "trial0.pt").exists()  # the retry used it up
    assert "Warning" not in again.stderr, again.stderr  # Optuna's ExperimentalWarning, torch's UserWarnings
    # the worker that failed the dead trial wrote its dashboard note; the retry has its own page
    store = storage_module.open_storage(storage)
    dead_note = trial_pages.read_note(study, store, 0)
    assert dead_note.startswith("## Trial 0: fail") and "stopped sending heartbeats" in dead_note
    assert "resumes from its checkpoint" in dead_note
    assert f"## Trial {retry.number}: complete" in trial_pages.read_note(study, store, retry.number)


def one_line(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unreachable_postgres_and_password_masked(tmp_path: Path, dr_dir: Path):
    result = run_cli("run", str(space_file(tmp_path)), "--data", str(dr_dir),
                     "--storage", "postgresql://study:s3cretpw@127.0.0.1:9/none", cwd=tmp_path)
    one_line(result, "--storage postgresql://study:***@127.0.0.1:9/none")
    assert "s3cretpw" not in result.stderr + result.stdout


def test_results_folder_that_cannot_be_written(tmp_path: Path, dr_dir: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_cli(
        "run", str(space_file(tmp_path)), "--data", str(dr_dir), "--results", str(blocker / "results"), cwd=tmp_path
    )
    one_line(result, "cannot write there")


def test_a_results_folder_that_breaks_mid_run_stops_it_with_one_line_and_exit_74(tmp_path: Path, dr_dir: Path):
    """The checkpoints' folder unusable (here a file stands where it goes; a full or read-only
    disk fails the same way): trial 0 fails at its first checkpoint, and the run stops there
    instead of failing every trial and exiting 0."""
    blocker = tmp_path / "results" / "checkpoints" / "w"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    result = run_cli("run", str(space_file(tmp_path)), "--data", str(dr_dir), "--trials", "3",
                     "--checkpoint-every", "0", cwd=tmp_path)
    assert result.returncode == 74, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("study: error: the run's environment failed in trial 0 (")
    assert "trial 0 is recorded as failed" in lines[0]
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path / 'results' / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.FAIL]
