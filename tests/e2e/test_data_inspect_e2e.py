"""`study data inspect` through the real CLI: class shares, sizes and statistics of a clean folder,
and every planted problem found with exit 2 (the unit half: tests/unit/test_data_inspect.py)."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import dr_labels, run_cli


@pytest.mark.slow
def test_clean_dr_folder_shows_class_shares_sizes_and_stats(tmp_path: Path, dr_dir: Path):
    result = run_cli("data", "inspect", str(dr_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "layout: dr_lab" in out and "problems: none" in out
    labels = np.array(dr_labels(60))
    share = (labels == 0).mean()
    no_dr = next(line for line in out.splitlines() if line.startswith("train") and "No DR" in line)
    assert no_dr.split()[-2:] == [str((labels == 0).sum()), f"{share:.1%}"]
    assert "image sizes (W x H, by pixel count): min 48x48, median 48x48, max 48x48 (80 images read)" in out
    assert "train channel mean (R G B, 0..1):" in out


@pytest.mark.slow
def test_every_planted_problem_is_found_and_exit_2(tmp_path: Path, dr_dir: Path):
    (dr_dir / "train_0005.jpeg").unlink()  # missing
    (dr_dir / "test_0001.jpeg").write_bytes(b"not a jpeg at all")  # corrupt
    shutil.copyfile(dr_dir / "train_0010.jpeg", dr_dir / "test_0004.jpeg")  # train/test duplicate
    labels = (dr_dir / "train_label.csv").read_text().splitlines()
    labels[-1] = "7"  # out of range
    (dr_dir / "train_label.csv").write_text("\n".join(labels) + "\n")
    result = run_cli("data", "inspect", str(dr_dir), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "study: error: 3 problem(s) above would stop a run"
    out = result.stdout
    assert "problems: 4 (3 would stop a run)" in out
    assert "[stops a run]" in out and "1 train image(s) missing, e.g. train_0005.jpeg" in out
    assert "1 test image(s) unreadable: test_0001.jpeg (unreadable or corrupt image" in out
    assert "train label 7 of train_0059.jpeg is outside 0..4" in out
    assert "[warning]" in out and "1 test image(s) identical to a train image" in out
    assert "train train_0010.jpeg = test test_0004.jpeg" in out
    assert "(out of range)" in out  # the bad label is counted, not dropped
