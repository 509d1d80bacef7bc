"""Storage URLs: a missing database driver is a one-line error naming what to install."""

import pytest

from objectives.errors import InputError
from study import storage


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
