"""Ablation builders with known answers: in-memory and SQLite parent studies recorded as `run`
records them (`parent_study`, `stored_parent`), and a one-at-a-time ablation whose trials store
per-image predictions (`ablation_with_predictions`), for the ablation, bias and clinical-report tests."""

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from objectives.metrics import CONFUSION_METRICS, summarize
from study.predictions import Predictions, write_predictions
from study.records import ABLATION_VERSION
from study.report.uncertainty import group_confusions

from conftest import ANALYSIS_SPACE

# the shared study's space, with focal_alpha too (coupled with focal_gamma when the loss changes)
SPACE = ANALYSIS_SPACE + 'focal_alpha = { choices = ["none", "inverse_frequency"], when = { loss = "focal" } }\n'


def parent_study(rows, *, direction="maximize"):
    """An in-memory parent: each row (params, value, config seed) as a complete trial."""
    study = optuna.create_study(direction=direction)
    dists = {
        "arch": CategoricalDistribution(["resnet18", "resnet50"]),
        "pretrained": CategoricalDistribution([True, False]),
        "fe_epochs": IntDistribution(0, 1),
        "lr": FloatDistribution(1e-3, 5e-2, log=True),
        "loss": CategoricalDistribution(["ce", "focal"]),
        "focal_gamma": FloatDistribution(0.0, 3.0),
        "focal_alpha": CategoricalDistribution(["none", "inverse_frequency"]),
    }
    for params, value, seed in rows:
        study.add_trial(create_trial(params=params, distributions={k: dists[k] for k in params}, value=value,
                                     user_attrs={"config": {**params, "seed": seed, "split_seed": 0}}))
    return study


BEST = {
    "arch": "resnet18",
    "pretrained": True,
    "fe_epochs": 1,
    "lr": 0.01,
    "loss": "focal",
    "focal_gamma": 2.1,
    "focal_alpha": "none",
}


def stored_parent(tmp_path, space_text=SPACE):
    """A parent study in a SQLite file, recorded as `run` records it (its space, file and seeds)."""
    (tmp_path / "tiny.toml").write_text(space_text)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    parent = optuna.create_study(study_name="tiny", storage=url, direction="maximize")
    parent.set_user_attr("space_file", str(tmp_path / "tiny.toml"))
    parent.set_user_attr("space_text", space_text)
    parent.set_user_attr("space_hash", "recorded")
    for trial in parent_study([(BEST, 0.8, 3)]).trials:
        parent.add_trial(trial)
    return url


SEEDS = [1001, 1002, 1003, 1004, 1005]
PATIENTS, K = 100, 5


def make_rows(rng):
    """200 test images of 100 patients (two eyes each), grades skewed like DR."""
    groups = np.repeat(np.arange(PATIENTS), 2)
    grade = rng.choice(K, size=PATIENTS, p=[0.7, 0.1, 0.12, 0.04, 0.04])
    labels = np.repeat(grade, 2)
    return labels, groups


def predictions(rng, labels, propensity):
    """Probabilities whose argmax is right where a draw falls under the image's propensity."""
    correct = rng.random(len(labels)) < propensity
    wrong = (labels + rng.integers(1, K, size=len(labels))) % K
    predicted = np.where(correct, labels, wrong)
    probabilities = np.full((len(labels), K), 0.1 / (K - 1), dtype=np.float32)
    probabilities[np.arange(len(labels)), predicted] = 0.9
    return probabilities


def ablation_with_predictions(*, store=True, fail=None):
    """A one-at-a-time ablation of two variants equal in the population but each strong on its own
    images (per-image propensities drawn once per variant), 5 seeds, predictions stored."""
    rng = np.random.default_rng(3)
    labels, groups = make_rows(rng)
    study = optuna.create_study(direction="maximize")
    names = ["baseline", "other"]
    plan = {"parent": "p", "mode": "one-at-a-time", "factors": [], "baseline": "baseline",
            "variants": {n: {"lr": 0.01} for n in names}, "levels": {n: {} for n in names}, "seeds": SEEDS,
            "retune": None, "metric": "kappa", "split_per_seed": True, "ablation_version": ABLATION_VERSION}
    for key, value in plan.items():
        study.set_user_attr(key, value)
    dists = {"variant": CategoricalDistribution(names), "seed": CategoricalDistribution(SEEDS)}
    propensity = {n: rng.beta(0.6, 0.25, size=len(labels)) for n in names}  # mostly stable per image
    for name in names:
        for seed in SEEDS:
            params = {"variant": name, "seed": seed}
            if fail == (name, seed):
                study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.FAIL,
                                             user_attrs={"fail_reason": "nan_loss"}))
                continue
            probabilities = predictions(rng, labels, propensity[name])
            confusion = group_confusions(groups, labels, probabilities.argmax(1), K).sum(0)
            measured = summarize(confusion)
            study.enqueue_trial(params)
            trial = study.ask(dists)  # running: Optuna takes system attrs of running trials only
            trial.set_user_attr("test_metrics", {m: measured[m] for m in CONFUSION_METRICS})
            if store:
                write_predictions(study, trial, "test", Predictions(probabilities, labels, groups), "hash")
                own = np.random.default_rng([seed, len(name)])  # each seed its own validation split
                val_labels, val_groups = make_rows(own)
                write_predictions(study, trial, "val", Predictions(predictions(own, val_labels, 0.7), val_labels,
                                                                   val_groups), f"val-{seed}")
            study.tell(trial, measured["kappa"])
    return study
