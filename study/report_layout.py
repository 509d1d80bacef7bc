"""The [report] table of a study's TOML: which factors form the report's cells and figures.

`ReportLayout` is what `load_space` parses from ``[report]`` (schema 2) and what a study records as
its user attr ``report``, so `report` reads it from the storage alone. A study that recorded none
(made before schema 2) gets the defaults, which are the DR lab's comparison.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

KEYS = {"cells", "figures", "labels"}
_LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")  # labels name figure files


@dataclass(frozen=True)
class ReportLayout:
    """What `report` groups the search by: the factors whose combinations form the cells table
    (`cells`), those whose combinations each get the confusion figure of their best trial
    (`figures`, named ``confusion_<label>_<label>.png``), and the labels of factor values in those
    names (`labels`: factor -> value as TOML writes it -> label; the value itself otherwise).
    A factor that the study's trials never vary is left out."""

    cells: tuple[str, ...] = ("arch", "pretrained", "loss")
    figures: tuple[str, ...] = ("arch", "pretrained")
    labels: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: _frozen({"pretrained": {"true": "pretrained", "false": "scratch"}}))

    def label(self, factor: str, value: Any) -> str:
        """How a value of `factor` appears in a figure's name."""
        return self.labels.get(factor, {}).get(value_text(value), str(value))

    def record(self) -> dict[str, Any]:
        """As the study stores it (user attr ``report``)."""
        return {"cells": list(self.cells), "figures": list(self.figures),
                "labels": {factor: dict(values) for factor, values in self.labels.items()}}

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> ReportLayout:
        """The layout a study recorded; the defaults for a study that recorded none."""
        if not record:
            return cls()
        return cls(tuple(record.get("cells", ())), tuple(record.get("figures", ())), _frozen(record.get("labels", {})))


def value_text(value: Any) -> str:
    """A setting's value as a TOML key writes it (``true``, ``resnet18``, ``0.5``): how labels name values."""
    if isinstance(value, (bool, np.bool_)):  # numpy's from a pandas column
        return "true" if value else "false"
    if value in ("True", "False"):  # a bool read back as text
        return value.lower()
    return str(value)


def parse(doc: Mapping[str, Any], values: Mapping[str, tuple[Any, ...] | None]) -> ReportLayout:
    """The [report] table `doc` of a file whose settings are `values` (name -> the values it may
    take, None for a numeric range). `cells` and `figures` are lists of distinct settings; `labels`
    a table per factor of its values and their labels. A key left out keeps its default. A problem
    is a ValueError whose message goes on from "[report]"."""
    unknown = sorted(set(doc) - KEYS)
    if unknown:
        raise ValueError(f": unknown key {unknown[0]!r} (allowed: {', '.join(sorted(KEYS))})")
    lists = {}
    for key in ("cells", "figures"):
        if key not in doc:
            lists[key] = getattr(ReportLayout, key)  # the default (unchecked: it names factors only where they vary)
            continue
        names = doc[key]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ValueError(f".{key} must be a list of distinct setting names, got {names!r}")
        for factor in names:
            if factor not in values:
                raise ValueError(f".{key}: {factor!r} is not a setting in [fixed] or [space]")
        lists[key] = tuple(names)
    if "labels" not in doc:
        return ReportLayout(lists["cells"], lists["figures"])
    labels = doc["labels"]
    if not isinstance(labels, dict) or not all(isinstance(v, dict) for v in labels.values()):
        raise ValueError('.labels must be a table of tables, like { pretrained = { true = "pretrained" } }')
    for factor, named in labels.items():
        if factor not in values:
            raise ValueError(f".labels: {factor!r} is not a setting in [fixed] or [space]")
        texts = None if values[factor] is None else {value_text(v) for v in values[factor]}
        for value, label in named.items():
            if texts is not None and value not in texts:
                raise ValueError(f".labels.{factor}: {value!r} is not a value of {factor} ({', '.join(sorted(texts))})")
            if not isinstance(label, str) or not _LABEL.match(label):
                raise ValueError(f".labels.{factor}.{value}: {label!r} must be letters, digits, '_', '.', '+' or '-'")
    return ReportLayout(lists["cells"], lists["figures"], _frozen(labels))


def _frozen(labels: Mapping[str, Mapping[str, str]]) -> Mapping[str, Mapping[str, str]]:
    return MappingProxyType({factor: MappingProxyType(dict(named)) for factor, named in labels.items()})
