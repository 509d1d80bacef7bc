"""The report's endpoint and calibration section (`study.report.clinical`) on an in-memory study
whose trials store real per-image prediction records: thresholds from each trial's validation
split, both levels, intervals around every estimate, older trials named as missing."""

import numpy as np
import optuna
import pandas as pd
import pytest

from study.predictions import Predictions, write_predictions
from study.report import clinical, endpoints
from study.report.endpoints import Endpoint

REFERABLE = Endpoint("referable", (2, 3, 4))
K = 5


def split(rng, patients, skill):
    """Two eyes per patient; probabilities that rank referable eyes higher with `skill`."""
    groups = np.repeat(np.arange(patients), 2)
    labels = rng.choice(K, size=2 * patients, p=[0.6, 0.1, 0.18, 0.06, 0.06])
    logits = rng.normal(size=(2 * patients, K))
    logits[np.arange(len(labels)), labels] += skill
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return Predictions(probabilities.astype(np.float32), labels, groups)


def study_with_predictions(stored=(True, True, False)):
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize")
    for keep in stored:
        trial = study.ask()
        if keep:
            write_predictions(study, trial, "val", split(rng, 60, 2.0), "h")
            write_predictions(study, trial, "test", split(rng, 80, 2.0), "h")
        study.tell(trial, 0.5)
    return study


def test_the_section_reports_both_levels_with_intervals_and_names_missing_trials(tmp_path):
    study = study_with_predictions()
    trials = study.get_trials()
    picked = {"best": trials[0], "resnet18_scratch": trials[0], "resnet50_scratch": trials[1], "old": trials[2]}
    section, files = clinical.write_clinical(study, picked, [REFERABLE], tmp_path, ["md", "csv"])
    names = {p.name for p in files}
    assert {"endpoints.csv", "endpoints.md", "calibration.csv", "roc_referable_best.png",
            "reliability_best.png"} <= names
    frame = pd.read_csv(tmp_path / "endpoints.csv")
    assert len(frame) == 2 * 2 * 2  # two trials x (image, patient) x two operating points
    assert set(frame.rule) == {"sensitivity>=0.90", "youden"}
    for column in ("auc", "sensitivity", "specificity"):
        assert (frame[f"{column}_low"] <= frame[column] + 1e-12).all()
        assert (frame[column] <= frame[f"{column}_high"] + 1e-12).all()
    # the figures come from the stored predictions: AUC per image recomputed from them
    test = clinical.read_predictions(study, trials[0], "test")
    positive = endpoints.is_positive(test.labels, REFERABLE)
    assert set(frame.trial) == {"best = resnet18_scratch", "resnet50_scratch"}  # a trial picked twice: once
    image = frame[(frame.trial == "best = resnet18_scratch") & (frame.level == "image")]
    assert np.allclose(image.auc, endpoints.auc(endpoints.score(test.probabilities, REFERABLE), positive))
    # thresholds come from validation: the >=90 % rule holds there, whatever it gives on test
    assert (frame[frame.rule == "sensitivity>=0.90"].val_sensitivity >= 0.9).all()
    patients = frame[(frame.trial == "best = resnet18_scratch") & (frame.level == "patient")]
    assert (patients.n == 80).all() and (image.n == 160).all()
    assert "old (trial 2): no stored predictions" in section
    assert "conditional on the threshold chosen on validation" in section
    calibration = pd.read_csv(tmp_path / "calibration.csv")
    assert list(calibration.trial) == ["best = resnet18_scratch", "resnet50_scratch"]
    assert (calibration.brier_low <= calibration.brier).all() and "ece_referable" in calibration


def test_without_endpoints_only_calibration_is_shown(tmp_path):
    study = study_with_predictions((True,))
    section, files = clinical.write_clinical(study, {"best": study.trials[0]}, [], tmp_path, ["csv"])
    assert "declares no `[report.endpoints]`" in section
    assert not (tmp_path / "endpoints.csv").exists() and (tmp_path / "calibration.csv").exists()


def test_an_endpoint_the_predictions_cannot_hold_is_named_not_raised(tmp_path):
    study = study_with_predictions((True,))
    section, _ = clinical.write_clinical(study, {"best": study.trials[0]}, [Endpoint("x", (7,))], tmp_path, ["csv"])
    assert "class 7 is out of range for 5 classes" in section


def test_the_ablation_endpoint_table_pairs_seeds_with_thresholds_from_each_seeds_validation(tmp_path):
    from support.ablation import ablation_with_predictions

    study = ablation_with_predictions()
    section, files = clinical.write_ablation_endpoints(study, [REFERABLE], tmp_path, ["csv", "md"])
    assert {p.name for p in files} == {"ablation_endpoints.csv", "ablation_endpoints.md"}
    frame = pd.read_csv(tmp_path / "ablation_endpoints.csv")
    figures = {"auc", "sensitivity at val sens≥90%", "specificity at val sens≥90%", "sensitivity at val Youden",
               "specificity at val Youden"}
    assert set(frame.figure) == figures and set(frame.level) == {"image", "patient"}
    other = frame[(frame.variant == "other") & (frame.level == "patient") & (frame.figure == "auc")].iloc[0]
    # Δ is the mean paired difference of the per-seed AUCs, recomputed here from the stored predictions
    by_seed = {}
    for t in study.trials:
        val = clinical.read_predictions(study, t, "val")
        test = clinical.read_predictions(study, t, "test")
        patient = [e for e in endpoints.ablation([(val, test)], REFERABLE) if e.level == "patient"][0]
        by_seed[(t.params["variant"], t.params["seed"])] = patient.auc
    seeds = sorted({s for _, s in by_seed})
    expected = np.mean([by_seed[("other", s)] - by_seed[("baseline", s)] for s in seeds])
    assert other.delta == pytest.approx(expected)
    assert other.ci_low < other.delta < other.ci_high and 0 <= other.p <= 1 and other.n == 5
    base = frame[(frame.variant == "baseline")]
    assert (base.delta == 0).all() and base.ci_low.isna().all()
    assert "own validation split" in section and "Δ" in section


@pytest.mark.parametrize("stored", [["referable"], {"r": {"positive": [True]}}, {"r": {"positive": "234"}},
                                    {"r": {}}, {"r": {"positive": [10**9]}}])
def test_a_damaged_recorded_endpoint_is_left_out_with_a_warning(stored):
    from study.spaces.report_layout import ReportLayout

    with pytest.warns(UserWarning, match="endpoints are unreadable"):
        layout = ReportLayout.from_record({"cells": ["arch"], "endpoints": stored})
    assert layout.endpoints == () and layout.cells == ("arch",)
