"""Issue 19 point 7, the ablation's remaining biases, on hand-built numbers and in-memory Optuna
studies (no training): the metric registry and its direction checks, failed seeds and the
worst-value star rule, constant differences, the ablation version, split_seed from the
objective's settings and the retune pick by the mean over tuning seeds."""

import dataclasses
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

import objectives.image_classifier
from objectives import contract, metrics
from objectives.errors import InputError
from study import records
from study.ablation import ablate, variants
from study.records import ABLATION_VERSION
from study.report import ablation as ablation_report
from study.report import stats
from study.run.options import RunOptions
from study.run.output import Output
from study.spaces import registry
from study.spaces.space import SpaceError
from study.spaces.space_file import load_space_text

from conftest import ANALYSIS_SPACE
from support.ablation import stored_parent

# ---------------------------------------------------------------- the metric registry


def space_with(study_lines: str) -> str:
    """ANALYSIS_SPACE with its [study] metric/direction lines replaced by `study_lines`."""
    kept = [line for line in ANALYSIS_SPACE.splitlines() if not line.startswith(("metric", "direction"))]
    at = kept.index("[study]") + 1
    return "\n".join(kept[:at] + study_lines.splitlines() + kept[at:]) + "\n"


def test_the_registry_knows_each_metric_direction_and_needs_no_torch():
    assert set(metrics.CONFUSION_METRICS) < set(metrics.REGISTRY)  # every confusion metric, and the loss
    assert metrics.metric("loss").direction == "minimize" and metrics.metric("loss").needs_scores
    assert all(metrics.metric(m).direction == "maximize" and not metrics.metric(m).needs_scores
               for m in metrics.CONFUSION_METRICS)
    with pytest.raises(ValueError, match="unknown metric 'kapa'; known: kappa, accuracy"):
        metrics.metric("kapa")
    assert metrics.higher_is_better("kappa") and not metrics.higher_is_better("loss")
    assert metrics.higher_is_better("something_old")  # a stored study's own metric: as every metric was


def test_the_registry_imports_without_torch():
    code = "import sys, objectives.metrics, study.spaces.space_file; assert 'torch' not in sys.modules, 'torch loaded'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_metric_and_direction_are_checked_for_a_new_study():
    path = Path("s.toml")
    assert load_space_text(space_with('metric = "loss"'), path).study.direction == "minimize"  # implied
    assert load_space_text(space_with('metric = "kappa"'), path).study.direction == "maximize"
    assert load_space_text(space_with('metric = "loss"\ndirection = "minimize"'), path).study.direction == "minimize"
    with pytest.raises(SpaceError, match=r"direction = 'maximize' contradicts metric = 'loss'") as info:
        load_space_text(space_with('metric = "loss"\ndirection = "maximize"'), path)
    assert "\n" not in str(info.value)
    with pytest.raises(SpaceError, match=r"contradicts metric = 'kappa'"):
        load_space_text(space_with('metric = "kappa"\ndirection = "minimize"'), path)
    with pytest.raises(SpaceError, match=r"metric = 'kapa' is unknown; known: kappa, accuracy, .*loss") as info:
        load_space_text(space_with('metric = "kapa"'), path)
    assert "\n" not in str(info.value)


def test_a_stored_study_keeps_the_direction_it_ran_with():
    # made before the registry: metric loss under the old default (maximize), and a metric it no longer knows
    old = space_with('metric = "loss"')
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("space_text", old)
    study.set_user_attr("space_hash", "h")
    space = registry.recorded_space(study)
    assert space.study.metric == "loss" and space.study.direction == "maximize"  # as it ran, no error
    assert load_space_text(space_with('metric = "old_one"'), Path("x"), direction="minimize").study.direction \
        == "minimize"
    # a new study that left the direction out (so minimize) reads back as minimize too
    new = optuna.create_study(direction="minimize")
    new.set_user_attr("space_text", old)
    new.set_user_attr("space_hash", "h")
    assert registry.recorded_space(new).study.direction == "minimize"
    # and a worker re-reads a stored space as its parent did (RunOptions carries the direction)
    opts = RunOptions(space=space)
    assert RunOptions.from_json(opts.to_json()).space.study.direction == "maximize"


# ---------------------------------------------------------------- statistics


def test_a_constant_nonzero_difference_gets_no_p_no_interval_and_no_star():
    result = stats.paired({1: 0.6, 2: 0.7, 3: 0.5}, {1: 0.5, 2: 0.6, 3: 0.4}, maximize=True)
    assert result.delta == pytest.approx(0.1) and result.note == stats.CONSTANT
    assert math.isnan(result.p) and math.isnan(result.ci_low) and math.isnan(result.ci_high)
    assert stats.holm([result.p, 0.01]) == pytest.approx([math.nan, 0.01], nan_ok=True)  # outside the family
    same = stats.paired({1: 0.3, 2: 0.5}, {1: 0.3, 2: 0.5}, maximize=True)
    assert same.p == 1.0 and same.note == ""  # identical arms: unchanged


def test_starred_rules():
    assert ablation_report.starred(0.01, math.nan, 0.1, math.nan, failed=0, missing=0)
    assert not ablation_report.starred(0.01, 0.01, 0.1, 0.1, failed=0, missing=1)  # a cell still missing
    assert not ablation_report.starred(0.01, 0.20, 0.1, 0.05, failed=1, missing=0)  # fails under the worst value
    assert not ablation_report.starred(0.01, 0.01, 0.1, -0.05, failed=1, missing=0)  # the sign flips
    assert ablation_report.starred(0.01, 0.02, 0.1, 0.08, failed=1, missing=0)  # holds with the worst value
    assert not ablation_report.starred(math.nan, math.nan, 0.1, 0.1, failed=0, missing=0)


def test_worst_filled_uses_the_worst_value_of_the_whole_ablation():
    arms = {"baseline": {1: 0.5, 2: 0.6}, "v": {1: 0.9}}
    assert ablation_report.worst_filled(arms, {"v": [2]}, maximize=True)["v"] == {1: 0.9, 2: 0.5}
    assert ablation_report.worst_filled(arms, {"v": [2]}, maximize=False)["v"] == {1: 0.9, 2: 0.9}


# ---------------------------------------------------------------- the ablation table with failures

SEEDS = [1001, 1002, 1003, 1004, 1005]


def ablation_study(cells, *, version=ABLATION_VERSION, plan_extra=None, variant_values=None):
    """An in-memory ablation study; `cells[variant][seed]` = test kappa (val = the same), or a
    fail reason (str) for a failed trial."""
    study = optuna.create_study(direction="maximize")
    names = list(cells)
    attrs = {"parent": "p", "mode": "one-at-a-time", "factors": [], "baseline": names[0],
             "variants": variant_values or {n: {"lr": 0.01} for n in names}, "levels": {n: {} for n in names},
             "seeds": SEEDS, "retune": None, "metric": "kappa", "ablation_version": version,
             **({"split_per_seed": True} if version >= 3 else {}), **(plan_extra or {})}
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    dists = {"variant": CategoricalDistribution(names), "seed": CategoricalDistribution(SEEDS)}
    for name, per_seed in cells.items():
        for seed, value in per_seed.items():
            params = {"variant": name, "seed": seed}
            if isinstance(value, str):
                study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.FAIL,
                                             user_attrs={"fail_reason": value}))
            else:
                study.add_trial(create_trial(params=params, distributions=dists, value=value,
                                             user_attrs={records.metrics_key("test"):
                                                         dict.fromkeys(metrics.CONFUSION_METRICS, value)}))
    return study


BASE = {1001: 0.50, 1002: 0.52, 1003: 0.49, 1004: 0.51, 1005: 0.50}


def shown(study, variant):
    table, display, caption = ablation_report.ablation_table(study)
    row = table.set_index(["variant", "metric"]).loc[(variant, "test_kappa")]
    return row, display.set_index("variant").loc[variant], caption


def test_a_variant_that_diverged_on_a_seed_loses_its_star_unless_it_holds_at_the_worst_value():
    # better on its 4 surviving seeds, but one seed diverged: scored at the worst value (0.10, from
    # the fragile variant itself) the advantage is gone
    fragile = {1001: 0.60, 1002: 0.62, 1003: 0.60, 1004: 0.61, 1005: "nan_loss"}
    low = {1001: 0.10, 1002: 0.45, 1003: 0.46, 1004: 0.47, 1005: 0.45}
    study = ablation_study({"baseline": BASE, "lr=0.1": fragile, "other": low})
    row, display, caption = shown(study, "lr=0.1")
    assert row.failed == 1 and row.missing == 0 and row.p_holm < 0.05  # survivors alone would star it
    assert not row.star and not display["Δ [95% CI]"].endswith("*")
    assert display["failed"] == "1 (seed 1005)"
    assert "lr=0.1 seed 1005" in caption and "worst value" in caption
    # a clear, stable advantage holds even with the failure at the worst value: it keeps the star
    strong = {1001: 0.80, 1002: 0.83, 1003: 0.79, 1004: 0.82, 1005: "nan_loss"}
    study = ablation_study({"baseline": BASE, "strong": strong, "other": {s: 0.49 + s % 2 * 0.01 for s in SEEDS}})
    row, display, _ = shown(study, "strong")
    assert row.failed == 1 and row.p_holm_worst > row.p_holm and row.star and display["Δ [95% CI]"].endswith("*")


def test_an_infrastructure_failure_is_missing_not_failed_and_withholds_the_star():
    better = {1001: 0.80, 1002: 0.83, 1003: 0.79, 1004: 0.82, 1005: "cuda_oom"}
    study = ablation_study({"baseline": BASE, "arch=resnet50": better, "other": BASE})
    row, display, caption = shown(study, "arch=resnet50")
    assert row.failed == 0 and row.missing == 1 and row.p_holm < 0.05 and not row.star
    assert "failed" not in display.index and "arch=resnet50 seed 1005" in caption  # no failed column; named
    assert ablate.infrastructure_cells(study) == [{"variant": "arch=resnet50", "seed": 1005}]


def test_infrastructure_cells_skip_the_variants_own_failures_and_done_cells():
    study = ablation_study({"baseline": {**BASE, 1005: "heartbeat"}, "v": {1001: "nan_loss", 1002: "cuda_oom"}})
    # a cell that failed for the infrastructure and later completed is done
    dists = {"variant": CategoricalDistribution(["baseline", "v"]), "seed": CategoricalDistribution(SEEDS)}
    study.add_trial(create_trial(params={"variant": "v", "seed": 1002}, distributions=dists, value=0.5))
    assert ablate.infrastructure_cells(study) == [{"variant": "baseline", "seed": 1005}]


def test_a_constant_difference_is_marked_in_the_table_and_caption():
    study = ablation_study({"baseline": BASE, "shift": {s: v + 0.1 for s, v in BASE.items()}, "o": BASE})
    row, display, caption = shown(study, "shift")
    assert row.note == stats.CONSTANT and math.isnan(row.p) and not row.star
    assert display["Δ [95% CI]"] == "+0.100 (constant difference)"
    assert "constant difference" in caption


def test_a_loss_variant_names_the_step_size_confound():
    values = {"baseline": {"loss": "focal", "focal_gamma": 2.0, "lr": 0.01}, "loss=ce": {"loss": "ce", "lr": 0.01}}
    study = ablation_study({"baseline": BASE, "loss=ce": BASE}, variant_values=values)
    _, _, caption = shown(study, "loss=ce")
    assert "~3 % of CE's" in caption and "5-35x" in caption and "--retune lr" in caption
    retuned = ablation_study({"baseline": BASE, "loss=ce": BASE}, variant_values=values, plan_extra={
        "retune": {"param": "lr", "trials": 2, "seeds": 2, "candidates": [0.001, 0.01], "tuning_seeds": [2000, 2001]},
        "retuned": {"baseline": 0.01, "loss=ce": 0.001}})
    _, _, caption = shown(retuned, "loss=ce")
    assert "removes most of that confound" in caption and "same 2 tuning seeds" in caption
    plain = ablation_study({"baseline": BASE, "lr=0.1": BASE})
    assert "5-35x" not in shown(plain, "lr=0.1")[2]


# ---------------------------------------------------------------- versions


def test_a_version_2_ablation_still_reports_as_it_ran():
    study = ablation_study({"baseline": BASE, "v": {s: v + (0.01 if s % 2 else 0.03) for s, v in BASE.items()}},
                           version=2, plan_extra={"retune": {"param": "lr", "trials": 2, "candidates": [0.001, 0.01],
                                                             "tuning_seeds": [2000, 2001]}})
    assert records.AblationRecord.is_reported(study) and not records.AblationRecord.is_current(study)
    plan = records.AblationRecord.from_study(study)
    assert plan.version == 2 and plan.split_per_seed is None
    _, _, caption = shown(study, "v")
    assert "where the TOML named split_seed" in caption and "one tuning seed of its own" in caption


def test_a_run_on_a_version_2_ablation_is_a_one_line_error(tmp_path):
    url = stored_parent(tmp_path)
    old = optuna.create_study(study_name="tiny.ablation", storage=url)
    old.set_user_attr("ablation_version", 2)
    old.add_trial(create_trial(params={"variant": "baseline", "seed": 1001}, value=0.5,
                               distributions={"variant": CategoricalDistribution(["baseline"]),
                                              "seed": CategoricalDistribution([1001])}))
    opts = RunOptions(results_dir=tmp_path / "results", storage_url=url)
    with pytest.raises(InputError, match=r"older ablate \(version 2.*--study-name or delete it") as info:
        ablate.run_ablation("tiny", ablate.AblationOptions(), opts, Output())
    assert "\n" not in str(info.value)
    assert len(optuna.load_study(study_name="tiny.ablation", storage=url).trials) == 1  # untouched


def test_the_plan_records_split_per_seed_and_the_retune_seeds():
    record = records.AblationRecord(parent="p", mode="one-at-a-time", factors=[], baseline="b", variants={"b": {}},
                                    levels={"b": {}}, seeds=[1], retune=None, metric="kappa", split_per_seed=False)
    study = optuna.create_study()
    record.write(study)
    assert study.user_attrs["ablation_version"] == 3 and study.user_attrs["split_per_seed"] is False
    assert records.AblationRecord.from_study(study).split_per_seed is False


def test_the_loss_caveat_follows_the_objectives_loss_roles_as_the_plan_recorded_them():
    """study/ names no loss setting: the caption's step-size caveat fires where a variant changes
    a setting the objective's Roles.loss names, and speaks of its Roles.step_size; a plan recorded
    before plans held them (the image classifier's) reads as loss and focal_gamma, and lr."""
    def plan(variants, retune=None, **roles):
        study = optuna.create_study()
        records.AblationRecord(parent="p", mode="one-at-a-time", factors=[], baseline="b", variants=variants,
                               levels={}, seeds=[1], retune=retune, metric="kappa", **roles).write(study)
        return records.AblationRecord.from_study(study)

    focal = {"b": {"loss": "ce", "rate": 0.1}, "focal": {"loss": "focal", "rate": 0.1}}
    old = plan(focal)
    assert "loss_settings" not in old.plan() and old.loss_roles() == (("loss", "focal_gamma"), "lr")
    assert ablation_report.changes_loss(old) and "run ablate --retune lr" in ablation_report.loss_confound(old)
    toy = plan(focal, loss_settings=(), step_size=None)  # an objective that declares no loss roles
    assert toy.plan()["loss_settings"] == [] and not ablation_report.changes_loss(toy)
    own = plan({"b": {"smooth": 0.0}, "s": {"smooth": 0.1}}, retune={records.PARAM: "rate"},
               loss_settings=("smooth",), step_size="rate")
    assert ablation_report.changes_loss(own)
    assert "rate was retuned for every variant, which removes most" in ablation_report.loss_confound(own)


# ---------------------------------------------------------------- split_seed from the objective


def test_split_per_seed_comes_from_the_objectives_settings_not_the_toml():
    assert ablate.splits_per_seed(objectives.image_classifier)  # the TOMLs never name split_seed

    @dataclasses.dataclass(frozen=True)
    class Data:
        image_size: int = 32

    @dataclasses.dataclass(frozen=True)
    class Train:
        seed: int = 0
        epochs: int = 1

    @dataclasses.dataclass(frozen=True)
    class Config:
        data: Data = Data()
        train: Train = Train()

    assert not ablate.splits_per_seed(contract.legacy(types.SimpleNamespace(Config=Config)))  # no split_seed: no role
    renamed = types.SimpleNamespace(Config=Config, ROLES=contract.Roles(fe_epochs=None, split_seed="image_size"))
    assert ablate.splits_per_seed(renamed)  # whichever setting the objective names


# ---------------------------------------------------------------- retune


def test_pick_by_mean_over_the_tuning_seeds():
    # candidate 0.01 won its best seed (0.80) but its mean is lower; 0.1 diverged on one seed
    results = {0.001: [0.60, 0.62], 0.01: [0.80, 0.40], 0.003: [0.70, 0.66], 0.1: [0.95, math.nan]}
    assert variants.pick_by_mean(results, 2, maximize=True) == 0.003
    assert variants.pick_by_mean(results, 2, maximize=False) == 0.01  # lowest mean 0.60 (vs 0.61, 0.68)
    assert variants.pick_by_mean({1: [0.5, 0.5], 2: [0.5, 0.5]}, 2, maximize=True) == 1  # ties: the first
    assert variants.pick_by_mean({1: [math.nan, 0.5]}, 2, maximize=True) is None
    assert variants.pick_by_mean({1: [0.5]}, 2, maximize=True) is None  # not every seed ran


def test_retune_results_read_each_candidate_on_each_tuning_seed():
    retune = {"param": "lr", "trials": 2, "seeds": 2, "candidates": [0.001, 0.01], "tuning_seeds": [2000, 2001]}
    study = optuna.create_study(direction="maximize")
    dists = {"lr": FloatDistribution(0.001, 0.01, log=True), "tune_seed": CategoricalDistribution([2000, 2001])}
    for lr, seed, value in [(0.001, 2000, 0.6), (0.001, 2001, 0.7), (0.01, 2000, 0.9)]:
        study.add_trial(create_trial(params={"lr": lr, "tune_seed": seed}, distributions=dists, value=value))
    study.add_trial(create_trial(params={"lr": 0.01, "tune_seed": 2001}, distributions=dists, state=TrialState.FAIL))
    results = ablate.retune_results(study, "lr", retune)
    assert results[0.001] == [0.6, 0.7] and results[0.01][0] == 0.9 and math.isnan(results[0.01][1])
    assert variants.pick_by_mean(results, 2, maximize=True) == 0.001  # 0.01's best seed is not enough
    assert np.mean(results[0.001]) == pytest.approx(0.65)


def test_retune_seed_flags_are_checked():
    with pytest.raises(InputError, match="--retune-seeds 0: at least 1"):
        ablate.AblationOptions(retune="lr", retune_seeds=0)
    assert ablate.AblationOptions().retune_seeds == variants.DEFAULT_RETUNE_SEEDS == 2
