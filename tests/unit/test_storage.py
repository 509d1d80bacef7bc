"""Storage URLs: a missing database driver is a one-line error naming what to install."""

import pytest

from objectives.errors import InputError
from study import storage

from conftest import run_cli


@pytest.mark.parametrize("url, fragment", [
    ("mysql://study:pw@127.0.0.1/db", "pip install -e '.[mysql]'"),
    ("postgresql+psycopg2://study@127.0.0.1/db", "pip install -e '.[postgres]'"),
    ("mssql://study@127.0.0.1/db", "install a Python driver for mssql"),
])
def test_missing_driver_names_what_to_install(url, fragment):
    with pytest.raises(InputError, match="database driver missing") as caught:
        storage.check_url(url)
    assert fragment in str(caught.value) and "pw" not in str(caught.value)


def test_installed_drivers_and_sqlite_pass():
    assert storage.check_url("sqlite:///x.db") == "sqlite"
    assert storage.check_url("postgresql://study@127.0.0.1/db") == "postgresql"  # psycopg 3 from the test extra


@pytest.mark.slow
def test_missing_driver_via_the_cli_is_one_line_exit_2(tmp_path):
    result = run_cli("run", "dr_focal", "--storage", "mysql://study:s3cret@127.0.0.1/db", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "Traceback" not in result.stderr and "'.[mysql]'" in lines[0] and "s3cret" not in lines[0]
    )
