"""A stored study whose recorded range the parser now refuses still reports (the unit half:
tests/unit/test_values.py)."""

from __future__ import annotations

import pytest

from study import cli

from support.values import stored_with_bad_range


@pytest.mark.slow
def test_a_stored_study_whose_range_is_now_refused_still_reports(tmp_path):
    results = stored_with_bad_range(tmp_path)
    assert cli.main(["report", "recipe2", "--results", str(results), "--format", "csv"]) == 0
    assert (results / "recipe2" / "factors.csv").is_file()
