"""The report's clinical section: each picked trial's endpoints (`[report.endpoints]`, e.g.
referable DR) per image and per patient, its calibration, and the best trial's ROC and
reliability figures; and, for an ablation, each variant's endpoints over its seeds.

Everything is computed from the per-image predictions the trials stored (`study.predictions`),
so it runs wherever the storage is readable. Thresholds are chosen on each trial's own validation
split and applied unchanged to test; every interval is a cluster bootstrap over the test patients
(`study.report.endpoints`, `study.report.calibration`). A trial without stored predictions (an
older run) is listed as missing, never silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from study import paths, tables
from study.predictions import Predictions, read_predictions
from study.records import SEED, VARIANT, AblationRecord
from study.report import calibration, contrasts, endpoints, stats, uncertainty
from study.report.endpoint_figures import reliability_figure, roc_figure
from study.report.endpoints import EndpointResult
from study.spaces.report_layout import Endpoint

RULE_LABELS = {"sensitivity>=0.90": "sens≥90% (val)", "youden": "Youden (val)"}
FIGURE_RULES = {"sensitivity>=0.90": "at val sens≥90%", "youden": "at val Youden"}  # ablation figure names
PAGE_RULE = "sensitivity>=0.90"  # the operating point the ablation's page shows (the CSV has both)
MISSING = "no stored predictions (a trial of a run before predictions were kept)"


@dataclass(frozen=True)
class TrialEvidence:
    """One picked trial's endpoint results (empty without validation predictions) and calibration."""

    label: str
    number: int
    endpoints: tuple[EndpointResult, ...]
    calibration: calibration.CalibrationResult
    test: Predictions


def trial_evidence(study: optuna.Study, trial: FrozenTrial, label: str,
                   wanted: Sequence[Endpoint]) -> TrialEvidence | str:
    """The evidence of `trial`, or a sentence saying why there is none."""
    test = read_predictions(study, trial, "test")
    if test is None:
        return MISSING
    val = read_predictions(study, trial, "val")
    k = test.probabilities.shape[1]
    usable = []
    for endpoint in wanted:
        try:
            endpoints.check(endpoint, k)
        except ValueError as exc:
            return f"{exc} (the predictions have {k} classes)"
        usable.append(endpoint)
    found = tuple(endpoints.evaluate_endpoint(val, test, e) for e in usable) if val is not None else ()
    return TrialEvidence(label, trial.number, found, calibration.evaluate_calibration(test, tuple(usable)), test)


def endpoint_frame(evidence: Sequence[TrialEvidence]) -> pd.DataFrame:
    """One row per trial, endpoint, level and operating point: n, positives, patients, AUC and
    the point's threshold, validation sensitivity, and test sensitivity/specificity, each with
    its interval bounds and method."""
    rows = []
    for item in evidence:
        for result in item.endpoints:
            for level in (result.image, result.patient):
                for point in level.points:
                    rows.append({
                        "trial": item.label, "number": item.number, "endpoint": result.endpoint.name,
                        "level": level.level, "n": level.n, "positive": level.n_positive, "patients": level.n_groups,
                        **_interval("auc", level.auc), "rule": point.rule, "threshold": point.threshold,
                        "val_sensitivity": point.val_sensitivity, "val_specificity": point.val_specificity,
                        **_interval("sensitivity", point.sensitivity), **_interval("specificity", point.specificity),
                    })
    return pd.DataFrame(rows)


def endpoint_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The page view: per row its trial, endpoint, level (n, positives), AUC and the operating
    point's test sensitivity and specificity with their intervals."""
    return pd.DataFrame({
        "trial": frame.trial,
        "endpoint": frame.endpoint,
        "level (n, pos.)": [f"{lv} ({n}, {p})" for lv, n, p in zip(frame.level, frame.n, frame.positive)],
        "AUC [95% CI]": [_text(e, lo, hi) for e, lo, hi in zip(frame.auc, frame.auc_low, frame.auc_high)],
        "threshold (rule)": [f"{t:.3f} ({RULE_LABELS.get(r, r)})" for t, r in zip(frame.threshold, frame.rule)],
        "sens [95% CI]": [_text(e, lo, hi) for e, lo, hi in
                          zip(frame.sensitivity, frame.sensitivity_low, frame.sensitivity_high)],
        "spec [95% CI]": [_text(e, lo, hi) for e, lo, hi in
                          zip(frame.specificity, frame.specificity_low, frame.specificity_high)],
    })


def calibration_frame(evidence: Sequence[TrialEvidence]) -> pd.DataFrame:
    """One row per trial: Brier score, top-label ECE and each endpoint's ECE with intervals."""
    rows = []
    for item in evidence:
        result = item.calibration
        row = {"trial": item.label, "number": item.number, "images": len(item.test.labels),
               **_interval("brier", result.brier), **_interval("ece", result.ece)}
        for name, found in result.endpoint_ece.items():
            row.update(_interval(f"ece_{name}", found))
        rows.append(row)
    return pd.DataFrame(rows)


def calibration_view(frame: pd.DataFrame) -> pd.DataFrame:
    shown = pd.DataFrame({"trial": frame.trial, "images": frame.images})
    for column in [c for c in frame.columns if c in ("brier", "ece") or c.startswith("ece_")]:
        if column.endswith(("_low", "_high", "_method")):
            continue
        header = {"brier": "Brier", "ece": "top-label ECE"}.get(column, f"ECE {column.removeprefix('ece_')}")
        shown[f"{header} [95% CI]"] = [_text(e, lo, hi) for e, lo, hi in
                                       zip(frame[column], frame[f"{column}_low"], frame[f"{column}_high"])]
    return shown


ENDPOINT_CAPTION = (
    "Endpoints of the picked trials on the test split: the score is the summed probability of the endpoint's "
    "classes; AUC, and sensitivity and specificity at two thresholds chosen on the trial's VALIDATION split (the "
    "highest with validation sensitivity >= 90 %, and the one maximising Youden's J) and applied unchanged to test; "
    "per image and per patient (a patient's score is the maximum over its images, its label the worse eye's; "
    "patient thresholds are chosen on patient-level validation scores). 95 % intervals: cluster bootstrap over "
    "the test patients ({resamples} resamples; BCa for AUC and for proportions near 0 or 1, Wilson with a design "
    "effect at exactly 0 or 1), conditional on the threshold chosen on validation (they do not cover the "
    "threshold's own variability). Supports: how this trial's scores separate the endpoint on this test set's "
    "population. Does not support: a comparison between trials (they were picked on validation from one search) "
    "or the performance at another site or prevalence."
)
CALIBRATION_CAPTION = (
    "Calibration of the picked trials' test probabilities: multiclass Brier score (sum over classes of "
    "(p_k - y_k)^2, mean over images; lower is better), top-label expected calibration error and each "
    "endpoint's binary ECE (15 equal-mass bins), with 95 % cluster-bootstrap intervals over test patients. ECE is "
    "biased upwards on small test sets (a perfectly calibrated model shows a few points). Focal loss is known to "
    "change calibration (Mukhoti et al. 2020): compare the loss variants' rows in the ablation rather than these "
    "searched trials."
)


def write_ablation_endpoints(ablation: optuna.Study, wanted: Sequence[Endpoint], out: Path,
                             formats: Sequence[str]) -> tuple[str, list[Path]]:
    """The ablation's endpoint section and `ablation_endpoints.*` (nothing without endpoints)."""
    if not wanted:
        return "", []
    plan = AblationRecord.from_study(ablation)
    by_arm: dict[str, dict[int, FrozenTrial]] = {name: {} for name in plan.variants}
    for t in ablation.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.params.get(VARIANT) in by_arm:
            by_arm[t.params[VARIANT]][int(t.params[SEED])] = t
    frame, why = ablation_endpoint_frame(ablation, by_arm, plan.baseline, wanted)
    if frame.empty:
        return (f"### Ablation: endpoints\n\nNot shown: {why}.\n" if why else ""), []
    caption = ABLATION_ENDPOINT_CAPTION.format(resamples=ABLATION_RESAMPLES)
    view = ablation_endpoint_view(frame)
    files = tables.write(frame, view, out / "ablation_endpoints", formats, caption)
    return "### Ablation: endpoints\n\n" + caption + "\n\n" + tables.markdown(view) + "\n", files


def write_clinical(study: optuna.Study, picked: Mapping[str, FrozenTrial], wanted: Sequence[Endpoint], out: Path,
                   formats: Sequence[str]) -> tuple[str, list[Path]]:
    """The report's endpoint and calibration section and files (`endpoints.*`, `calibration.*`,
    `roc_<endpoint>_best.png`, `reliability_best.png`) for the picked trials."""
    evidence, missing = [], []
    labels: dict[int, list[str]] = {}  # one trial picked for several labels (best = resnet18) is evaluated once
    for label, trial in picked.items():
        labels.setdefault(trial.number, []).append(label)
    picked = {" = ".join(labels[t.number]): t for t in {t.number: t for t in picked.values()}.values()}
    for label, trial in picked.items():
        found = trial_evidence(study, trial, label, wanted)
        if isinstance(found, str):
            missing.append(f"{label} (trial {trial.number}): {found}")
        else:
            evidence.append(found)
    files: list[Path] = []
    parts = ["## Endpoints and calibration (test, with intervals over patients)\n"]
    if not wanted:
        parts.append("No endpoints: the study's TOML declares no `[report.endpoints]` (e.g. `referable = "
                     "{ positive = [2, 3, 4] }`), so only calibration is shown.\n")
    frame = endpoint_frame(evidence)
    if not frame.empty:
        caption = ENDPOINT_CAPTION.format(resamples=evidence[0].endpoints[0].resamples)
        view = endpoint_view(frame)
        files += tables.write(frame, view, out / "endpoints", formats, caption)
        parts.append(caption + "\n\n" + tables.markdown(view) + "\n")
    if evidence:
        frame = calibration_frame(evidence)
        view = calibration_view(frame)
        files += tables.write(frame, view, out / "calibration", formats, CALIBRATION_CAPTION)
        parts.append(CALIBRATION_CAPTION + "\n\n" + tables.markdown(view) + "\n")
        best = evidence[0]
        for result in best.endpoints:
            path = roc_figure(best.test, result, f"{result.endpoint.name}: {best.label} trial {best.number}, test",
                              paths.figure_file(out, f"roc_{result.endpoint.name}_best"))
            files.append(path)
            parts.append(f"![ROC {result.endpoint.name}]({path.name})\n")
        path = reliability_figure(_reliability_series(best, wanted), f"{best.label} trial {best.number}, test",
                                  paths.figure_file(out, "reliability_best"))
        files.append(path)
        parts.append(f"![reliability]({path.name})\n")
    if missing:
        parts.append("Missing: " + "; ".join(missing) + ".\n")
    return "\n".join(parts), files


def _reliability_series(item: TrialEvidence,
                        wanted: Sequence[Endpoint]) -> list[tuple[str, list[calibration.ReliabilityPoint]]]:
    p, labels = item.test.probabilities.astype(np.float64), item.test.labels
    confidence, correct = calibration.top_label(p, labels)
    series = [("top label", calibration.reliability_points(confidence, correct))]
    for endpoint in item.endpoints:
        e = endpoint.endpoint
        series.append((f"{e.name} score", calibration.reliability_points(
            endpoints.score(p, e), endpoints.is_positive(labels, e).astype(np.float64))))
    return series


def _interval(name: str, found: endpoints.Interval) -> dict[str, float | str]:
    return {name: found.estimate, f"{name}_low": found.low, f"{name}_high": found.high, f"{name}_method": found.method}


def _text(estimate: float, low: float, high: float) -> str:
    if estimate is None or (isinstance(estimate, float) and math.isnan(estimate)):
        return tables.DASH
    interval = "" if low is None or math.isnan(low) else f" [{tables.metric(low)}, {tables.metric(high)}]"
    return f"{tables.metric(estimate)}{interval}"


# ---------------------------------------------------------------- ablation

ABLATION_RESAMPLES = 2000


def ablation_endpoint_frame(study: optuna.Study, by_arm: Mapping[str, Mapping[int, FrozenTrial]], baseline: str,
                            wanted: Sequence[Endpoint]) -> tuple[pd.DataFrame, str]:
    """Each variant's endpoints over its seeds: per endpoint, level (image, patient) and figure
    (AUC; sensitivity and specificity at each validation rule), the mean and std over seeds
    (each seed chooses its thresholds on its own validation split) and the Δ to the baseline
    with an interval over seeds and test patients (`contrasts.variance_components_interval`;
    one stratified patient resample shared by every arm and seed), Holm over the variants.
    Returns the frame and a sentence on what is missing (empty when nothing is)."""
    runs: dict[str, dict[int, tuple[Predictions, Predictions]]] = {}
    for arm, by_seed in by_arm.items():
        for seed, trial in by_seed.items():
            val, test = read_predictions(study, trial, "val"), read_predictions(study, trial, "test")
            if val is None or test is None:
                return pd.DataFrame(), (f"{arm} seed {seed} stored no per-image predictions (an older run): no "
                                        "endpoint table")
            runs.setdefault(arm, {})[seed] = (val, test)
    if not runs or baseline not in runs:
        return pd.DataFrame(), ""
    first = next(iter(runs[baseline].values()))[1]
    if any(not np.array_equal(t.labels, first.labels) or not np.array_equal(t.groups, first.groups)
           for by_seed in runs.values() for _, t in by_seed.values()):
        return pd.DataFrame(), "the variants were scored on different test rows: no endpoint table"
    rows = []
    groups = endpoints.compact(first.groups)
    for endpoint in wanted:
        try:
            endpoints.check(endpoint, first.probabilities.shape[1])
        except ValueError as exc:
            return pd.DataFrame(), str(exc)
        positive = endpoints.is_positive(first.labels, endpoint)
        patient_positive = endpoints.per_patient(positive.astype(float), positive, groups)[1]
        weights = uncertainty.resample_weights(endpoints.n_groups(groups), ABLATION_RESAMPLES, 0,
                                               strata=patient_positive.astype(np.int64))
        values = {arm: {seed: _seed_figures(val, test, endpoint, groups, weights)
                        for seed, (val, test) in by_seed.items()} for arm, by_seed in runs.items()}
        figures = list(next(iter(values[baseline].values())))
        for figure in figures:
            level, name = figure
            family = []
            for arm in runs:
                full = {s: v[figure][0] for s, v in values[arm].items()}
                summary = stats.summarize(full)
                row: dict[str, Any] = {"variant": arm, "endpoint": endpoint.name, "level": level, "figure": name,
                                       "n": summary.n, "mean": summary.mean, "std": summary.std}
                if arm != baseline:
                    seeds = sorted(set(full) & set(values[baseline]))
                    diff = np.array([values[arm][s][figure][0] - values[baseline][s][figure][0] for s in seeds])
                    boot = np.stack([values[arm][s][figure][1] - values[baseline][s][figure][1] for s in seeds], axis=1)
                    found = contrasts.variance_components_interval(diff, boot)
                    row.update(delta=found.delta, ci_low=found.low, ci_high=found.high, p=found.p)
                    family.append(row)
                else:
                    row.update(delta=0.0)
                rows.append(row)
            for row, adjusted in zip(family, stats.holm([r["p"] for r in family])):
                row["p_holm"] = adjusted
    return pd.DataFrame(rows), ""


def _seed_figures(val: Predictions, test: Predictions, endpoint: Endpoint, groups: np.ndarray,
                  weights: np.ndarray) -> dict[tuple[str, str], tuple[float, np.ndarray]]:
    """One seed's test figures per (level, figure): the value and its B resampled values, with
    thresholds chosen on this seed's own validation split (`endpoints.ablation`)."""
    (image, patient) = endpoints.ablation([(val, test)], endpoint)
    s, p = endpoints.score(test.probabilities, endpoint), endpoints.is_positive(test.labels, endpoint)
    patient_s, patient_p = endpoints.per_patient(s, p, groups)
    curves = {"image": (s, p, weights[:, groups]), "patient": (patient_s, patient_p, weights)}
    found: dict[tuple[str, str], tuple[float, np.ndarray]] = {}
    w = weights.astype(np.float64)
    for level in (image, patient):
        scores, positive, unit_weights = curves[level.level]
        found[(level.level, "auc")] = (level.auc, endpoints.weighted_auc(scores, positive, unit_weights))
        for point in level.points:
            counts = w @ point.counts  # (B, 4): detected, positives, cleared, negatives
            with np.errstate(invalid="ignore", divide="ignore"):
                found[(level.level, f"sensitivity {FIGURE_RULES.get(point.rule, point.rule)}")] = (
                    point.sensitivity, counts[:, 0] / counts[:, 1])
                found[(level.level, f"specificity {FIGURE_RULES.get(point.rule, point.rule)}")] = (
                    point.specificity, counts[:, 2] / counts[:, 3])
    return found


def ablation_endpoint_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The page: patient-level AUC and the sensitivity and specificity at the validation
    sensitivity >= 90 % point per variant, mean ± std over seeds and Δ [95 % CI] (narrow enough
    for a page; the CSV has the image level and the Youden point too)."""
    page = {"auc", *(f"{what} {FIGURE_RULES[PAGE_RULE]}" for what in ("sensitivity", "specificity"))}
    shown = frame[(frame.level == "patient") & frame.figure.isin(page)]
    rows = []
    for (variant, endpoint), group in shown.groupby(["variant", "endpoint"], sort=False):
        row = {"variant": variant, "endpoint": endpoint}
        for _, r in group.iterrows():
            delta = "reference" if r.delta == 0 and pd.isna(r.get("ci_low")) else _delta(r)
            row[f"{r.figure} (Δ)"] = f"{tables.mean_std(r['mean'], r['std'])} ({delta})"
        rows.append(row)
    return pd.DataFrame(rows)


def _delta(row: pd.Series) -> str:
    if pd.isna(row.get("delta")):
        return tables.DASH
    mark = "*" if row.get("p_holm", np.nan) < 0.05 else ""
    interval = "" if pd.isna(row.get("ci_low")) else \
        f" [{tables.metric(row.ci_low, signed=True)}, {tables.metric(row.ci_high, signed=True)}]"
    return f"{tables.metric(row.delta, signed=True)}{interval}{mark}"


ABLATION_ENDPOINT_CAPTION = (
    "Endpoints of the ablation's variants on the test split, per patient, at the threshold with validation "
    "sensitivity >= 90 % (the CSV also has per image and the Youden point): mean ± std over the seeds; each seed "
    "chose its threshold on its own validation split. Δ = variant - baseline, paired by "
    "seed, with a 95 % interval over the seeds and the test patients (one patient resample shared by every arm "
    "and seed, {resamples} resamples, stratified by the patient's endpoint label); * = Holm-adjusted p < 0.05 over "
    "the variants. With few positive test patients a sensitivity moves in large steps: read the interval, not the "
    "mean. Supports: whether the change moves the endpoint on this test set's population; not other sites or "
    "prevalences."
)
