"""`ablate` through the real CLI on the shared study `made` (conftest): fresh paired seeds, the
CSV contract against the storage, refusals, a factorial run with `--retune`, and `report`."""

import re
import shutil
import subprocess

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from scipy import stats as scipy_stats

from study.ablation import ablate, variants
from study.report.ablation import ABLATION_COLUMNS

from conftest import run_cli, storage_of

pytestmark = pytest.mark.slow


def parent_seeds(study: optuna.Study) -> set[int]:
    """What the parent used: every recorded seed and split seed, and study seed (3) + trial number."""
    used = {3 + t.number for t in study.trials}
    for t in study.trials:
        used |= {t.user_attrs.get("config", {}).get(k) for k in ("seed", "split_seed")} - {None}
    return used


@pytest.fixture(scope="module")
def ablated(made):
    """`ablate abl --seeds 3` (one factor at a time), then `report abl`, once for this module."""
    root, data, torch_home = made
    result = run_cli("ablate", "abl", "--seeds", "3", "--data", str(data), cwd=root, torch_home=torch_home)
    assert result.returncode == 0, result.stderr
    report = run_cli("report", "abl", cwd=root)
    assert report.returncode == 0, report.stderr
    return root, torch_home, result


def test_ablate_trains_every_variant_on_the_same_fresh_seeds(ablated):
    root, torch_home, _ = ablated
    parent = optuna.load_study(study_name="abl", storage=storage_of(root))
    study = optuna.load_study(study_name="abl.ablation", storage=storage_of(root))
    seeds = study.user_attrs["seeds"]
    assert len(seeds) == 3 and not set(seeds) & parent_seeds(parent)
    variants = study.user_attrs["variants"]
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted((t.params["variant"], t.params["seed"]) for t in finished) == sorted(
        (v, s) for v in variants for s in seeds
    )
    for t in finished:  # seed s draws initialisation, batches and the validation split of every variant
        assert t.user_attrs["config"]["seed"] == t.user_attrs["config"]["split_seed"] == t.params["seed"]
        assert len(t.user_attrs["curves"]["epoch"]) == 2  # never pruned
    best = parent.best_trial.params
    baseline = next(t for t in finished if t.params["variant"] == "baseline").user_attrs["config"]
    assert all(baseline[k] == v for k, v in best.items())
    names = [v for v in variants if v != "baseline"]
    assert any(v.startswith("arch=") for v in names)
    if "focal_gamma" in best:  # leaving focal loss drops gamma, and the label says so
        assert any(v.startswith("loss=ce (focal_gamma ") and "-> unused" in v for v in names)
    if best.get("fe_epochs"):
        assert f"pretrained=False (fe_epochs {best['fe_epochs']} -> unused)" in names

    again = run_cli("ablate", "abl", "--seeds", "3", "--data", str(root / "dr"), cwd=root, torch_home=torch_home)
    assert again.returncode == 0 and "already has" in again.stdout
    assert optuna.load_study(study_name="abl.ablation", storage=storage_of(root)).user_attrs["seeds"] == seeds


def test_ablation_csv_equals_the_storage(ablated):
    root, _, _ = ablated
    study = optuna.load_study(study_name="abl.ablation", storage=storage_of(root))
    table = pd.read_csv(root / "results" / "abl" / "ablation_study.csv")
    assert tuple(table.columns) == ABLATION_COLUMNS
    assert len(table) == 5 * len(study.user_attrs["variants"])
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]

    def per_seed(variant, metric):
        return {t.params["seed"]: (t.value if metric == "val_kappa" else t.user_attrs["test_metrics"][metric[5:]])
                for t in finished if t.params["variant"] == variant}

    rows = table.set_index(["variant", "metric"])
    base = rows.loc[("baseline", "test_kappa")]
    base_values = per_seed("baseline", "test_kappa")
    assert base.n == 3 and base["mean"] == pytest.approx(np.mean(list(base_values.values())))
    assert base["std"] == pytest.approx(np.std(list(base_values.values()), ddof=1))
    assert base.delta == 0 and pd.isna(base.p) and pd.isna(base.ci_low) and pd.isna(base.p_improve)
    for variant in [v for v in study.user_attrs["variants"] if v != "baseline"]:
        for metric in ("test_kappa", "val_kappa"):
            row, values, reference = (
                rows.loc[(variant, metric)],
                per_seed(variant, metric),
                per_seed("baseline", metric),
            )
            seeds = sorted(values)
            a, b = np.array([values[s] for s in seeds]), np.array([reference[s] for s in seeds])
            assert row["mean"] == pytest.approx(a.mean()) and row.delta == pytest.approx((a - b).mean())
            if np.all(a == b):
                continue  # no spread to test
            if np.ptp(a - b) == 0:  # a constant non-zero difference: no p, no interval, no star
                assert pd.isna(row.p) and pd.isna(row.ci_low) and row.note == "constant difference" and not row.star
                continue
            if metric.startswith("test_"):  # over seeds and test patients, from the stored predictions
                assert row.covers == "seeds+patients" and row.ci_low < row.delta < row.ci_high
                assert 0 < row.p <= row.p_holm <= 1
                continue
            assert row.covers == "seeds"
            expected = scipy_stats.ttest_rel(a, b)
            assert (row.ci_low, row.ci_high) == pytest.approx(tuple(expected.confidence_interval(0.95)))
            assert row.p == pytest.approx(expected.pvalue) and row.p <= row.p_holm <= 1
            assert row.p_improve == pytest.approx(((a > b).sum() + 0.5 * (a == b).sum()) / len(a))
    md = (root / "results" / "abl" / "ablation_study.md").read_text()
    assert "paired by seed" in md and "Holm" in md and "No parameter was retuned" in md
    assert "test patients" in md and "do not cover drawing another training set" in md
    endpoints = pd.read_csv(root / "results" / "abl" / "ablation_endpoints.csv")  # dr_focal: referable DR
    assert set(endpoints.variant) == set(study.user_attrs["variants"]) and set(endpoints.level) == {"image", "patient"}
    assert re.search(r"^\| baseline +\| +3 \|", md, re.MULTILINE)
    assert (
        "ablation_study.csv" not in md and "## Ablation study" in (root / "results" / "abl" / "report.md").read_text()
    )
    if shutil.which("pdflatex"):
        doc = root / "ablation_doc.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage{graphicx}\\begin{document}"
                       "\\input{results/abl/ablation_study.tex}\\input{results/abl/factors.tex}\\end{document}\n")
        result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=root,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-2000:]


def test_refusals_are_one_line_and_write_nothing(made):
    root, data, torch_home = made
    legacy = optuna.create_study(study_name="abl.legacy", storage=storage_of(root))
    legacy.set_user_attr("seeds", 3)  # an ablation of the old ablate: seeds 0..2, no seed list
    legacy.add_trial(
        optuna.trial.create_trial(
            params={"variant": "baseline", "seed": 0},
            value=0.5,
            distributions={
                "variant": optuna.distributions.CategoricalDistribution(["baseline"]),
                "seed": optuna.distributions.IntDistribution(0, 2),
            },
        )
    )

    def snapshot():
        summaries = optuna.get_all_study_summaries(storage_of(root), include_best_trial=False)
        return sorted((s.study_name, s.n_trials) for s in summaries), sorted(
            p.name for p in (root / "results").iterdir()
        )

    before = snapshot()
    for args, fragment in (
        (("--seeds", "2"), "at least 3 seeds"),
        (("--pruner", "median"), "never prunes"),
        (("--retune", "nope"), "--retune nope: not a sampled parameter"),
        (("--study-name", "abl.legacy"), "optuna delete-study --study-name 'abl.legacy'"),
        ((), "ran on a data folder of its own, not the embedded dataset: give --data DIR"),
    ):  # each a process that imports torch: the other refusals are in test_ablation_stats.py
        data_args = ("--data", str(data)) if args else ()  # the stored folder is never read by itself
        result = run_cli("ablate", "abl", "--study-name", "abl.refused", *args, *data_args, cwd=root,
                         torch_home=torch_home)
        assert result.returncode == 2 and fragment in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert snapshot() == before


def test_factorial_with_retune_then_report_of_a_named_ablation(made, tmp_path):
    root, data, torch_home = made
    result = run_cli("ablate", "abl", "--factors", "loss", "--seeds", "3", "--retune", "lr", "--retune-trials", "3",
                     "--retune-seeds", "2", "--data", str(data),
                     "--study-name", "abl.retuned", cwd=root, torch_home=torch_home)
    assert result.returncode == 0, result.stderr
    url = storage_of(root)
    study = optuna.load_study(study_name="abl.retuned", storage=url)
    parent = optuna.load_study(study_name="abl", storage=url)
    retune = study.user_attrs["retune"]
    assert retune["param"] == "lr" and retune["candidates"] == pytest.approx([1e-3, 0.007071, 0.05], rel=1e-3)
    seeds, tuning = set(study.user_attrs["seeds"]), set(retune["tuning_seeds"])
    assert len(tuning) == 2 and not tuning & seeds and not (tuning | seeds) & parent_seeds(parent)
    assert retune["seeds"] == 2 and study.user_attrs["ablation_version"] == 3
    assert study.user_attrs["split_per_seed"] is True  # from the objective's settings
    for variant, picked in study.user_attrs["retuned"].items():
        search = optuna.load_study(study_name=f"abl.retuned.retune.{variant}", storage=url)
        tried = sorted(t.params["lr"] for t in search.trials if t.state == TrialState.COMPLETE)
        # every variant gets the same candidates, each on both tuning seeds
        assert tried == pytest.approx(sorted(retune["candidates"] * 2))
        assert {t.user_attrs["config"]["seed"] for t in search.trials} == tuning
        assert all(t.user_attrs["config"]["seed"] == t.params["tune_seed"] for t in search.trials)
        assert picked == variants.pick_by_mean(ablate.retune_results(search, "lr", retune), 2, maximize=True)
        evaluated = [t for t in study.trials if t.params["variant"] == variant]
        assert len(evaluated) == 3 and all(t.user_attrs["config"]["lr"] == picked for t in evaluated)

    report = run_cli("report", "abl", "--ablation", "abl.retuned", "--out", str(tmp_path / "rep"), cwd=root)
    assert report.returncode == 0, report.stderr
    table = pd.read_csv(tmp_path / "rep" / "ablation_study.csv")
    other = next(
        level for level in ("ce", "focal") if level != study.user_attrs["levels"][study.user_attrs["baseline"]]["loss"]
    )
    effect = table[(table.variant == f"main:loss={other}") & (table.metric == "test_kappa")].iloc[0]
    cells = {
        v: {t.params["seed"]: t.user_attrs["test_metrics"]["kappa"] for t in study.trials if t.params["variant"] == v}
        for v in study.user_attrs["variants"]
    }
    arm = next(v for v, levels in study.user_attrs["levels"].items() if levels["loss"] == other)
    diffs = [cells[arm][s] - cells[study.user_attrs["baseline"]][s] for s in study.user_attrs["seeds"]]
    assert effect.n == 3 and effect.delta == pytest.approx(np.mean(diffs))
    md = (tmp_path / "rep" / "ablation_study.md").read_text()
    assert "lr was retuned for every variant" in md and "lr (retuned)" in md
    missing = run_cli("report", "abl", "--ablation", "abl.nope", "--out", str(tmp_path / "rep2"), cwd=root)
    assert missing.returncode == 2 and "no study 'abl.nope'" in missing.stderr
