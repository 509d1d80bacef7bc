"""`study migrate FILE [-o OUT]`: a schema-1 search-space file rewritten as schema 2, the same study.

A schema-1 file (no ``schema`` line) is refused by every other command; this writes its schema-2
form with the same fingerprint, so a study made from the old file resumes from the new one. A
file that named a schema-1 objective (``dr_focal``, ``cifar_loss``) gets every setting that
objective implied spelled out in [fixed], its embedded dataset in [embedded], its endpoints in
[report], and ``schema1_objective`` in [study], which keeps the study's fingerprint. Comments of
the old file are not carried over (TOML parsers drop them).
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from objectives.errors import InputError
from study.spaces import registry
from study.spaces.schema1 import SCHEMA1_OBJECTIVES
from study.spaces.space import SCHEMA, SearchSpace, SpaceError, config_defaults
from study.spaces.space_file import SCHEMA1_KEY, load_space_text, read_space_file

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the schema-1 search-space file (.toml)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="where to write the schema-2 file (default: FILE itself, the old one kept as "
                             "FILE.schema1); its name is the study's, so keep the stem to resume the study")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output (or FILE.schema1)")


def run(args: argparse.Namespace) -> int:
    from study.run.output import Output

    source: Path = args.file
    text = read_space_file(source)
    migrated = to_schema2(text, source)
    out = Output()
    if args.output is None:
        keep = source.with_name(source.name + ".schema1")
        _refuse_existing(keep, args.force)
        keep.write_text(text)
        source.write_text(migrated)
        out.line(f"{source}: rewritten as schema {SCHEMA} (the same study: same fingerprint); the old file is {keep}")
    else:
        _refuse_existing(args.output, args.force)
        args.output.write_text(migrated)
        out.line(f"{args.output}: schema {SCHEMA} form of {source} (the same study: same fingerprint)")
    return 0


def to_schema2(text: str, path: Path) -> str:
    """The schema-2 text of the schema-1 search space `text` (read from `path`), checked to parse
    as schema 2 and to give the same fingerprint; a one-line SpaceError where it cannot."""
    old = load_space_text(text, path, stored=True)  # every check a schema-1 file had
    if old.schema != 1:
        raise SpaceError(f"{path}: already schema {old.schema}: nothing to migrate")
    doc = tomllib.loads(text)
    legacy = SCHEMA1_OBJECTIVES.get(old.study.objective)
    study = dict(doc.get("study", {}))
    fixed = dict(doc.get("fixed", {}))
    space = dict(doc.get("space", {}))
    embedded = dict(doc.get("embedded", {}))
    lines = [f"# {path.name} in schema {SCHEMA}, written by `python -m study migrate` (its comments are not kept)",
             f"schema = {SCHEMA}", "", "[study]"]
    implied: dict[str, Any] = {}
    report: dict[str, Any] = {}
    if legacy is not None:
        lines.append(f'{SCHEMA1_KEY} = {_value(study.pop("objective"))}  # the schema-1 objective the study was made '
                     f'with: keeps its fingerprint')
        implied = {k: v for k, v in legacy.settings.items() if k not in fixed and k not in space}
        embedded = {"dataset": legacy.embedded_dataset, **embedded}
        report = {"endpoints": {e.name: {"positive": list(e.positive)} for e in legacy.endpoints}}
    lines += _pairs(study)
    lines += ["", "[fixed]", *_pairs(fixed)]
    if implied:
        lines += [f"# the settings schema-1 objective {old.study.objective} implied", *_pairs(implied)]
    lines += ["", "[space]", *_pairs(space)]
    if embedded:
        lines += ["", "[embedded]", *_pairs(embedded)]
    if report.get("endpoints"):
        lines += ["", "[report.endpoints]", *_pairs(report["endpoints"])]
    migrated = "\n".join(lines) + "\n"
    new = load_space_text(migrated, path)
    defaults = _config_defaults(new)
    if new.fingerprint(defaults) != old.fingerprint(defaults):  # a bug of this function, never the user's
        raise InputError(f"{path}: its schema-{SCHEMA} form would change the study's fingerprint; not migrated")
    return migrated


def _config_defaults(space: SearchSpace) -> Mapping[str, Any]:
    """The defaults of the objective's config that `run` fingerprints the space against."""
    return config_defaults(registry.objective_module(space).Config)


def _refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise InputError(f"{path} exists; pass --force to overwrite it")


def _pairs(table: Mapping[str, Any]) -> list[str]:
    return [f"{_key(k)} = {_value(v)}" for k, v in table.items()]


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any) -> str:
    """`value` (as `tomllib` reads it) written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # floats: 0.0005, 1e-05, inf, nan are all TOML
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise SpaceError(f"cannot write {value!r} ({type(value).__name__}) as TOML")
