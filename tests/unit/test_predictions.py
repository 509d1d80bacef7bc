"""Per-image predictions in the storage (`study.predictions`): chunked round trips on real
storages, one rows record per manifest, row order checked against a real trained model, and the
best epoch's probabilities surviving a checkpoint."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from objectives.data import find_dataset, load_splits
from objectives.losses import build_loss
from objectives.metrics import summarize
from objectives.models import build_model
from objectives.train import Evaluation, Runtime, fit
from study import predictions as pr
from study.records import predictions_key, rows_key

from conftest import fit_cfg
from support.predictions import grouped_dr


def _storage(tmp_path: Path, kind: str):
    return optuna.storages.InMemoryStorage() if kind == "memory" else f"sqlite:///{tmp_path / 'p.db'}"


def _random(n: int, k: int, groups: int, seed: int = 0) -> pr.Predictions:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k), size=n).astype(np.float32)
    return pr.Predictions(p, rng.integers(0, k, n), np.sort(rng.integers(0, groups, n)))


def test_encode_chunks_stay_under_mysql_text_and_round_trip() -> None:
    a = np.random.default_rng(0).random((7000, 5)).astype(np.float16)
    chunks = pr.encode(a)
    assert len(chunks) > 1 and all(len(c) < 60_000 for c in chunks)
    np.testing.assert_array_equal(pr.decode(chunks, "float16", a.shape), a)


def test_group_index_is_the_rank_of_the_name_and_ungrouped_rows_are_their_own() -> None:
    np.testing.assert_array_equal(pr.group_index(["b", "a", "b", "c"]), [1, 0, 1, 2])
    assert len(set(pr.group_index(["", "", "a"]).tolist())) == 3


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_write_then_read_from_the_storage_alone(tmp_path: Path, kind: str) -> None:
    study = optuna.create_study(storage=_storage(tmp_path, kind), study_name="s")
    val, test = _random(300, 5, 150, seed=1), _random(7000, 5, 3500, seed=2)
    trials = []
    for _ in range(2):
        trial = study.ask()
        pr.write_predictions(study, trial, "val", val, "hash-a")
        pr.write_predictions(study, trial, "test", test, "hash-a")
        study.tell(trial, 0.5)
        trials.append(trial)
    old = study.ask()
    study.tell(old, 0.1)  # a trial of an older version: no predictions
    loaded = optuna.load_study(study_name="s", storage=study._storage)
    frozen = loaded.get_trials()
    got = pr.read_predictions(loaded, frozen[0], "test")
    assert got is not None
    np.testing.assert_array_equal(got.labels, test.labels)
    np.testing.assert_array_equal(got.groups, test.groups)
    np.testing.assert_allclose(got.probabilities, test.probabilities, atol=1e-3)  # float16
    assert got.probabilities.dtype == np.float32
    assert pr.read_predictions(loaded._storage, frozen[1], "val") == pr.read_predictions(loaded, frozen[0], "val")
    assert pr.read_predictions(loaded, frozen[2], "test") is None
    header = frozen[0].system_attrs[predictions_key("test")]
    assert header["rows"] == "hash-a" and header["n"] == 7000 and header["k"] == 5
    assert all(len(str(v)) < 60_000 for t in frozen for v in t.system_attrs.values())
    assert all(len(str(v)) < 60_000 for v in loaded._storage.get_study_system_attrs(loaded._study_id).values())
    assert not any(k.startswith("predictions") for t in frozen for k in t.user_attrs)  # the dashboard's table
    rows = [k for k in loaded._storage.get_study_system_attrs(loaded._study_id) if k.startswith("prediction_rows")]
    assert rows_key("hash-a", "test") in rows and rows_key("hash-a", "val") in rows
    # a second trial with the same manifest adds no rows record; another manifest adds its own
    trial = loaded.ask()
    pr.write_predictions(loaded, trial, "val", _random(280, 5, 140, seed=3), "hash-b")
    keys = set(loaded._storage.get_study_system_attrs(loaded._study_id))
    assert rows_key("hash-b", "val") in keys and len([k for k in keys if k.endswith(":val")]) == 2


def test_rows_line_up_with_the_imageset_and_stored_probabilities_give_the_recorded_accuracy(tmp_path: Path) -> None:
    files = find_dataset(grouped_dr(tmp_path / "dr", patients=40, seed=0), num_classes=5)
    assert files.train.groups is not None
    splits = load_splits(files, image_size=32, val_fraction=0.25, split_seed=0, cache_dir=None)
    cfg = fit_cfg(epochs=2, fe_epochs=0, lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=16, metric="accuracy")
    result = fit(build_model("convnet", 5, pretrained=False, seed=0), build_loss("ce", class_counts=[1] * 5),
                 splits, cfg, Runtime(), lambda e, r: None)
    study = optuna.create_study(storage=_storage(tmp_path, "sqlite"), study_name="s")
    trial = study.ask()
    for split, evaluation in (("val", result.val), ("test", result.test)):
        labels, groups = pr.split_rows(splits, split)
        images = getattr(splits, split)
        np.testing.assert_array_equal(labels, images.labels[images.index])  # the true labels, in row order
        names = [files.test.ids[i] if split == "test" else files.train.ids[i] for i in images.index]
        patients = [Path(n).stem.split("_")[0] for n in names]
        assert groups.max() + 1 == len(set(patients))  # one group per patient ...
        for a in range(len(names)):  # ... and two eyes share theirs
            assert all((groups[a] == groups[b]) == (patients[a] == patients[b]) for b in range(len(names)))
        assert evaluation.probabilities.shape == (len(images), 5)
        np.testing.assert_allclose(evaluation.probabilities.sum(1), 1.0, atol=1e-5)
        pr.write_predictions(study, trial, split, pr.Predictions(evaluation.probabilities, labels, groups), "h")
    study.tell(trial, 0.0)
    stored = pr.read_predictions(study, study.trials[0], "test")
    cm = np.zeros((5, 5), dtype=int)
    np.add.at(cm, (stored.labels, stored.probabilities.argmax(1)), 1)
    assert cm.tolist() == result.test.confusion
    assert summarize(cm)["accuracy"] == result.test.metrics["accuracy"]


def test_best_validation_probabilities_survive_a_weights_only_checkpoint() -> None:
    p = np.random.default_rng(0).dirichlet(np.ones(5), size=50).astype(np.float32)
    evaluation = Evaluation(0.5, {"accuracy": 0.5}, [[1]], probabilities=p)
    buffer = io.BytesIO()
    torch.save({"best_val": evaluation.checkpointed()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["best_val"]["probabilities"].dtype == torch.float16
    back = Evaluation.from_checkpoint(state["best_val"])
    np.testing.assert_allclose(back.probabilities, p, atol=1e-3)
    assert back.probabilities.dtype == np.float32
    assert Evaluation.from_checkpoint({"loss": 1.0, "metrics": {}, "confusion": []}).probabilities is None  # older


def test_fit_resumed_from_its_last_checkpoint_keeps_the_best_validation_probabilities(splits_dr) -> None:
    saved: list[bytes] = []

    def save(state: dict) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        saved.append(buffer.getvalue())

    from objectives.train import Checkpointing

    cfg = fit_cfg(epochs=2, fe_epochs=0, lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=16)
    first = fit(build_model("convnet", 5, pretrained=False, seed=0), build_loss("ce", class_counts=[1] * 5),
                splits_dr, cfg, Runtime(), lambda e, r: None, Checkpointing(save=save))
    state = torch.load(io.BytesIO(saved[-1]), weights_only=True)  # after the last epoch: nothing left to train
    resumed = fit(build_model("convnet", 5, pretrained=False, seed=0), build_loss("ce", class_counts=[1] * 5),
                  splits_dr, cfg, Runtime(), lambda e, r: None, Checkpointing(save=save, resume=state))
    assert resumed.best_epoch == first.best_epoch
    assert resumed.val.probabilities.shape == (len(splits_dr.val), 5)
    np.testing.assert_allclose(resumed.val.probabilities, first.val.probabilities, atol=1e-3)


@pytest.fixture
def splits_dr(dr_dir: Path):
    return load_splits(find_dataset(dr_dir, num_classes=5), image_size=32, val_fraction=0.25, split_seed=0,
                       cache_dir=None)


def test_a_damaged_or_foreign_record_reads_as_missing_with_a_warning():
    """Nothing read from a shared storage is trusted: a header claiming a huge array, chunks that
    are not ours, rows that do not fit the predictions -> None and one warning, never a crash or a
    decompression into gigabytes."""
    import warnings as warnings_
    import zlib as zlib_

    from study.predictions import Predictions, decode, read_predictions, write_predictions
    from study.records import predictions_key

    rng = np.random.default_rng(0)
    study = optuna.create_study()
    trial = study.ask()
    probabilities = rng.random((6, 3)).astype(np.float32)
    write_predictions(study, trial, "test", Predictions(probabilities, np.array([0, 1, 2, 0, 1, 2]),
                                                        np.array([0, 0, 1, 1, 2, 2])), "h")
    key = predictions_key("test")
    header = study.trials[0].system_attrs[key]
    bomb = base64.b64encode(zlib_.compress(bytes(50_000_000))).decode()  # 50 MB of zeros in ~50 KB
    damaged = [
        {**header, "n": 10**9},  # more values than any split
        {**header, "dtype": "object"},
        {**header, "chunks": -1},
        {**header, "n": 5},  # the rows record has 6
        {**header, "k": 2},
    ]
    for bad in damaged:
        study._storage.set_trial_system_attr(trial._trial_id, key, bad)
        with warnings_.catch_warnings(record=True) as caught:
            warnings_.simplefilter("always")
            assert read_predictions(study, study.trials[0], "test") is None, bad
        assert len(caught) == 1 and "unreadable" in str(caught[0].message)
    with pytest.raises(ValueError):
        decode([bomb], "float16", (6, 3))  # inflating stops at the expected size
    study._storage.set_trial_system_attr(trial._trial_id, key, header)
    assert read_predictions(study, study.trials[0], "test") is not None
