"""Reading a search-space file: its TOML parsed and validated into a `study.spaces.space.SearchSpace`,
every problem one line naming file, parameter and problem (`SpaceError`)."""

from __future__ import annotations

import dataclasses
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from objectives import metrics
from study.spaces import report_layout
from study.spaces.report_layout import ReportLayout
from study.spaces.schema1 import SCHEMA1_OBJECTIVES
from study.spaces.space import (
    _BOUND,
    DEFAULT_OBJECTIVE,
    DIRECTIONS,
    EMBEDDED_DATA_KEYS,
    EMBEDDED_STUDY_KEYS,
    PRUNER_FEEDS,
    PRUNERS,
    SAMPLERS,
    SCHEMA,
    SCHEMAS,
    Param,
    SearchSpace,
    SpaceError,
    StudySettings,
)

# the pruner's further keys, and the pruners each applies to (`study.run.samplers.pruner_settings`)
PRUNER_KEYS = {
    "pruner_percentile": ("percentile",),
    "pruner_patience": ("median", "percentile", "catchup", "asha", "hyperband"),
    "pruner_reduction_factor": ("asha", "hyperband"),
    "pruner_min_resource": ("asha", "hyperband"),
    "pruner_feed": ("median", "percentile", "catchup", "asha", "hyperband"),
    "pruner_ema": ("median", "percentile", "catchup", "asha", "hyperband"),
}
STUDY_KEYS = {
    "objective",
    "direction",
    "metric",
    "sampler",
    "pruner",
    "trials",
    "seed",
    "startup_trials",
    "warmup_epochs",
    "sampler_startup_trials",
    "description",
    *PRUNER_KEYS,
}
SCHEMA1_KEY = "schema1_objective"  # a schema-2 file `study migrate` wrote: the schema-1 objective it goes on with
RANGE_KEYS = {"low", "high", "log", "step", "when"}
CHOICE_KEYS = {"choices", "when"}


def load_space(path: Path, name: str | None = None) -> SearchSpace:
    """Parse and validate one search-space file (schema 2; a schema-1 file is an error naming
    `study migrate`)."""
    return load_space_text(read_space_file(path), path, name)


def read_space_file(path: Path) -> str:
    """The text of a search-space file; a one-line SpaceError where it cannot be read."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such search-space file") from None
    except IsADirectoryError:
        raise SpaceError(f"{path}: a directory, not a search-space file") from None
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read the search-space file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise SpaceError(f"{path}: not valid TOML ({exc})") from None


def load_space_text(text: str, path: Path, name: str | None = None, *, direction: str | None = None,
                    stored: bool = False) -> SearchSpace:
    """Parse and validate a search space from its TOML text; `path` names it in messages (and
    is the file it came from, or the one a stored study recorded).

    `stored`: the text a study recorded (user attr ``space_text``), which may be schema 1 (a file
    without ``schema``): the studies made from such files re-read it to resume by name and to
    ablate. A file of schema 1 is refused with the command that converts it (`schema1_error`).

    `direction` is given for a stored space: the direction its study actually ran with. Then the
    metric is not checked against the registry and the direction is the study's, so a study made
    before the registry (e.g. ``metric = "loss"`` under the old default ``maximize``) reports and
    resumes as it ran; only a new study gets the checks of `_check_metric`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{path}: not valid TOML ({exc})") from None
    where = str(path)
    schema = doc.pop("schema", 1 if stored else None)
    if not stored and (schema is None or (type(schema) is int and schema == 1)):
        raise schema1_error(path)
    if type(schema) is not int or schema not in SCHEMAS:
        raise SpaceError(f"{where}: schema = {schema!r} is unknown; this version reads schema {SCHEMA}")
    tables = {"study", "fixed", "space", "embedded", *(("report",) if schema >= 2 else ())}
    if schema == 1 and "report" in doc:
        raise SpaceError(f"{where}: [report] needs schema = 2 at the top of the file")
    _only(doc, tables, where, "top-level table")
    study_doc = _table(doc, "study", where)
    made_by = _schema1_objective(study_doc, schema, where)
    _only(study_doc, STUDY_KEYS, where, "[study] key")
    if schema == 1 and "objective" not in study_doc:
        raise SpaceError(f"{where}: [study] needs objective = \"<module in objectives/>\"")
    if made_by is not None:
        study_doc = {**study_doc, "objective": made_by}
    named = study_doc.get("objective")
    legacy = SCHEMA1_OBJECTIVES.get(named) if (schema == 1 or made_by) and named is not None else None
    if schema >= 2 and not made_by and study_doc.get("objective") in SCHEMA1_OBJECTIVES:
        old = study_doc["objective"]
        raise SpaceError(f"{where}: [study].objective = {old!r} is a schema-1 objective; with schema = {schema} write "
                         f"objective = \"{DEFAULT_OBJECTIVE}\" and {old}'s settings (see search_spaces/{old}.toml)")
    try:
        study = StudySettings(**study_doc)
    except TypeError as exc:
        raise SpaceError(f"{where}: [study]: {exc}") from None
    if not isinstance(study.objective, str) or not study.objective:
        raise SpaceError(f"{where}: [study].objective must be a module name, got {study.objective!r}")
    if direction is not None:
        study = dataclasses.replace(study, direction=direction)
    else:
        study = _check_metric(study, "direction" in study_doc, where)
    for key, allowed in (("direction", DIRECTIONS), ("sampler", SAMPLERS), ("pruner", PRUNERS)):
        if getattr(study, key) not in allowed:
            raise SpaceError(f"{where}: [study].{key} = {getattr(study, key)!r}; expected one of {', '.join(allowed)}")
    for key in ("trials", "seed", "startup_trials", "warmup_epochs", "sampler_startup_trials"):
        value = getattr(study, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SpaceError(f"{where}: [study].{key} must be a non-negative integer, got {value!r}")
    study = _check_pruner(study, study_doc, where)
    fixed = _table(doc, "fixed", where)
    space_doc = _table(doc, "space", where)
    params: list[Param] = []
    for pname, spec in space_doc.items():
        if pname in fixed:
            raise SpaceError(f"{where}: {pname}: both in [fixed] and [space]")
        params.append(_parse_param(pname, spec, where, fixed, params))
    embedded = _table(doc, "embedded", where)
    for key in EMBEDDED_STUDY_KEYS & embedded.keys():
        value = embedded[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SpaceError(f"{where}: [embedded].{key} must be a non-negative integer, got {value!r}")
    for key in embedded:
        if key not in EMBEDDED_DATA_KEYS and key not in fixed and key not in space_doc:
            raise SpaceError(
                f"{where}: [embedded].{key}: neither a dataset setting ({', '.join(sorted(EMBEDDED_DATA_KEYS))}) "
                f"nor in [fixed] or [space]"
            )
        param = next((p for p in params if p.name == key), None)
        if param is not None and not param.admits(embedded[key], {**fixed, **embedded}):
            raise SpaceError(f"{where}: [embedded].{key} = {embedded[key]!r}: outside the declared [space] values")
    report = ReportLayout(endpoints=legacy.endpoints) if legacy is not None else ReportLayout()
    if "report" in doc:
        values = {**{name: (value,) for name, value in fixed.items()}, **{p.name: p.choices for p in params}}
        try:
            report = report_layout.parse(_table(doc, "report", where), values)
        except ValueError as exc:
            raise SpaceError(f"{where}: [report]{exc}") from None
    if legacy is not None:
        embedded = {"dataset": legacy.embedded_dataset, **embedded}
    return SearchSpace(
        name=name or path.stem,
        path=path,
        study=study,
        fixed=MappingProxyType(dict(fixed)),
        params=tuple(params),
        embedded=MappingProxyType(dict(embedded)),
        schema=schema,
        defaults=legacy.settings if legacy is not None else MappingProxyType({}),
        report=report,
        text=text,
    )


def schema1_error(path: Path) -> SpaceError:
    """The one line a schema-1 file (no ``schema = 2`` line) gets: the command that converts it."""
    return SpaceError(f"{path}: a schema-1 search-space file (no `schema = {SCHEMA}` line); convert it with "
                      f"`python -m study migrate {shlex.quote(str(path))}` (the same study: same fingerprint)")


def _schema1_objective(study_doc: dict[str, Any], schema: int, where: str) -> str | None:
    """[study].schema1_objective of a file `study migrate` wrote, taken out of `study_doc`: the
    schema-1 objective (`study.spaces.schema1`) whose study the file goes on with. Its settings lie under
    the file's (the file spells them out) and it stands for the objective in the fingerprint, so
    the study made from the schema-1 file resumes from this one; None for any other file."""
    if SCHEMA1_KEY not in study_doc:
        return None
    made_by = study_doc.pop(SCHEMA1_KEY)
    if schema < 2:
        raise SpaceError(f"{where}: [study].{SCHEMA1_KEY} needs schema = 2 at the top of the file")
    if made_by not in SCHEMA1_OBJECTIVES:
        raise SpaceError(f"{where}: [study].{SCHEMA1_KEY} = {made_by!r}; expected one of "
                         f"{', '.join(SCHEMA1_OBJECTIVES)}")
    if study_doc.get("objective", DEFAULT_OBJECTIVE) != DEFAULT_OBJECTIVE:
        raise SpaceError(f"{where}: [study].{SCHEMA1_KEY} runs objective = \"{DEFAULT_OBJECTIVE}\", not "
                         f"{study_doc['objective']!r}")
    study_doc.pop("objective", None)
    return made_by


def _parse_param(name: str, spec: Any, where: str, fixed: Mapping[str, Any], earlier: list[Param]) -> Param:
    at = f"{where}: [space].{name}"
    if not isinstance(spec, dict):
        raise SpaceError(f"{at}: expected a table like {{choices = [...]}} or {{low = .., high = ..}}")
    when = spec.get("when", {})
    if not isinstance(when, dict):
        raise SpaceError(f"{at}: when must be a table like {{other = value}}")
    known = {p.name: p for p in earlier}
    for other, value in when.items():
        if other not in known and other not in fixed:
            raise SpaceError(f"{at}: when names unknown parameter {other!r} (it must come earlier in the file)")
        allowed = known[other].choices if other in known else None
        if allowed is not None and value not in allowed:
            raise SpaceError(f"{at}: when {other} = {value!r}, but {other} takes only {list(allowed)}")
    conditions = tuple(when.items())
    if "choices" in spec:
        _only(spec, CHOICE_KEYS, at, "key")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{at}: choices must be a non-empty list")
        return Param(name, choices=tuple(choices), when=conditions)
    _only(spec, RANGE_KEYS, at, "key")
    if "low" not in spec or "high" not in spec:
        raise SpaceError(f"{at}: needs choices, or both low and high")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    context = {**fixed, **{p.name: p.choices[0] for p in earlier if p.choices}}
    for bound in (low, high):
        if isinstance(bound, str):
            match = _BOUND.match(bound)
            if not match or match.group(1) not in fixed:
                raise SpaceError(f"{at}: bound {bound!r} must be a number or '<fixed setting> +/- <int>'")
        elif isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise SpaceError(f"{at}: bound {bound!r} is not a number")
    if not isinstance(log, bool):
        raise SpaceError(f"{at}: log must be true or false")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise SpaceError(f"{at}: step must be a positive number")
    param = Param(name, low=low, high=high, log=log, step=step, when=conditions)
    lo, hi = param.bounds(context)
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)):
        raise SpaceError(f"{at}: bounds must resolve to numbers")
    if lo > hi:
        raise SpaceError(f"{at}: low {lo} > high {hi}")
    if log and lo <= 0:
        raise SpaceError(f"{at}: a log range needs low > 0, got {lo}")
    if log and step is not None:
        raise SpaceError(f"{at}: log and step cannot be combined")
    return param



def _check_pruner(study: StudySettings, given: Mapping[str, Any], where: str) -> StudySettings:
    """`study` with its pruner keys checked (each a one-line error) and its fractions as floats (so
    ``pruner_percentile = 30`` and ``30.0`` give one fingerprint). A key the chosen pruner does not
    use is refused: it would be recorded and fingerprinted while changing nothing."""
    def number(key: str, low: float, high: float, closed_high: bool) -> float:
        value = getattr(study, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                low < value < high or (closed_high and value == high)):
            bound = f"{high:g}]" if closed_high else f"{high:g})"
            raise SpaceError(f"{where}: [study].{key} must be a number in ({low:g}, {bound}, got {value!r}")
        return float(value)

    def integer(key: str, low: int) -> None:
        value = getattr(study, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise SpaceError(f"{where}: [study].{key} must be an integer >= {low}, got {value!r}")

    percentile = number("pruner_percentile", 0.0, 100.0, closed_high=False)
    ema = number("pruner_ema", 0.0, 1.0, closed_high=True)
    integer("pruner_patience", 0)
    integer("pruner_reduction_factor", 2)
    integer("pruner_min_resource", 1)
    if study.pruner_feed not in PRUNER_FEEDS:
        raise SpaceError(f"{where}: [study].pruner_feed = {study.pruner_feed!r}; expected one of "
                         f"{', '.join(PRUNER_FEEDS)}")
    for key, pruners in PRUNER_KEYS.items():
        if key in given and study.pruner in PRUNERS and study.pruner not in pruners:
            raise SpaceError(f"{where}: [study].{key} applies to pruner = {' or '.join(map(repr, pruners))}, "
                             f"not {study.pruner!r}: remove it")
    if "pruner_ema" in given and study.pruner_feed != "ema":
        raise SpaceError(f"{where}: [study].pruner_ema applies to pruner_feed = \"ema\", not {study.pruner_feed!r}")
    return dataclasses.replace(study, pruner_percentile=percentile, pruner_ema=ema)


def _check_metric(study: StudySettings, explicit: bool, where: str) -> StudySettings:
    """`study` with its metric checked against `objectives.metrics.REGISTRY` and its direction
    defaulted from the metric where the TOML omits it; an explicit direction that contradicts the
    metric is an error (maximising the loss keeps the worst epoch and prunes the good trials)."""
    try:
        found = metrics.metric(study.metric)
    except (ValueError, TypeError):
        raise SpaceError(f"{where}: [study].metric = {study.metric!r} is unknown; known: "
                         f"{metrics.known()}") from None
    if not explicit:
        return dataclasses.replace(study, direction=found.direction)
    if study.direction in DIRECTIONS and study.direction != found.direction:
        raise SpaceError(f"{where}: [study].direction = {study.direction!r} contradicts metric = {study.metric!r} "
                         f"({'higher' if found.higher_is_better else 'lower'} is better): write "
                         f"direction = {found.direction!r} or leave it out")
    return study


def _table(doc: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise SpaceError(f"{where}: [{key}] must be a table")
    return value


def _only(table: Mapping[str, Any], allowed: set[str], where: str, what: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpaceError(f"{where}: unknown {what} {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
