"""Per-image predictions kept in the Optuna storage: each trial's best-epoch class probabilities
for every validation and test image, and, once per study and split manifest, each row's label and
integer group index.

Why the storage and not a file: a report on another machine, or on a shared PostgreSQL study,
reads only the storage (`split.csv` lives on the local disk). Why group indices and not names:
patient identifiers must not spread into a shared database; the group index is the rank of the
group's name within the split (an ungrouped image is its own group), enough to resample patients.

Layout (argued): Optuna's attribute column is ``Text``, which MySQL caps at 64 KB, so each array
is stored float16 (uint8 ties would distort AUC and calibration), zlib-compressed, base64 and cut
into chunks of < 60,000 characters, as *system* attrs (the dashboard lists user attrs in its trial
table, not system attrs): per trial and split the chunks ``predictions:<split>:<i>`` plus a header
``predictions:<split>`` = {"n", "k", "dtype", "chunks", "rows"}; per study the rows record
``prediction_rows:<split_hash>:<split>`` (header) and its chunks, an int32 (2, n) array of labels
and groups. The validation split varies with `split_seed`, so there is one rows record per
manifest hash. Headers are written after their chunks: a reader never sees a half-written array.
Every key is named in `study.records`.
"""

from __future__ import annotations

import base64
import hashlib
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from study.records import predictions_key, rows_key

CHUNK = 59_000  # characters per attr value; the JSON quotes keep it under MySQL TEXT's 64 KB


@dataclass(frozen=True)
class Predictions:
    """One split of one trial: (n, K) class probabilities, and each row's label and group index."""

    probabilities: np.ndarray  # float32
    labels: np.ndarray  # int
    groups: np.ndarray  # int, 0..G-1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Predictions) and all(
            np.array_equal(a, b) for a, b in zip((self.probabilities, self.labels, self.groups),
                                                 (other.probabilities, other.labels, other.groups)))


def group_index(names: Sequence[str]) -> np.ndarray:
    """Each row's group as the rank of its name among the split's sorted names; an empty name
    (ungrouped) is its own group."""
    keyed = [name if name else f"\0{i:012d}" for i, name in enumerate(names)]
    return np.unique(np.asarray(keyed, dtype=object).astype(str), return_inverse=True)[1].astype(np.int64).ravel()


def encode(array: np.ndarray) -> list[str]:
    """An array's bytes, zlib-compressed, base64, cut into `CHUNK`-character strings."""
    text = base64.b64encode(zlib.compress(np.ascontiguousarray(array).tobytes(), 6)).decode("ascii")
    return [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]


DTYPES = ("float16", "int32")  # what `encode` is given; a stored record naming another is refused
MAX_VALUES = 1 << 30  # n x k of one record; far above any split (a stored header claiming more is damaged)


class Unreadable(ValueError):
    """A stored record that is not what `write_predictions` writes (damaged, or written by
    someone else in a shared storage)."""


def decode(chunks: Sequence[str], dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """The array `encode` stored. Nothing read is trusted: the dtype must be one we write, the
    inflated size must equal the shape's (inflating stops there, so a record cannot expand into
    gigabytes), and any damage raises `Unreadable`."""
    if dtype not in DTYPES or not all(isinstance(d, int) and d >= 0 for d in shape) \
            or int(np.prod(shape)) > MAX_VALUES or not all(isinstance(c, str) for c in chunks):
        raise Unreadable(f"a record of dtype {dtype!r} and shape {shape}")
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.b64decode("".join(chunks), validate=True), size + 1)
    except (ValueError, zlib.error) as exc:
        raise Unreadable(str(exc)) from None
    if len(raw) != size:
        raise Unreadable(f"{len(raw)} bytes where {size} were expected")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def rows_id(split_hash: str | None, labels: np.ndarray, groups: np.ndarray) -> str:
    """The key of a split's rows record: the manifest hash where the data has one, else a hash of
    the rows themselves (objectives without a manifest)."""
    if split_hash:
        return split_hash
    return "rows-" + hashlib.sha256(np.stack([labels, groups]).astype(np.int32).tobytes()).hexdigest()[:16]


def write_rows(storage: BaseStorage, study_id: int, split: str, rows: str, labels: np.ndarray,
               groups: np.ndarray) -> None:
    """Store a split's labels and groups once per study and manifest (a second trial finds them)."""
    header = rows_key(rows, split)
    if header in storage.get_study_system_attrs(study_id):
        return
    chunks = encode(np.stack([labels, groups]).astype(np.int32))
    for i, chunk in enumerate(chunks):
        storage.set_study_system_attr(study_id, f"{header}:{i}", chunk)
    storage.set_study_system_attr(study_id, header, {"n": int(len(labels)), "dtype": "int32", "chunks": len(chunks)})


def write_predictions(study: optuna.Study, trial: optuna.Trial | FrozenTrial, split: str,
                      predictions: Predictions, split_hash: str | None) -> None:
    """Store one split of a running trial: the study's rows record (if new), then the trial's
    probabilities as float16 chunks, then the header that names both."""
    storage = study._storage
    labels = np.asarray(predictions.labels, dtype=np.int64)
    groups = np.asarray(predictions.groups, dtype=np.int64)
    rows = rows_id(split_hash, labels, groups)
    write_rows(storage, study._study_id, split, rows, labels, groups)
    probabilities = np.asarray(predictions.probabilities, dtype=np.float16)
    n, k = probabilities.shape
    chunks = encode(probabilities)
    key = predictions_key(split)
    trial_id = trial._trial_id
    for i, chunk in enumerate(chunks):
        storage.set_trial_system_attr(trial_id, f"{key}:{i}", chunk)
    storage.set_trial_system_attr(trial_id, key, {"n": n, "k": k, "dtype": "float16", "chunks": len(chunks),
                                                  "rows": rows})


def read_predictions(study_or_storage: optuna.Study | BaseStorage, frozen_trial: FrozenTrial,
                     split: str, study_id: int | None = None) -> Predictions | None:
    """A trial's stored predictions of `split`, or None where it has none (an older trial, a
    pruned or failed one) or its study lacks the rows record. Given a bare storage, the trial's
    study is found by its trial id (or pass `study_id`)."""
    if isinstance(study_or_storage, optuna.Study):
        storage, study_id = study_or_storage._storage, study_or_storage._study_id
    else:
        storage = study_or_storage
    try:
        return _read(storage, study_id, frozen_trial, split)
    except (Unreadable, KeyError, TypeError, ValueError):
        warnings.warn(f"trial {frozen_trial.number}: its stored {split} predictions are unreadable (damaged, or "
                      "not written by study); treated as missing", stacklevel=2)
        return None


def _read(storage: BaseStorage, study_id: int | None, frozen_trial: FrozenTrial, split: str) -> Predictions | None:
    key = predictions_key(split)
    attrs = frozen_trial.system_attrs
    header = attrs.get(key)
    if not isinstance(header, Mapping):
        return None
    n, k = int(header["n"]), int(header["k"])
    probabilities = decode([attrs[f"{key}:{i}"] for i in range(_chunks(header))], header["dtype"], (n, k))
    if study_id is None:
        study_id = _study_of(storage, frozen_trial)
        if study_id is None:
            return None
    study_attrs = storage.get_study_system_attrs(study_id)
    rows = rows_key(str(header["rows"]), split)
    rows_header: Any = study_attrs.get(rows)
    if not isinstance(rows_header, Mapping):
        return None
    table = decode([study_attrs[f"{rows}:{i}"] for i in range(_chunks(rows_header))], rows_header["dtype"],
                   (2, int(rows_header["n"])))
    labels, groups = table[0].astype(np.int64), table[1].astype(np.int64)
    if table.shape[1] != n or k < 2 or (n and (labels.min() < 0 or labels.max() >= k or groups.min() < 0
                                               or groups.max() >= n)) \
            or not np.isfinite(probabilities).all():
        raise Unreadable(f"rows that do not fit the {n} x {k} predictions")
    return Predictions(probabilities.astype(np.float32), labels, groups)


def _chunks(header: Mapping[str, Any]) -> int:
    count = header["chunks"]
    if not isinstance(count, int) or not 0 < count <= MAX_VALUES // CHUNK + 1:
        raise Unreadable(f"{count!r} chunks")
    return count


def _study_of(storage: BaseStorage, trial: FrozenTrial) -> int | None:
    """The id of the study holding `trial` (Optuna's storages have no trial -> study lookup)."""
    for summary in storage.get_all_studies():
        try:
            if storage.get_trial_id_from_study_id_trial_number(summary._study_id, trial.number) == trial._trial_id:
                return summary._study_id
        except KeyError:
            continue
    return None


def split_rows(splits: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, group indices) of `split` ("val" or "test") in the ImageSet's row order.

    The manifest lists the train table's rows (train and val) then the test table's; a val row's
    ImageSet index is its train-table row, a test row's its test-table row. Without a manifest, or
    where its labels disagree with the ImageSet's, every image is its own group."""
    images = getattr(splits, split)
    index = np.asarray(images.index, dtype=np.int64)
    labels = np.asarray(images.labels, dtype=np.int64)[index]
    manifest = splits.manifest
    if manifest is not None:
        offset = 0 if split != "test" else sum(1 for s in manifest.split if s != "test")
        rows = offset + index
        if len(manifest.label) >= (rows.max() + 1 if len(rows) else 0) and \
                np.array_equal(np.asarray(manifest.label, dtype=np.int64)[rows], labels):
            return labels, group_index([manifest.group[r] for r in rows.tolist()])
    return labels, np.arange(len(labels), dtype=np.int64)
