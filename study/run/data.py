"""The decoded data of a run: loaded once per process per data part of a config, shared by its
trials, every split written as a manifest the first time it is loaded."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from types import ModuleType
from typing import Any

from objectives.atomic import atomic_write_text
from objectives.contract import DataSource, flat
from study.run.output import Output
from study.run.prepare import Prepared


class DataCache:
    """Decoded splits per data part of a config (`config.data`): loaded once per process, shared by trials.

    Every split a trial uses is written as a manifest into `manifest_dir`: ``split.csv`` for the
    study's own `split_seed`, ``split-<seed>.csv`` for any other (an ablation's per-seed validation
    splits), so every trial's split can be checked. Nothing is written until the run has checked
    that this data is its study's (`accept`): a refused run must leave the study's manifest as it was.
    """

    def __init__(self, module: ModuleType, source: DataSource, manifest_dir: Path, base_split_seed: int | None) -> None:
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
                seed = getattr(key, "split_seed", None)
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


def load_data(prep: Prepared, out: Output) -> DataCache:
    """Decode (or read the cache of) and validate every image before any study is written; warn
    where the data's own test split shares groups with train. The manifest is written on `accept`."""
    base = prep.base_config()
    data = DataCache(prep.module, prep.source, prep.folder(), flat(base).get("split_seed"))
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
