"""The metric registry (`objectives.metrics`): its formulas against scikit-learn, the
majority-class predictor's kappa of zero, NaN recall for an absent class, one entry per metric."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, cohen_kappa_score, f1_score, recall_score
from sklearn.metrics import confusion_matrix as sk_confusion

from objectives.metrics import confusion_matrix, quadratic_kappa, summarize


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_scikit_learn_on_random_predictions(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    y = rng.choice(5, size=n, p=[0.73, 0.07, 0.15, 0.025, 0.025])
    p = np.where(rng.random(n) < 0.5, y, rng.integers(0, 5, n))
    if seed % 2:
        p[p == 4] = 3  # a class never predicted
    cm = confusion_matrix(torch.from_numpy(y), torch.from_numpy(p), 5).numpy()
    assert np.array_equal(cm, sk_confusion(y, p, labels=range(5)))
    m = summarize(cm)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, p, weights="quadratic", labels=range(5)), abs=1e-12)
    present = np.isin(range(5), y)
    expected = recall_score(y, p, average=None, labels=range(5), zero_division=0)
    assert np.allclose(np.asarray(m["recall"])[present], expected[present], atol=1e-12)
    assert np.isnan(np.asarray(m["recall"])[~present]).all()


def test_kappa_of_majority_class_predictor_is_zero():
    cm = np.array([[73, 0, 0], [7, 0, 0], [20, 0, 0]])
    assert quadratic_kappa(cm) == 0.0
    assert summarize(cm)["accuracy"] == pytest.approx(0.73)


def test_recall_of_a_class_absent_from_the_split_is_nan_not_zero():
    """A split without any image of a class cannot say how well that class is recalled."""
    cm = np.array([[5, 1, 0], [0, 0, 0], [1, 0, 3]])  # class 1 absent from the labels, predicted once
    m = summarize(cm)
    assert np.isnan(m["recall"][1])
    assert m["recall"][0] == pytest.approx(5 / 6) and m["recall"][2] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((5 / 6 + 3 / 4) / 2)
    y = np.array([0] * 6 + [2] * 4)
    p = np.array([0] * 5 + [1] + [0] + [2] * 3)
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", labels=[0, 1, 2], zero_division=0))


def test_every_registered_metric_is_one_entry_that_every_reader_uses():
    """A metric's compute takes a stack of matrices (the report's bootstrap) and gives what
    `summarize` stores for each one; its labels are what the tables and notes print."""
    from objectives import metrics
    from study.report.frames import metric_label
    from study.report.uncertainty import batched_metrics

    rng = np.random.default_rng(3)
    stack = rng.integers(0, 20, (6, 4, 4))
    batched = batched_metrics(stack)
    assert set(metrics.CONFUSION_METRICS) == {m for m, e in metrics.REGISTRY.items() if not e.needs_scores}
    for name in metrics.CONFUSION_METRICS:
        values = metrics.REGISTRY[name].confusion(stack)
        assert values.shape == (6,) and np.array_equal(values, batched[name])
        assert values == pytest.approx([summarize(cm)[name] for cm in stack], abs=1e-12)
    assert metric_label("test_balanced_accuracy") == "test bal_acc" and metric_label("val_macro_f1") == "val f1"
    assert metrics.headline("loss") == "kappa" and metrics.headline("accuracy") == "accuracy"
    assert metrics.known().startswith("kappa, accuracy, balanced_accuracy")
