"""`python -m study run` refuses replaced images, accepts a copy of the folder and reports the data
(the unit half: tests/unit/test_data_identity.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli
from support.data_identity import SPACE, TEST_PATIENTS_PER_GRADE, copy_folder, replace_image, write_grouped


@pytest.mark.slow
def test_cli_run_refuses_replaced_images_accepts_a_copy_and_reports_the_data(tmp_path: Path, torch_home: Path):
    data = write_grouped(tmp_path / "dr")
    (tmp_path / "idspace.toml").write_text(SPACE.replace("[space]", '[space]\narch = { choices = ["resnet18"] }'))
    first = run_cli("run", "idspace.toml", "--data", str(data), "--device", "cpu", cwd=tmp_path,
                    torch_home=torch_home)
    assert first.returncode == 0, first.stderr
    split_csv = tmp_path / "results" / "idspace" / "split.csv"
    before = split_csv.read_bytes()
    db_before = (tmp_path / "results" / "optuna.db").read_bytes()

    copy = copy_folder(data, tmp_path / "copy")
    replace_image(copy / "3_left.jpeg")
    refused = run_cli("run", "idspace.toml", "--data", str(copy), "--trials", "2", "--device", "cpu", cwd=tmp_path,
                      torch_home=torch_home)
    assert refused.returncode == 2, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if "group(s) of the data's own test split" not in line]
    assert len(errors) == 1 and "other bytes under the same names" in errors[0]  # one line (and the leak warning)
    assert split_csv.read_bytes() == before and (tmp_path / "results" / "optuna.db").read_bytes() == db_before

    accepted = run_cli("run", "idspace.toml", "--data", str(copy_folder(data, tmp_path / "copy2")), "--device",
                       "cpu", cwd=tmp_path, torch_home=torch_home)
    assert accepted.returncode == 0, accepted.stderr
    assert "already" in accepted.stdout + accepted.stderr and "hash" not in accepted.stderr

    report = run_cli("report", "idspace", "--format", "md,csv", cwd=tmp_path, torch_home=torch_home)
    assert report.returncode == 0, report.stderr
    folder = tmp_path / "results" / "idspace"
    assert (folder / "data.md").is_file() and (folder / "data.csv").is_file() and not (folder / "data.tex").exists()
    assert "## Data" in (folder / "report.md").read_text()
    assert pd.read_csv(folder / "data.csv").test_patients.tolist() == [*TEST_PATIENTS_PER_GRADE, 7]
