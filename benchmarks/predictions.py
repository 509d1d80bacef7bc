"""The dashboard's trial API with and without stored per-image predictions.

optuna-dashboard polls ``GET /api/studies/<id>?after=<n>``, which loads every trial of the study
with all its attributes (system attrs included: the predictions' chunks) and serialises the new
ones. This script builds two SQLite studies of `--trials` complete trials that record what a real
trial records (config, curves, val/test metrics and confusion matrices, test intervals); one of
them also holds, per trial, the float16 probabilities of a `--test`-image test split and a
`--val`-image validation split (`study.predictions`, the layout `run` writes), plus the study's
rows records. It then times the API through the dashboard's own WSGI app (no network): a cold
request (a fresh app and storage: what a newly opened dashboard pays; Optuna's cache then keeps
finished trials) and warm polls (`after=0` and `after=<trials>`, the steady state), median of
`--repeats`. Prints both, and the ratio against the baseline measured in the same run.

    python benchmarks/predictions.py                     # 50 trials, 7,000 test + 1,750 val images
    python benchmarks/predictions.py --trials 200 --test 20000
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/predictions.py` from anywhere, without PYTHONPATH
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from study import predictions as pr  # noqa: E402
from study.records import TrialWriter, write_test_intervals  # noqa: E402
from study.report.uncertainty import interval_record, test_intervals  # noqa: E402

K = 5


def make_study(url: str, trials: int, n_val: int, n_test: int, with_predictions: bool) -> int:
    """A study of `trials` complete trials as `run` records them; returns its id."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=url, study_name="bench", direction="maximize")
    rng = np.random.default_rng(0)
    val_groups = np.repeat(np.arange(n_val // 2 + 1), 2)[:n_val]
    test_groups = np.repeat(np.arange(n_test // 2 + 1), 2)[:n_test]
    val_labels, test_labels = rng.integers(0, K, n_val), rng.integers(0, K, n_test)
    epochs = 15
    for number in range(trials):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_categorical("arch", ["resnet18", "resnet50"])
        writer = TrialWriter(trial)
        writer.config({"lr": lr, "epochs": epochs, "batch_size": 32, "image_size": 512, "seed": number})
        writer.data([str(c) for c in range(K)], "f" * 64)
        curves = {name: rng.random(epochs).tolist() for name in
                  ("train_loss", "train_accuracy", "val_loss", "val_kappa", "val_accuracy", "val_macro_f1", "seconds")}
        curves["epoch"] = list(range(1, epochs + 1))
        metrics = {"loss": 0.5, "kappa": 0.7, "accuracy": 0.8, "balanced_accuracy": 0.6, "macro_f1": 0.5,
                   "recall": rng.random(K).tolist()}
        confusion = rng.integers(0, 300, (K, K)).tolist()
        writer.result(100.0, curves, 7, {"val": (0.5, metrics, confusion), "test": (0.5, metrics, confusion)})
        test_probs = rng.dirichlet(np.ones(K), n_test).astype(np.float32)
        write_test_intervals(trial, interval_record(
            test_intervals(test_probs, test_labels, test_groups, B=200, seed=number), seed=number))
        if with_predictions:
            pr.write_predictions(study, trial, "val", pr.Predictions(
                rng.dirichlet(np.ones(K), n_val).astype(np.float32), val_labels, val_groups), "f" * 64)
            pr.write_predictions(study, trial, "test", pr.Predictions(test_probs, test_labels, test_groups), "f" * 64)
        study.tell(trial, 0.7)
    return study._study_id


def call(app, path: str, query: str) -> tuple[float, int]:
    """One GET through the WSGI app: seconds and response bytes."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "localhost",
               "SERVER_PORT": "8080", "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http",
               "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.errors": sys.stderr}
    status: list[str] = []
    started = time.perf_counter()
    body = b"".join(app(environ, lambda s, h, exc=None: status.append(s)))
    seconds = time.perf_counter() - started
    assert status and status[0].startswith("200"), status
    json.loads(body)
    return seconds, len(body)


def measure(url: str, study_id: int, trials: int, repeats: int) -> dict[str, float]:
    from optuna_dashboard import wsgi

    path = f"/api/studies/{study_id}"
    call(wsgi(optuna.storages.RDBStorage(url)), path, "after=0")  # imports and first-use costs, not timed
    cold = []
    for _ in range(repeats):  # a fresh dashboard each time: nothing cached yet
        app = wsgi(optuna.storages.RDBStorage(url))
        cold.append(call(app, path, "after=0")[0])
    app = wsgi(optuna.storages.RDBStorage(url))
    call(app, path, "after=0")
    warm0 = [call(app, path, "after=0") for _ in range(repeats)]
    warm_n = [call(app, path, f"after={trials}")[0] for _ in range(repeats)]
    return {"cold": statistics.median(cold), "warm_after_0": statistics.median(s for s, _ in warm0),
            "warm_after_n": statistics.median(warm_n), "bytes": warm0[0][1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--test", type=int, default=7000)
    parser.add_argument("--val", type=int, default=1750)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = {}
        for label, keep in (("without predictions", False), ("with predictions", True)):
            db = Path(folder) / f"{keep}.db"
            url = f"sqlite:///{db}"
            study_id = make_study(url, args.trials, args.val, args.test, keep)
            results[label] = {**measure(url, study_id, args.trials, args.repeats), "db_mb": db.stat().st_size / 1e6}
    base, new = results["without predictions"], results["with predictions"]
    print(f"dashboard GET /api/studies/<id>: {args.trials} trials, {args.test} test + {args.val} val images, "
          f"K={K}, median of {args.repeats}")
    print(f"{'':22}{'cold after=0':>14}{'warm after=0':>14}{'warm after=N':>14}{'JSON kB':>10}{'db MB':>8}")
    for label, r in results.items():
        print(f"{label:22}{r['cold'] * 1e3:>11.1f} ms{r['warm_after_0'] * 1e3:>11.1f} ms"
              f"{r['warm_after_n'] * 1e3:>11.1f} ms{r['bytes'] / 1e3:>10.1f}{r['db_mb']:>8.1f}")
    print(f"{'ratio':22}{new['cold'] / base['cold']:>13.2f}x{new['warm_after_0'] / base['warm_after_0']:>13.2f}x"
          f"{new['warm_after_n'] / base['warm_after_n']:>13.2f}x")


if __name__ == "__main__":
    main()
