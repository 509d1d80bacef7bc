"""The pruning benchmark's numbers (benchmarks/pruning.py) over the committed REAL pools: curves
of configurations trained to the end by the runner (tests/fixtures/pruning_curves/<regime>.json),
replayed with every candidate rule, and checked for consistency with the replay's own results."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from study.run.replay import CANDIDATES, orders, replay, unpruned_pick

from conftest import FIXTURES, ROOT

CURVES = FIXTURES / "pruning_curves"
REGIMES = ("fundus", "digits")
ORDERS = 12


@pytest.fixture(scope="module")
def bench():
    """benchmarks/pruning.py, imported as the script imports its helpers."""
    folder = str(ROOT / "benchmarks")
    sys.path.insert(0, folder)
    try:
        import pruning

        yield pruning
    finally:
        sys.path.remove(folder)


@pytest.fixture(scope="module", params=REGIMES)
def pool(request, bench):
    return bench.Pool.from_doc(json.loads((CURVES / f"{request.param}.json").read_text()), "A0")


def test_the_committed_pools_are_real_runs_with_their_command(pool):
    doc = pool.doc
    assert doc["command"].startswith("python benchmarks/pruning.py") and len(doc["commit"]) >= 40
    assert len(pool.curves) >= 12 and {c.epochs for c in pool.curves} == {doc["epochs"]}
    assert all(-1.0 <= v <= 1.0 for v in pool.test)
    assert len({c.values for c in pool.curves}) == len(pool.curves)  # distinct trained configurations


def test_every_candidate_gives_consistent_numbers(bench, pool):
    """Saved fraction in [0, 1] and equal to the replay's; regret >= 0, and 0 whenever the
    unpruned pick survives (it then completes with the best value, so it is the pick); the top 3
    surviving implies the pick surviving."""
    pruned_somewhere = False
    for candidate in (bench.NONE, *CANDIDATES):
        s = bench.replay_pool(pool, candidate, None, ORDERS, seed=0)  # startup 4
        assert len(s.saved) == ORDERS
        assert np.all((s.saved >= 0) & (s.saved <= 1)) and np.all(s.regret >= 0)
        assert np.all(s.regret[s.pick_kept] == 0)
        assert np.all(s.pick_kept[s.top3_kept])
        assert 0.0 <= s.within <= 1.0 and (bench.shortfall([s]) == 0) == s.meets()
        pruned_somewhere |= bool(s.saved.max() > 0)
    assert pruned_somewhere, "on real pools some rule must stop trials, or the checks above mean nothing"


def test_scores_match_the_replays_own_results(bench, pool):
    record = CANDIDATES[0].record(pool.curves[0].epochs)
    results = replay(list(pool.curves), record, orders(len(pool.curves), ORDERS), study_name=bench.STUDY_NAME,
                     metric=pool.metric)
    s = bench.score(pool, results)
    picks = [bench.unpruned_in_order(pool.curves, r.order) for r in results]
    assert s.saved.tolist() == [r.saved for r in results]
    assert s.pick_kept.tolist() == [pick not in r.stopped for pick, r in zip(picks, results)]
    assert s.regret.tolist() == [max(0.0, pool.test[pick] - pool.test[r.picked]) for pick, r in zip(picks, results)]
    values = [c.best(True) for c in pool.curves]
    assert all(values[p] == max(values) for p in picks)
    assert picks[0] == unpruned_pick(pool.curves)  # the first order is the recorded one


def test_a_rule_that_prunes_nothing_saves_nothing_and_keeps_the_pick(bench, pool):
    s = bench.replay_pool(pool, bench.NONE, None, ORDERS, seed=1)
    assert s.saved.tolist() == [0.0] * ORDERS and s.pick_kept.all() and s.top3_kept.all()
    assert s.regret.tolist() == [0.0] * ORDERS and s.within == 1.0
    line = bench.goal_line("none", {pool.regime: [("A0", s)]})
    assert line.endswith(f"missed by {pool.regime} A0: 0.00% saved < 50%")


def test_the_goal_line_names_every_miss(bench):
    met = bench.Scores(np.array([0.6, 0.6]), np.array([True, True]), np.array([0.0, 0.005]), np.array([True, True]))
    bad = bench.Scores(np.array([0.6, 0.2]), np.array([True, False]), np.array([0.0, 0.3]), np.array([True, False]))
    assert bench.goal_line("r", {"x": [("B0", met)]}).endswith("with r: met")
    line = bench.goal_line("r", {"x": [("B0", met)], "y": [("B0", bad)]})
    assert "missed by y B0: 40.00% saved < 50%; y B0: regret <= 0.01 in 50.0% of orders < 90%" in line
    assert bench.shortfall([met]) == 0
    assert bench.shortfall([met, bad]) == pytest.approx((0.5 - 0.4) / 0.5 + (0.9 - 0.5) / 0.9)
