"""The decoded data of a run: loaded once per process per data part of a config, shared by its
trials, every split written as a manifest the first time it is loaded."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

from objectives.atomic import atomic_write_text
from objectives.contract import DataSource, Objective
from study.records import DataSummary
from study.run.output import Output
from study.run.prepare import Prepared


class DataCache:
    """Decoded splits per data part of a config (`config.data`): loaded once per process, shared by trials.

    Every split a trial uses is written as a manifest into `manifest_dir`: ``split.csv`` for the
    study's own `split_seed`, ``split-<seed>.csv`` for any other (an ablation's per-seed validation
    splits), so every trial's split can be checked. Nothing is written until the run has checked
    that this data is its study's (`accept`): a refused run must leave the study's manifest as it was.
    """

    def __init__(self, module: Objective, source: DataSource, manifest_dir: Path, base_split_seed: int | None) -> None:
        self.module = module
        self.source = source
        self.manifest_dir = manifest_dir
        self.base_split_seed = base_split_seed
        self.loaded: dict[Hashable, Any] = {}
        self.hashes: dict[Hashable, str] = {}
        self.pending: dict[str, str] = {}  # manifest file name -> CSV text, until `accept`
        self.accepted = False

    def get(self, config: Any) -> Any:
        key = config.data
        if key not in self.loaded:
            splits = self.module.load_data(key, self.source)
            if splits.manifest is not None:
                seed = self.module.ROLES.split_seed_of(config)
                self.pending["split.csv" if seed == self.base_split_seed else f"split-{seed}.csv"] = \
                    splits.manifest.csv_text()
                self.hashes[key] = splits.manifest.digest()
            self.loaded[key] = splits
            if self.accepted:
                self.accept()
        return self.loaded[key]

    def accept(self) -> None:
        """The run's checks passed: write the manifests loaded so far, and each later one as it loads."""
        self.accepted = True
        for name, text in self.pending.items():
            atomic_write_text(self.manifest_dir / name, text)
        self.pending.clear()

    def manifest_hash(self, config: Any) -> str | None:
        """sha256 of the manifest of `config`'s split (loaded first if needed); None without one."""
        self.get(config)
        return self.hashes.get(config.data)

    def content_hash(self, config: Any) -> str | None:
        """The hash of the images' bytes behind `config`'s data; None where the objective gives none."""
        return getattr(self.get(config), "content_hash", None)

    def summary(self, config: Any) -> DataSummary | None:
        """Who is in `config`'s data (`data_summary`); None without a manifest."""
        splits = self.get(config)
        if splits.manifest is None:
            return None
        seed = self.module.ROLES.split_seed_of(config)
        return data_summary(splits.manifest, splits.class_names, seed, self.manifest_hash(config),
                            self.content_hash(config))


SPLIT_NAMES = ("train", "val", "test")
SHARED_PAIRS = (("train", "test"), ("val", "test"), ("train", "val"))


def data_summary(manifest: Any, class_names: Any, split_seed: int | None, split_hash: str | None,
                 content_hash: str | None) -> DataSummary:
    """Counts per split and class from a split manifest: images, and patients (groups) by the
    largest label of their images in that split (the worse eye, as the split stratifies); groups
    found in two splits. Only counts leave this function."""
    k = len(class_names)
    images = {s: [0] * k for s in SPLIT_NAMES}
    group_label: dict[str, dict[str, int]] = {s: {} for s in SPLIT_NAMES}
    for split, group, label in zip(manifest.split, manifest.group, manifest.label):
        images[split][label] += 1
        if group:
            group_label[split][group] = max(label, group_label[split].get(group, label))
    grouped = any(manifest.group)
    groups = None
    shared = None
    if grouped:
        groups = {s: tuple(sum(1 for v in group_label[s].values() if v == c) for c in range(k)) for s in SPLIT_NAMES}
        shared = {f"{a}-{b}": len(group_label[a].keys() & group_label[b].keys()) for a, b in SHARED_PAIRS}
    return DataSummary(
        class_names=tuple(str(c) for c in class_names), split_seed=split_seed,
        images={s: tuple(v) for s, v in images.items()}, groups=groups, shared=shared,
        split_hash=split_hash, content_hash=content_hash,
    )


def load_data(prep: Prepared, out: Output) -> DataCache:
    """Decode (or read the cache of) and validate every image before any study is written; warn
    where the data's own test split shares groups with train. The manifest is written on `accept`."""
    base = prep.base_config()
    data = DataCache(prep.module, prep.source, prep.folder(), prep.module.ROLES.split_seed_of(base))
    manifest = data.get(base).manifest
    if manifest is not None:
        counts = manifest.counts()
        grouped = "by group" if any(manifest.group) else "per image (no groups)"
        out.line(
            f"split: {counts['train']} train, {counts['val']} validation, {counts['test']} test images, {grouped}; "
            f"manifest {data.manifest_dir / 'split.csv'}"
        )
        if manifest.shared_test_groups:
            shown = ", ".join(manifest.shared_test_groups[:3])
            out.warn(f"{len(manifest.shared_test_groups)} group(s) of the data's own test split also appear in train "
                     f"(e.g. {shown}): the test figures are optimistic; `study data inspect` lists them")
    return data
