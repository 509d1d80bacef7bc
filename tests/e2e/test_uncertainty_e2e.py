"""The 95 % cluster-bootstrap interval of accuracy covers about 95 % over 1,000 repetitions (the
unit half: tests/unit/test_uncertainty.py)."""

from __future__ import annotations

import pytest

from support.uncertainty import coverage


@pytest.mark.slow
def test_coverage_of_the_accuracy_interval_is_about_95_percent_many_reps() -> None:
    measured = coverage(reps=1000, n_groups=150, B=2000, seed=1)
    assert 0.93 <= measured <= 0.97, measured
