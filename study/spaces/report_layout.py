"""The [report] table of a study's TOML: which factors form the report's cells and figures, and
the binary endpoints (`[report.endpoints]`) the report evaluates.

`ReportLayout` is what `load_space` parses from ``[report]`` (schema 2) and what a study records as
its user attr ``report``, so `report` reads it from the storage alone. What the file leaves out comes
from the objective's ``REPORT_GROUPS`` (`objectives.contract.ReportGroups`) when the run records it
(`filled`): this module names no objective's settings. A study that recorded none (made before
schema 2, so by the image classifier) gets the image classifier's groups.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from objectives.contract import CLASSIFIER_GROUPS, ReportGroups

KEYS = {"cells", "figures", "labels", "endpoints"}
GROUPS = ("cells", "figures", "labels")  # the keys an objective's REPORT_GROUPS fills where a file leaves them out
ENDPOINT_KEYS = {"positive"}
_LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")  # labels name figure files


@dataclass(frozen=True)
class Endpoint:
    """A named binary grouping of classes (`[report.endpoints]`): `positive` are class indices
    (0-based); `study.report.endpoints` evaluates it."""

    name: str
    positive: tuple[int, ...]


@dataclass(frozen=True)
class ReportLayout:
    """What `report` groups the search by: the factors whose combinations form the cells table
    (`cells`), those whose combinations each get the confusion figure of their best trial
    (`figures`, named ``confusion_<label>_<label>.png``), and the labels of factor values in those
    names (`labels`: factor -> value as TOML writes it -> label; the value itself otherwise).
    A factor that the study's trials never vary is left out. `endpoints`: binary groupings of
    classes (`study.report.endpoints`), none by default. `given`: which of cells, figures and
    labels the file set; `filled` takes the others from the objective (not recorded)."""

    cells: tuple[str, ...] = ()
    figures: tuple[str, ...] = ()
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    endpoints: tuple[Endpoint, ...] = ()
    given: frozenset[str] = frozenset()

    def filled(self, groups: ReportGroups) -> ReportLayout:
        """This layout with what its file left out taken from the objective's `groups`: what the
        study records, so the report never needs the objective."""
        return ReportLayout(self.cells if "cells" in self.given else groups.cells,
                            self.figures if "figures" in self.given else groups.figures,
                            self.labels if "labels" in self.given else _frozen(groups.labels),
                            self.endpoints, frozenset(GROUPS))

    def label(self, factor: str, value: Any) -> str:
        """How a value of `factor` appears in a figure's name."""
        return self.labels.get(factor, {}).get(value_text(value), str(value))

    def record(self) -> dict[str, Any]:
        """As the study stores it (user attr ``report``)."""
        record = {"cells": list(self.cells), "figures": list(self.figures),
                  "labels": {factor: dict(values) for factor, values in self.labels.items()}}
        if self.endpoints:  # left out when none: a study without endpoints records what it always did
            record["endpoints"] = {e.name: {"positive": list(e.positive)} for e in self.endpoints}
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> ReportLayout:
        """The layout a study recorded; the image classifier's groups for a study that recorded none
        (made before studies recorded one: every such study ran the image classifier), and no
        endpoints for one recorded before endpoints existed."""
        if not record:
            return cls().filled(CLASSIFIER_GROUPS)
        endpoints = _recorded_endpoints(record.get("endpoints", {}))
        return cls(tuple(record.get("cells", ())), tuple(record.get("figures", ())), _frozen(record.get("labels", {})),
                   endpoints, frozenset(GROUPS))


def _recorded_endpoints(stored: Any) -> tuple[Endpoint, ...]:
    """The endpoints a study recorded, read without trusting the storage: anything but a table of
    names to ``{"positive": [class indices]}`` is left out with one warning (the report then
    shows no endpoint rather than failing on a damaged or foreign record)."""
    try:
        return tuple(Endpoint(str(name), tuple(_index(c) for c in spec["positive"])) for name, spec in stored.items())
    except (AttributeError, KeyError, TypeError, ValueError):
        warnings.warn("the study's recorded report endpoints are unreadable; none are reported", stacklevel=3)
        return ()


def _index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10_000:
        raise ValueError(f"class index {value!r}")
    return value


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
    a table per factor of its values and their labels. A key left out is not `given`: the run
    fills it from the objective (`ReportLayout.filled`). A problem is a ValueError whose message
    goes on from "[report]"."""
    unknown = sorted(set(doc) - KEYS)
    if unknown:
        raise ValueError(f": unknown key {unknown[0]!r} (allowed: {', '.join(sorted(KEYS))})")
    endpoints = parse_endpoints(doc["endpoints"], values) if "endpoints" in doc else ()
    given = frozenset(GROUPS).intersection(doc)
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("cells", "figures"):
        if key not in doc:
            lists[key] = ()  # the objective's, filled when the run records the layout
            continue
        names = doc[key]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ValueError(f".{key} must be a list of distinct setting names, got {names!r}")
        for factor in names:
            if factor not in values:
                raise ValueError(f".{key}: {factor!r} is not a setting in [fixed] or [space]")
        lists[key] = tuple(names)
    if "labels" not in doc:
        return ReportLayout(lists["cells"], lists["figures"], endpoints=endpoints, given=given)
    labels = doc["labels"]
    if not isinstance(labels, dict) or not all(isinstance(v, dict) for v in labels.values()):
        raise ValueError('.labels must be a table of tables, like { pretrained = { true = "pretrained" } }')
    for factor, named in labels.items():
        if factor not in values:
            raise ValueError(f".labels: {factor!r} is not a setting in [fixed] or [space]")
        choices = values[factor]
        texts = None if choices is None else {value_text(v) for v in choices}
        for value, label in named.items():
            if texts is not None and value not in texts:
                raise ValueError(f".labels.{factor}: {value!r} is not a value of {factor} ({', '.join(sorted(texts))})")
            if not isinstance(label, str) or not _LABEL.match(label):
                raise ValueError(f".labels.{factor}.{value}: {label!r} must be letters, digits, '_', '.', '+' or '-'")
    return ReportLayout(lists["cells"], lists["figures"], _frozen(labels), endpoints, given)


def parse_endpoints(doc: Any, values: Mapping[str, tuple[Any, ...] | None]) -> tuple[Endpoint, ...]:
    """`[report.endpoints]`: name -> ``{ positive = [...] }``, the classes that make the endpoint
    positive (``referable = { positive = [2, 3, 4] }``: grades 2-4 of DR).

    Classes are 0-based indices, the columns of the stored probabilities. Names are accepted too
    (``positive = ["moderate", "severe"]``), but only where the file fixes ``class_names`` in
    [fixed]: otherwise the names come from the data and the file cannot be checked before a run,
    so a name that matches no class would surface only in the report. Names are turned into
    indices here, so the study records indices either way. Where the file fixes the class count
    (``num_classes`` > 0 or ``class_names``) indices are checked against it here; otherwise
    `study.report.endpoints.check` checks them against the predictions when the report runs.
    An endpoint name names files (``roc_<name>.png``): letters, digits, '_', '.', '+', '-'."""
    if not isinstance(doc, dict):
        raise ValueError('.endpoints must be a table, like { referable = { positive = [2, 3, 4] } }')
    names = _fixed(values, "class_names")
    names = list(names) if isinstance(names, list) and names else None
    count = _fixed(values, "num_classes")
    count = len(names) if names else (count if isinstance(count, int) and not isinstance(count, bool) and count > 0
                                       else None)
    out = []
    for name, spec in doc.items():
        at = f".endpoints.{name}"
        if not _LABEL.match(name):
            raise ValueError(f"{at}: the name must be letters, digits, '_', '.', '+' or '-'")
        if not isinstance(spec, dict):
            raise ValueError(f"{at} must be a table like {{ positive = [2, 3, 4] }}")
        unknown = sorted(set(spec) - ENDPOINT_KEYS)
        if unknown:
            raise ValueError(f"{at}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(ENDPOINT_KEYS))})")
        positive = spec.get("positive")
        if not isinstance(positive, list) or not positive:
            raise ValueError(f"{at}.positive must be a non-empty list of classes, got {positive!r}")
        indices = []
        for cls in positive:
            if isinstance(cls, str):
                if names is None:
                    raise ValueError(f"{at}.positive: class {cls!r} by name needs class_names in [fixed]; "
                                     f"give class indices (0-based) instead")
                if cls not in names:
                    raise ValueError(f"{at}.positive: {cls!r} is not a class ({', '.join(names)})")
                cls = names.index(cls)
            elif isinstance(cls, bool) or not isinstance(cls, int):
                raise ValueError(f"{at}.positive: {cls!r} is neither a class index nor a class name")
            if cls < 0 or (count is not None and cls >= count):
                bound = f"0..{count - 1}" if count is not None else "0 or more"
                raise ValueError(f"{at}.positive: class {cls} is out of range ({bound})")
            if cls in indices:
                raise ValueError(f"{at}.positive names class {cls} twice")
            indices.append(cls)
        if count is not None and len(indices) >= count:
            raise ValueError(f"{at}.positive names all {count} classes: nothing would be negative")
        out.append(Endpoint(name, tuple(indices)))
    return tuple(out)


def _fixed(values: Mapping[str, tuple[Any, ...] | None], name: str) -> Any:
    """A setting's value where the file fixes it (one value), else None."""
    held = values.get(name)
    return held[0] if held is not None and len(held) == 1 else None


def _frozen(labels: Mapping[str, Mapping[str, str]]) -> Mapping[str, Mapping[str, str]]:
    return MappingProxyType({factor: MappingProxyType(dict(named)) for factor, named in labels.items()})
