"""A missing database driver, through the CLI, is one line and exit 2 (the unit half:
tests/unit/test_storage.py)."""

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_missing_driver_via_the_cli_is_one_line_exit_2(tmp_path):
    result = run_cli("run", "dr_focal", "--storage", "mysql://study:s3cret@127.0.0.1/db", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "Traceback" not in result.stderr and "'.[mysql]'" in lines[0] and "s3cret" not in lines[0]
    )
