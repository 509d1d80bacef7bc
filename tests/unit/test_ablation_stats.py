"""The ablation's statistics, seeds, labels and tables on hand-built numbers and in-memory Optuna
studies with known answers (no training)."""

import math

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import create_trial
from scipy import stats as scipy_stats

from objectives.errors import InputError
from study import figures, tables
from study.ablation import ablate, variants
from study.records import ABLATION_VERSION
from study.report import ablation as ablation_report
from study.report import build, importance, stats
from study.run.options import RunOptions
from study.run.output import Output
from study.spaces.space_file import load_space

from support.ablation import BEST, SPACE, parent_study, stored_parent

# ---------------------------------------------------------------- statistics


def test_holm_matches_the_worked_example():
    # sorted: 0.005, 0.01, 0.03, 0.04; times m - rank: 0.02, 0.03, 0.06, 0.04; running max: 0.02, 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1; a NaN (a comparison without pairs) is outside the family: m = 2, not 3
    adjusted = stats.holm([0.5, math.nan, 0.6])
    assert adjusted[0] == 1.0 and adjusted[2] == 1.0 and math.isnan(adjusted[1])
    assert stats.holm([0.01, math.nan, 0.04]) == pytest.approx([0.02, math.nan, 0.04], nan_ok=True)


def test_paired_pairs_by_seed_and_matches_scipy():
    variant = {1001: 0.70, 1002: 0.62, 1003: 0.66, 1004: 0.90}  # 1004: the baseline did not finish it
    baseline = {1001: 0.60, 1002: 0.61, 1003: 0.58, 1005: 0.10}  # 1005: the variant did not
    result = stats.paired(variant, baseline, maximize=True)
    a, b = np.array([0.70, 0.62, 0.66]), np.array([0.60, 0.61, 0.58])
    expected = scipy_stats.ttest_rel(a, b)
    interval = expected.confidence_interval(0.95)
    assert result.n == 3
    assert result.delta == pytest.approx(np.mean(a - b))
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high))
    assert result.p == pytest.approx(expected.pvalue)
    assert result.p_improve == 1.0
    # unpaired Welch on all of each arm's seeds would give another answer: the pairing matters
    assert result.p != pytest.approx(
        scipy_stats.ttest_ind(list(variant.values()), list(baseline.values()), equal_var=False).pvalue
    )


def test_p_improve_counts_ties_as_half_and_respects_the_direction():
    a, b = [0.5, 0.6, 0.7, 0.8], [0.4, 0.6, 0.9, 0.7]
    assert stats.p_improve(a, b, maximize=True) == pytest.approx((2 + 0.5) / 4)
    assert stats.p_improve(a, b, maximize=False) == pytest.approx((1 + 0.5) / 4)  # a loss: lower is better
    assert stats.paired(dict(enumerate(a)), dict(enumerate(b)), maximize=False).p_improve == pytest.approx(0.375)


def test_summary_and_degenerate_pairs():
    summary = stats.summarize({1: 0.2, 2: 0.4, 3: math.nan, 4: 0.9})
    assert (summary.n, summary.mean, summary.std) == (
        3,
        pytest.approx(0.5),
        pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1)),
    )
    same = stats.paired({1: 0.3, 2: 0.5}, {1: 0.3, 2: 0.5}, maximize=True)
    assert (same.delta, same.ci_low, same.ci_high, same.p, same.p_improve) == (0.0, 0.0, 0.0, 1.0, 0.5)
    alone = stats.paired({1: 0.3}, {1: 0.2, 2: 0.5}, maximize=True)
    assert alone.n == 1 and alone.delta == pytest.approx(0.1) and math.isnan(alone.p) and math.isnan(alone.ci_low)


def two_by_two(seeds, *, drop=None):
    """y = 0.5 + 0.1 A + 0.05 B + 0.08 A B + seed shift + noise, A, B in {0, 1}."""
    rng = np.random.default_rng(7)
    cells = {}
    for a, b in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        cells[(("r18", "r50")[a], ("focal", "ce")[b])] = {
            s: 0.5 + 0.1 * a + 0.05 * b + 0.08 * a * b + 0.03 * (s % 3) + rng.normal(0, 0.01) for s in seeds}
    if drop:
        del cells[drop[0]][drop[1]]
    return cells


def test_factorial_main_effects_and_interaction_per_seed_then_paired():
    seeds = [1001, 1002, 1003, 1004]
    cells = two_by_two(seeds, drop=(("r50", "ce"), 1004))  # a failed cell: seed 1004 leaves every effect
    effects = {
        e.name: e
        for e in stats.factorial_effects(
            cells,
            ["arch", "loss"],
            {"arch": ["r18", "r50"], "loss": ["focal", "ce"]},
            {"arch": "r18", "loss": "focal"},
            maximize=True,
        )
    }
    assert set(effects) == {"main:arch=r50", "main:loss=ce", "interaction:arch x loss"}
    used = seeds[:3]
    y = {cell: np.array([values[s] for s in used]) for cell, values in cells.items()}
    arch = (y[("r50", "focal")] + y[("r50", "ce")]) / 2 - (y[("r18", "focal")] + y[("r18", "ce")]) / 2
    inter = y[("r50", "ce")] - y[("r50", "focal")] - y[("r18", "ce")] + y[("r18", "focal")]
    for effect, per_seed in ((effects["main:arch=r50"], arch), (effects["interaction:arch x loss"], inter)):
        expected = scipy_stats.ttest_1samp(per_seed, 0.0)
        interval = expected.confidence_interval(0.95)
        assert effect.contrast.n == 3
        assert effect.contrast.delta == pytest.approx(per_seed.mean())
        assert (effect.contrast.ci_low, effect.contrast.ci_high) == pytest.approx((interval.low, interval.high))
        assert effect.contrast.p == pytest.approx(expected.pvalue)
    assert effects["interaction:arch x loss"].contrast.delta == pytest.approx(0.08, abs=0.03)
    marginal = (y[("r50", "focal")] + y[("r50", "ce")]) / 2
    assert effects["main:arch=r50"].summary.mean == pytest.approx(marginal.mean())
    assert effects["main:arch=r50"].contrast.p_improve == 1.0
    assert (
        math.isnan(effects["interaction:arch x loss"].contrast.p_improve)
        and effects["interaction:arch x loss"].summary is None
    )


# ---------------------------------------------------------------- seeds, labels, retune candidates


@pytest.fixture
def space(tmp_path):
    (tmp_path / "tiny.toml").write_text(SPACE)
    return load_space(tmp_path / "tiny.toml")


def test_labels_name_every_coupled_change(space):
    ce = {"arch": "resnet50", "pretrained": False, "lr": 0.003, "loss": "ce"}
    parent = parent_study([(BEST, 0.8, 3), (ce, 0.5, 4)])
    names = [v.name for v in variants.variants(space, parent, None)]
    assert names == [
        "baseline",
        "arch=resnet50",
        "pretrained=False (fe_epochs 1 -> unused)",
        "fe_epochs=0",
        "loss=ce (focal_gamma 2.1 -> unused, focal_alpha none -> unused)",
        "focal_gamma=0",
        "focal_alpha=inverse_frequency",
    ]
    # the other way round, newly active parameters take the best trial's value that had them
    flipped = parent_study([(ce, 0.9, 3), (BEST, 0.5, 4)])
    names = [v.name for v in variants.variants(space, flipped, None)]
    assert "loss=focal (focal_gamma unused -> 2.1, focal_alpha unused -> none)" in names
    assert "pretrained=True (fe_epochs unused -> 1)" in names


def test_factorial_cells_start_with_the_best_trials_levels(space):
    parent = parent_study([({**BEST, "arch": "resnet50"}, 0.8, 3)])
    cells = variants.variants(space, parent, ["arch", "loss"])
    assert cells[0].levels == {"arch": "resnet50", "loss": "focal"} and cells[0].name == "arch=resnet50,loss=focal"
    assert [c.name for c in cells[1:]] == [
        "arch=resnet18,loss=ce (focal_gamma 2.1 -> unused, focal_alpha none -> unused)",
        "arch=resnet18,loss=focal",
        "arch=resnet50,loss=ce (focal_gamma 2.1 -> unused, focal_alpha none -> unused)",
    ]
    with pytest.raises(InputError, match="leaves a factor inactive"):
        variants.variants(space, parent, ["loss", "focal_alpha"])


def test_fresh_seeds_avoid_every_seed_the_parent_used(space):
    parent = parent_study([(BEST, 0.8, 1000), ({**BEST, "lr": 0.02}, 0.7, 1002)])
    used = variants.parent_seeds(parent, study_seed=3, settings=("seed", "split_seed"))
    assert {1000, 1002, 0, 3, 4} <= used  # recorded seeds, the split seed, study seed + trial number
    seeds = variants.fresh_seeds(5, used, variants.EVAL_SEED_START)
    assert seeds == [1001, 1003, 1004, 1005, 1006] and not set(seeds) & used
    tuning = variants.fresh_seeds(3, used | set(seeds), variants.TUNE_SEED_START)
    assert not set(tuning) & (used | set(seeds))


def test_retune_candidates_and_refusals(space):
    assert variants.candidates(space.param("lr"), space.fixed, 3) == pytest.approx([1e-3, 7.071e-3, 5e-2])  # log-spaced
    assert variants.candidates(space.param("fe_epochs"), space.fixed, 8) == [0, 1]  # 0..epochs-1 has only 2 values
    assert variants.candidates(space.param("focal_gamma"), space.fixed, 3) == [0.0, 1.5, 3.0]
    with pytest.raises(InputError, match="--retune nope: not a sampled parameter .*lr"):
        variants.retune_param(space, "nope")
    with pytest.raises(InputError, match="--retune loss: categorical"):
        variants.retune_param(space, "loss")
    with pytest.raises(InputError, match="at least 3 seeds"):
        ablate.AblationOptions(seeds=2)


def study_names(url):
    return sorted(s.study_name for s in optuna.get_all_study_summaries(url, include_best_trial=False))


@pytest.mark.parametrize("options, message", [
    (ablate.AblationOptions(retune="nope"), "--retune nope: not a sampled parameter"),
    (ablate.AblationOptions(retune="arch"), "--retune arch: categorical"),
    (ablate.AblationOptions(factors=("lr",)), "--factors lr: not categorical"),
])
def test_bad_ablation_input_writes_nothing(tmp_path, options, message):
    url = stored_parent(tmp_path)
    before = study_names(url)
    opts = RunOptions(results_dir=tmp_path / "results", storage_url=url)
    with pytest.raises(InputError, match=message):
        ablate.run_ablation("tiny", options, opts, Output())
    assert study_names(url) == before and not (tmp_path / "results").exists()


def test_an_ablation_study_from_before_fresh_seeds_is_refused(tmp_path):
    url = stored_parent(tmp_path)
    old = optuna.create_study(study_name="tiny.ablation", storage=url)
    old.set_user_attr("seeds", 3)  # as the old ablate recorded it: a count, seeds 0..2
    old.add_trial(
        create_trial(
            params={"variant": "baseline", "seed": 0},
            value=0.5,
            distributions={"variant": CategoricalDistribution(["baseline"]), "seed": IntDistribution(0, 2)},
        )
    )
    opts = RunOptions(results_dir=tmp_path / "results", storage_url=url)
    with pytest.raises(
        InputError, match=r"older ablate .*optuna delete-study --study-name 'tiny.ablation' .*--study-name"
    ) as info:
        ablate.run_ablation("tiny", ablate.AblationOptions(), opts, Output())
    assert "\n" not in str(info.value)
    assert len(optuna.load_study(study_name="tiny.ablation", storage=url).trials) == 1


# ---------------------------------------------------------------- the ablation table from a stored study


def ablation_study(values, *, mode="one-at-a-time", levels=None, factors=(), retune=None, direction="maximize"):
    """An in-memory ablation study as `ablate` records it; `values[variant][seed] = (val, test kappa)`."""
    study = optuna.create_study(direction=direction)
    names = list(values)
    seeds = sorted({s for per_seed in values.values() for s in per_seed})
    attrs = {
        "parent": "p",
        "mode": mode,
        "factors": list(factors),
        "baseline": names[0],
        "variants": {n: {"lr": 0.01} for n in names},
        "levels": levels or {n: {} for n in names},
        "seeds": seeds,
        "retune": retune,
        "metric": "kappa",
        "ablation_version": ABLATION_VERSION,
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    dists = {"variant": CategoricalDistribution(names), "seed": CategoricalDistribution(seeds)}
    for name, per_seed in values.items():
        for seed, (val, kappa) in per_seed.items():
            study.add_trial(
                create_trial(
                    params={"variant": name, "seed": seed},
                    distributions=dists,
                    value=val,
                    user_attrs={
                        "test_metrics": {
                            "kappa": kappa,
                            "accuracy": kappa / 2,
                            "balanced_accuracy": kappa / 3,
                            "macro_f1": kappa / 4,
                        }
                    },
                )
            )
    return study


VALUES = {
    "baseline": {1001: (0.60, 0.50), 1002: (0.62, 0.55), 1003: (0.58, 0.52), 1004: (0.61, 0.54)},
    "loss=ce (focal_gamma 2 -> unused)": {
        1001: (0.50, 0.30),
        1002: (0.52, 0.31),
        1003: (0.49, 0.33),
    },  # seed 1004 failed
    "arch=resnet50": {1001: (0.61, 0.51), 1002: (0.61, 0.56), 1003: (0.59, 0.50), 1004: (0.62, 0.54)},
}


def test_ablation_frame_contract_and_numbers(tmp_path):
    study = ablation_study(VALUES)
    table, display, caption = ablation_report.ablation_table(study)
    assert tuple(table.columns) == ablation_report.ABLATION_COLUMNS
    assert list(table.metric.unique()) == [
        "test_kappa",
        "test_accuracy",
        "test_balanced_accuracy",
        "test_macro_f1",
        "val_kappa",
    ]
    assert len(table) == 3 * 5 and list(table.variant.unique()) == list(VALUES)

    tables.write(table, display, tmp_path / "ablation_study", ["csv"], caption)
    back = pd.read_csv(tmp_path / "ablation_study.csv")
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    rows = back.set_index(["variant", "metric"])
    base = rows.loc[("baseline", "test_kappa")]
    assert base.n == 4 and base["mean"] == pytest.approx(np.mean([0.50, 0.55, 0.52, 0.54])) and base.delta == 0
    assert all(pd.isna(base[c]) for c in ("ci_low", "ci_high", "p", "p_holm", "p_improve"))
    ce = rows.loc[("loss=ce (focal_gamma 2 -> unused)", "test_kappa")]
    expected = scipy_stats.ttest_rel([0.30, 0.31, 0.33], [0.50, 0.55, 0.52])  # paired on seeds 1001-1003 only
    assert ce.n == 3 and ce.delta == pytest.approx(np.mean([-0.20, -0.24, -0.19]))
    assert (ce.ci_low, ce.ci_high) == pytest.approx(tuple(expected.confidence_interval(0.95)))
    r50 = rows.loc[("arch=resnet50", "test_kappa")]
    assert [ce.p_holm, r50.p_holm] == pytest.approx(stats.holm([ce.p, r50.p]))
    assert r50.p_improve == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert rows.loc[("arch=resnet50", "val_kappa")].delta == pytest.approx(np.mean([0.01, -0.01, 0.01, 0.01]))

    shown = display.set_index("variant")
    assert shown.loc["baseline", "Δ [95% CI]"] == "reference"
    # p_holm < 0.05, but seed 1004 is missing (no trial at all, not a failure of the variant): no star
    assert ce.p_holm < 0.05 and ce.missing == 1 and ce.failed == 0
    assert not shown.loc["loss=ce (focal_gamma 2 -> unused)", "Δ [95% CI]"].endswith("*")
    assert not shown.loc["arch=resnet50", "Δ [95% CI]"].endswith("*")
    assert "paired by seed" in caption and "Holm" in caption and "1001, 1002, 1003, 1004" in caption
    assert "No parameter was retuned" in caption and "lr 0.01" in caption
    assert "loss=ce (focal_gamma 2 -> unused) seed 1004" in caption  # the unpaired seed is named
    # a caption a paper can use: three sentences, the caveats as notes under the table
    assert "Supports effects beyond" in caption.text and "not their absence" in caption.text
    assert caption.text.count(". ") <= 3 and len(caption.text) < 420, caption.text
    assert "loss=ce (focal_gamma 2 -> unused) seed 1004" not in caption.text and caption.notes
    tables.write(table, display, tmp_path / "ablation_study", ["md", "tex"], caption)
    md = (tmp_path / "ablation_study.md").read_text()
    assert md.startswith(caption.text) and "\nNotes:\n" in md and "- Not finished" in md
    tex = (tmp_path / "ablation_study.tex").read_text()
    assert tex.index("\\caption") < tex.index("\\emph{Notes.}") < tex.index("\\end{table}")


def test_factorial_ablation_frame_has_cells_and_effects():
    seeds = [1001, 1002, 1003]
    cells = two_by_two(seeds)
    names = {cell: f"arch={cell[0]},loss={cell[1]}" for cell in cells}
    order = [("r18", "focal"), ("r18", "ce"), ("r50", "focal"), ("r50", "ce")]
    values = {names[c]: {s: (v, v) for s, v in cells[c].items()} for c in order}
    levels = {names[c]: {"arch": c[0], "loss": c[1]} for c in order}
    table = ablation_report.ablation_frame(
        ablation_study(values, mode="factorial", levels=levels, factors=("arch", "loss"))
    )
    kappa = table[table.metric == "test_kappa"].set_index("variant")
    assert list(kappa.index) == [*values, "main:arch=r50", "main:loss=ce", "interaction:arch x loss"]
    assert kappa.loc[list(values), "delta"].isna().all()  # cells are described, not tested against the first one
    effects = stats.factorial_effects(cells, ["arch", "loss"], {"arch": ["r18", "r50"], "loss": ["focal", "ce"]},
                                      {"arch": "r18", "loss": "focal"}, maximize=True)
    assert kappa.loc["main:arch=r50", "delta"] == pytest.approx(effects[0].contrast.delta)
    assert list(kappa.loc[[e.name for e in effects], "p_holm"]) == pytest.approx(
        stats.holm([e.contrast.p for e in effects])
    )


def test_report_refuses_to_tabulate_an_old_ablation(tmp_path):
    parent = parent_study([(BEST, 0.8, 3)])
    old = optuna.create_study()
    old.set_user_attr("seeds", 3)
    old.add_trial(
        create_trial(
            params={"variant": "baseline"}, distributions={"variant": CategoricalDistribution(["baseline"])}, value=0.5
        )
    )
    report = build.build_report(parent, tmp_path, ["csv"], "memory", old)
    assert "older `ablate`" in report.markdown.read_text() and not (tmp_path / "ablation_study.csv").exists()


# ---------------------------------------------------------------- importances and figures


def importance_study(n, *, seed=0):
    rng = np.random.default_rng(seed)
    study = optuna.create_study(direction="maximize")
    for i in range(n):
        lr, loss = float(10 ** rng.uniform(-4, -1)), ("ce", "focal")[i % 2]
        params = {"lr": lr, "loss": loss, "arch": ("a", "b")[int(rng.integers(2))]}
        dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "loss": CategoricalDistribution(["ce", "focal"]),
                 "arch": CategoricalDistribution(["a", "b"])}
        value = -abs(np.log10(lr) + 2.5)
        if loss == "focal":
            params["focal_gamma"], dists["focal_gamma"] = float(rng.uniform(0, 5)), FloatDistribution(0.0, 5.0)
            value -= 0.3 * abs(params["focal_gamma"] - 2)
        if i % 5 == 0:
            params["fe_epochs"], dists["fe_epochs"] = int(rng.integers(0, 4)), IntDistribution(0, 3)
        study.add_trial(create_trial(params=params, distributions=dists, value=value))
    return study


def test_importances_need_20_trials_and_never_show_a_missing_value_as_0(tmp_path):
    frame, note = importance.importance_table(importance_study(19))
    assert frame.empty and "at least 20 complete trials" in note and "has 19" in note

    study = importance_study(40)
    template = study.trials[2]  # a cross-entropy trial: every unconditional parameter, plus `rare`, active only here
    study.add_trial(create_trial(params={**template.params, "rare": 1}, value=-1.0,
                                 distributions={**template.distributions, "rare": IntDistribution(0, 3)}))
    frame, note = importance.importance_table(study)
    rows = frame.set_index("parameter")
    assert rows.loc["lr", "trials"] == 41 and rows.loc["lr", "fanova_std"] > 0  # a spread over the forests' seeds
    assert rows.loc["lr", "fanova_mean"] == pytest.approx(rows.loc[["lr", "loss", "arch"], "fanova_mean"].max())
    assert (
        rows.loc["focal_gamma", "trials"] == 20 and rows.loc["focal_gamma", "fanova_mean"] > 0
    )  # over the focal trials only
    assert "where it is active" in rows.loc["focal_gamma", "note"]
    assert np.isnan(rows.loc["fe_epochs", "fanova_mean"]) and rows.loc["fe_epochs", "trials"] == 8
    assert rows.loc["rare", "note"].startswith("n/a (conditional)")
    assert (
        "Optuna warned:" in note and "`rare`" in note
    )  # PED-ANOVA's warning about rare's one-trial regime, not swallowed
    shown = importance._importance_display(frame).set_index("parameter")
    assert shown.loc["fe_epochs", "fANOVA (mean ± std, 5 seeds)"] == "n/a (conditional)"
    assert list(frame.parameter.iloc[-2:]) == ["fe_epochs", "rare"]  # sorted last, not as 0
    assert importance._importance_figure(frame, tmp_path / "importance.png").stat().st_size > 0


def test_confusion_rows_carry_their_n(tmp_path):
    confusion = [[5, 2, 0], [0, 1, 0], [0, 0, 0]]
    assert figures.row_labels(confusion, ["No DR", "Mild", "Severe"]) == ["No DR (n=7)", "Mild (n=1)", "Severe (n=0)"]
    assert figures.confusion_figure(confusion, ["No DR", "Mild", "Severe"], "t", tmp_path / "c.png").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["--trials-per-cell", "2"], "--seeds / --trials-per-cell 2: at least 3 seeds"),
    (["--pruner", "hyperband"], "--pruner hyperband: ablate never prunes"),
    (["--retune-trials", "3"], "--retune-trials needs --retune"),
    (["--retune", "lr", "--retune-trials", "0"], "--retune-trials 0: at least 2"),
])
def test_ablate_flags_refused_before_the_storage_is_opened(tmp_path, capsys, args, message):
    from study import cli

    url = f"sqlite:///{tmp_path / 'none.db'}"
    assert cli.main(["ablate", "abl", "--storage", url, "--results", str(tmp_path / "results"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no storage file, no results folder
