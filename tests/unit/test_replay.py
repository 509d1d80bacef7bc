"""Replay of pruning rules over recorded curves (`study.run.replay`), checked against the runner's
own loop, and the [study] pruner keys that build and record the rules."""

import dataclasses
import json
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from objectives.image_classifier import ROLES
from study import records
from study.run.replay import (
    CANDIDATES,
    Candidate,
    Curve,
    complete_curves,
    orders,
    replay,
    replay_order,
    unpruned_pick,
)
from study.run.reporter import Feed, Reporter
from study.run.samplers import build_pruner, make_pruner, pruner_feed, pruner_record, pruner_settings
from study.spaces.space import SpaceError, StudySettings
from study.spaces.space_file import load_space_text

from conftest import FIXTURES
from support.pruning import run_scripted

FIXTURE = FIXTURES / "pruning_curves" / "synthetic.json"
NAME = "dr_focal"  # the live study's name: Hyperband's brackets depend on it


@pytest.fixture(scope="module")
def curves() -> list[Curve]:
    doc = json.loads(FIXTURE.read_text())
    return [Curve.from_curves(t["curves"], doc["metric"]) for t in doc["trials"]]


def settings(**keys) -> StudySettings:
    return dataclasses.replace(StudySettings(), startup_trials=4, warmup_epochs=5, **keys)


RULES = {
    "median": settings(pruner="median"),
    "percentile": settings(pruner="percentile", pruner_percentile=40.0),
    "asha": settings(pruner="asha", pruner_min_resource=3),
    "hyperband": settings(pruner="hyperband"),
    "patient-median-ema": settings(pruner="median", pruner_patience=2, pruner_feed="ema", pruner_ema=0.5),
    "median-best": settings(pruner="median", pruner_feed="best"),
}


def live(curves: list[Curve], record: dict, order: tuple[int, ...], storage=None) -> list[optuna.trial.FrozenTrial]:
    """A live study named like the replay's: the runner's loop, its reporter and pruner, with a
    stub objective emitting the recorded curves in `order` and returning the best epoch's value."""
    study = optuna.create_study(study_name=NAME, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0), pruner=build_pruner(record))
    return run_scripted(study, [(curves[i].fe_epochs, list(curves[i].values)) for i in order], live=True,
                        feed=pruner_feed(record, "maximize"), returns=max)


@pytest.mark.parametrize("rule", RULES)
def test_replay_prunes_the_trials_a_live_run_prunes_at_the_same_epochs(curves, rule):
    record = pruner_record(RULES[rule], epochs=15)
    order = orders(len(curves), 2, seed=3)[1]
    trials = live(curves, record, order)
    stopped = {order[t.number]: len(t.user_attrs[records.CURVES]["epoch"]) for t in trials
               if t.state == TrialState.PRUNED}
    result = replay(curves, record, [order], study_name=NAME)[0]
    assert stopped, "the rule must stop some trials for the comparison to mean anything"
    assert dict(result.stopped) == stopped
    assert result.epochs_trained == sum(len(t.user_attrs[records.CURVES]["epoch"]) for t in trials)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    assert result.picked == order[best.number]


def test_replay_equals_a_live_run_on_sqlite(curves, tmp_path):
    """The same on the storage `run` uses, with Hyperband (whose brackets hang on the study name)."""
    record = pruner_record(RULES["hyperband"], epochs=15)
    order = orders(len(curves), 3, seed=5)[2]
    trials = live(curves, record, order, storage=f"sqlite:///{tmp_path / 'live.db'}")
    stopped = {order[t.number]: len(t.user_attrs[records.CURVES]["epoch"]) for t in trials
               if t.state == TrialState.PRUNED}
    assert stopped and dict(replay(curves, record, [order], study_name=NAME)[0].stopped) == stopped


def test_each_order_gets_a_fresh_pruner_and_study(curves):
    """Replaying order A after other orders gives what A gives alone: no pruner or study state
    leaks across orders (Hyperband's brackets, SuccessiveHalving's rungs)."""
    some = orders(len(curves), 6, seed=1)
    for rule in ("hyperband", "asha"):
        record = pruner_record(RULES[rule], epochs=15)
        alone = replay(curves, record, [some[0]], study_name=NAME)[0]
        after = replay(curves, record, some[1:] + [some[0]], study_name=NAME)[-1]
        assert after == alone


def test_hyperbands_brackets_follow_the_study_name(curves):
    """Hyperband buckets trials by crc32(study name + number): the replay must use the live name."""
    record = pruner_record(RULES["hyperband"], epochs=15)
    some = orders(len(curves), 5, seed=2)
    ours = replay(curves, record, some, study_name=NAME)
    other = replay(curves, record, some, study_name="another-name")
    assert [r.stopped for r in ours] != [r.stopped for r in other]
    median = pruner_record(RULES["median"], epochs=15)  # the median rule has no brackets
    assert ([r.stopped for r in replay(curves, median, some, study_name=NAME)]
            == [r.stopped for r in replay(curves, median, some, study_name="another-name")])


def test_epochs_counted_and_the_picked_configuration():
    """A leader; a trial far below stops after its first FT epoch (after 1 FE epoch in the
    second); a late riser that beats the leader is stopped too, so the pick is the leader."""
    record = {"class": "MedianPruner", "n_startup_trials": 1, "n_warmup_steps": 0}
    curves = [Curve((0.6, 0.7, 0.8, 0.8)), Curve((0.1, 0.1, 0.1, 0.1)), Curve((0.1, 0.1, 0.1, 0.1), fe_epochs=1),
              Curve((0.0, 0.1, 0.2, 0.95))]
    result = replay_order(curves, record, (0, 1, 2, 3), study_name=NAME)
    assert dict(result.stopped) == {1: 1, 2: 2, 3: 1}
    assert (result.epochs_trained, result.epochs_full) == (4 + 1 + 2 + 1, 16)
    assert result.saved == pytest.approx(1 - 8 / 16)
    assert result.picked == 0 and unpruned_pick(curves) == 3  # the rule lost the winner
    riser_first = replay_order(curves, record, (3, 0, 1, 2), study_name=NAME)  # the riser completes first
    assert riser_first.picked == 3 and 3 not in riser_first.stopped


def test_a_rule_that_prunes_nothing_saves_nothing_and_keeps_the_pick(curves):
    for result in replay(curves, {"class": "NopPruner"}, orders(len(curves), 5), study_name=NAME):
        assert result.saved == 0.0 and not result.stopped and result.epochs_trained == 15 * len(curves)
        assert result.picked == unpruned_pick(curves)


def test_a_studys_complete_curves_replay_as_recorded(curves):
    """The curves of an unpruned study's complete trials, read back from its trials, replay to the
    study's own pick; failed trials and pruned ones are not among them."""
    study = optuna.create_study(study_name=NAME, direction="maximize", pruner=optuna.pruners.NopPruner())
    run_scripted(study, [(c.fe_epochs, list(c.values)) for c in curves[:6]], returns=max)
    study.tell(study.ask(), state=TrialState.FAIL)
    found = complete_curves(study, "kappa")
    assert list(found) == list(range(6)) and list(found.values()) == curves[:6]
    result = replay(list(found.values()), {"class": "NopPruner"}, [tuple(range(6))], study_name=NAME)[0]
    assert list(found)[result.picked] == study.best_trial.number


def test_orders_start_with_the_recorded_one_and_are_permutations():
    some = orders(7, 30, seed=4)
    assert some[0] == tuple(range(7)) and len(some) == 30 and len(set(some)) > 20
    assert all(sorted(o) == list(range(7)) for o in some) and orders(7, 30, seed=4) == some


def test_curves_read_from_a_trials_stored_columns():
    curve = Curve.from_curves({"epoch": [1, 2, 3], "phase": ["fe", "ft", "ft"], "val_kappa": [0.1, 0.2, 0.3],
                               "val_loss": [1.0, 0.9, 0.8]}, "kappa")
    assert curve == Curve((0.1, 0.2, 0.3), fe_epochs=1) and curve.epochs == 3
    assert Curve.from_curves({"val_loss": [1.0, 0.8]}, "loss").best(maximize=False) == 0.8
    with pytest.raises(ValueError, match="FE epochs must come before"):
        Curve.from_curves({"phase": ["ft", "fe"], "val_kappa": [0.1, 0.2]}, "kappa")


@pytest.mark.parametrize(("feed", "fed"), [
    (Feed("raw"), [0.5, 0.3, 0.4]),
    (Feed("best"), [0.5, 0.5, 0.5]),
    (Feed("best", maximize=False), [0.5, 0.3, 0.3]),
    (Feed("ema", ema=0.5), [0.5, 0.4, 0.4]),
])
def test_the_rule_is_fed_the_feeds_value_and_the_curves_keep_the_raw_one(feed, fed):
    """Optuna stores what it is fed (a pruned trial's value is the last one); `curves` keeps raw."""
    study = optuna.create_study(direction="maximize")
    reporter = Reporter(study.ask(), "kappa", fe_epochs=1, epochs=4, feed=feed)
    for epoch, value in enumerate([0.05, 0.5, 0.3, 0.4], start=1):
        reporter(epoch, {"epoch": epoch, "phase": "fe" if epoch == 1 else "ft", "val_kappa": value})
    trial = study.trials[0]
    assert trial.intermediate_values == pytest.approx({1: fed[0], 2: fed[1], 3: fed[2]})
    assert trial.user_attrs[records.CURVES]["val_kappa"] == [0.05, 0.5, 0.3, 0.4]


def test_candidates_build_fresh_pruners_with_distinct_names():
    names = [c.name for c in CANDIDATES]
    assert len(names) == len(set(names)) == 22 and names[0] == "median"
    assert "patient2-median/ema" in names and "patient2-median/best" not in names  # a best-so-far never falls
    assert {"catchup", "catchup-w1", "catchup/best", "catchup/ema"} <= set(names)
    for candidate in CANDIDATES:
        record = candidate.record(15)
        assert isinstance(build_pruner(record), optuna.pruners.BasePruner)
        assert build_pruner(record) is not build_pruner(record)
    assert CANDIDATES[0].record(15) == {"class": "MedianPruner", "n_startup_trials": 4, "n_warmup_steps": 5}
    asha = next(c for c in CANDIDATES if c.name == "asha3-min3/ema").record(15)
    assert asha == {"class": "SuccessiveHalvingPruner", "min_resource": 3, "min_early_stopping_rate": 0,
                    "reduction_factor": 3, "feed": "ema", "ema": 0.5}
    base = dataclasses.replace(StudySettings(), startup_trials=2, pruner_patience=5)  # the study's own settings
    assert Candidate("m", {"pruner": "median"}).record(15, base) == {
        "class": "MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 1}  # its patience is not the rule's


TOML = textwrap.dedent("""\
    schema = 2
    [study]
    metric = "kappa"
    {study}
    [fixed]
    epochs = 15
    [space]
    lr = {{low = 0.001, high = 0.1, log = true}}
""")


def space(study: str):
    return load_space_text(TOML.format(study=study), Path("t.toml"))


def test_pruner_keys_build_and_record_the_rule(tmp_path):
    loaded = space('pruner = "percentile"\npruner_percentile = 25\npruner_patience = 2\npruner_feed = "ema"\n'
                   'pruner_ema = 0.3\nwarmup_epochs = 5')
    recorded = pruner_settings(loaded, ROLES)
    assert recorded == {"class": "PatientPruner", "patience": 2, "feed": "ema", "ema": 0.3, "wrapped_pruner": {
        "class": "PercentilePruner", "percentile": 25.0, "n_startup_trials": 4, "n_warmup_steps": 5}}
    with _no_experimental_warning():
        pruner = make_pruner(loaded, ROLES)
    assert isinstance(pruner, optuna.pruners.PatientPruner)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    records.StudyRecord(space_hash="h", space_file="t.toml", space_text=loaded.text, objective="image_classifier",
                        metric="kappa", dataset="d", fixed={"epochs": 15}, pinned={},
                        sampler={"class": "RandomSampler"}, pruner=recorded).write(study)
    back = records.StudyRecord.from_study(optuna.load_study(study_name=study.study_name, storage=study._storage))
    assert back.pruner == recorded
    assert type(build_pruner(back.pruner)) is optuna.pruners.PatientPruner
    assert pruner_feed(back.pruner, "maximize") == Feed("ema", ema=0.3, maximize=True)
    asha = pruner_settings(space('pruner = "asha"\npruner_reduction_factor = 4\npruner_min_resource = 3'), ROLES)
    assert asha == {"class": "SuccessiveHalvingPruner", "min_resource": 3, "min_early_stopping_rate": 0,
                    "reduction_factor": 4}
    assert pruner_settings(space('pruner = "hyperband"\npruner_feed = "best"'), ROLES) == {
        "class": "HyperbandPruner", "min_resource": 1, "max_resource": 15, "reduction_factor": 3, "feed": "best"}


class _no_experimental_warning:
    """PatientPruner warns ExperimentalWarning in Optuna 5: building it must stay quiet."""

    def __enter__(self):
        import warnings
        self._catch = warnings.catch_warnings(record=True)
        self.caught = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        assert not [w for w in self.caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]


def test_pruner_keys_at_their_defaults_keep_the_fingerprint_and_the_record():
    plain = space('pruner = "median"')
    written = space('pruner = "median"\npruner_patience = 0\npruner_feed = "raw"')
    assert written.fingerprint() == plain.fingerprint() == space("").fingerprint()
    assert (space('pruner = "asha"\npruner_reduction_factor = 3\npruner_min_resource = 1').fingerprint()
            == space('pruner = "asha"').fingerprint())
    assert (space('pruner = "percentile"\npruner_percentile = 25').fingerprint()
            == space('pruner = "percentile"').fingerprint())
    assert pruner_settings(plain, ROLES) == {"class": "MedianPruner", "n_startup_trials": 4, "n_warmup_steps": 1}
    assert pruner_settings(space('pruner = "hyperband"'), ROLES) == {
        "class": "HyperbandPruner", "min_resource": 1, "max_resource": 15, "reduction_factor": 3}
    assert space('pruner = "median"\npruner_patience = 2').fingerprint() != plain.fingerprint()
    assert space('pruner = "median"\npruner_feed = "best"').fingerprint() != plain.fingerprint()
    assert (space('pruner = "percentile"\npruner_percentile = 30').fingerprint()
            == space('pruner = "percentile"\npruner_percentile = 30.0').fingerprint())


@pytest.mark.parametrize(("study", "message"), [
    ('pruner = "percentile"\npruner_percentile = 100', r"pruner_percentile must be a number in \(0, 100\)"),
    ('pruner = "percentile"\npruner_percentile = "25"', "pruner_percentile must be a number"),
    ('pruner = "median"\npruner_patience = -1', "pruner_patience must be an integer >= 0"),
    ('pruner = "asha"\npruner_reduction_factor = 1', "pruner_reduction_factor must be an integer >= 2"),
    ('pruner = "asha"\npruner_min_resource = 0', "pruner_min_resource must be an integer >= 1"),
    ('pruner = "median"\npruner_feed = "mean"', "pruner_feed = 'mean'; expected one of raw, best, ema"),
    ('pruner = "median"\npruner_feed = "ema"\npruner_ema = 0', r"pruner_ema must be a number in \(0, 1\]"),
    ('pruner = "median"\npruner_percentile = 25', "pruner_percentile applies to pruner = 'percentile', not 'median'"),
    ('pruner = "median"\npruner_min_resource = 3', "pruner_min_resource applies to pruner = 'asha' or 'hyperband'"),
    ('pruner = "none"\npruner_patience = 2', "pruner_patience applies to .*not 'none'"),
    ('pruner = "median"\npruner_ema = 0.3', "pruner_ema applies to pruner_feed = \"ema\", not 'raw'"),
    ('pruner = "successive"',
     "pruner = 'successive'; expected one of median, percentile, catchup, asha, hyperband, none"),
])
def test_pruner_key_errors_are_one_line(study, message):
    with pytest.raises(SpaceError, match=message) as caught:
        space(study)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("t.toml: [study]")


def test_a_patience_fed_the_best_so_far_never_prunes(curves):
    """Why CANDIDATES leave out patient rules fed the best so far: they replay as `none`."""
    record = pruner_record(settings(pruner="median", pruner_patience=2, pruner_feed="best"), epochs=15)
    assert not any(r.stopped for r in replay(curves, record, orders(len(curves), 5), study_name=NAME))


def test_replay_is_cheap(curves):
    """About 5 ms per order per rule for 20 trials x 15 epochs; the bound here is loose (a loaded
    machine), the point is that hundreds of orders take seconds, not minutes."""
    import time

    some = orders(len(curves), 10, seed=6)
    started = time.perf_counter()
    replay(curves, pruner_record(RULES["median"], epochs=15), some, study_name=NAME)
    assert (time.perf_counter() - started) / len(some) < 0.1
