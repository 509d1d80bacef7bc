"""Named studies (one TOML file each in `search_spaces/`) and the objective modules they run."""

from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from objectives import contract
from objectives.errors import InputError
from study.schema1 import SCHEMA1_OBJECTIVES
from study.space import DEFAULT_OBJECTIVE, SearchSpace
from study.space_file import load_space, load_space_text


def named_studies() -> dict[str, Path]:
    """Study name -> its search-space file, for every TOML shipped in `search_spaces`."""
    folder = resources.files("search_spaces")
    files = sorted(folder.iterdir(), key=lambda f: f.name)
    return {Path(f.name).stem: Path(str(f)) for f in files if f.name.endswith(".toml")}


def resolve(name_or_file: str) -> SearchSpace:
    """A named study, or a path to a search-space file of the user's own (named by its stem)."""
    candidate = Path(name_or_file)
    if candidate.suffix == ".toml":
        return load_space(candidate)
    studies = named_studies()
    if name_or_file not in studies:
        raise InputError(f"unknown study {name_or_file!r}; named studies: {', '.join(studies)} "
                         f"(or give a path to a .toml file)")
    return load_space(studies[name_or_file], name_or_file)


def recorded_space(study: Any) -> SearchSpace | None:
    """The search space an Optuna study ran with, from the TOML text it recorded (user attr
    ``space_text``) with its recorded settings and pins: the same space on any machine, whatever
    happened to the file since. None for a study made before studies recorded their TOML."""
    from study.records import StudyRecord

    record = StudyRecord.from_study(study)
    if not record.space_text:
        return None
    path = Path(record.space_file or f"{study.study_name}.toml")
    return with_recorded_settings(load_space_text(record.space_text, path), study)


def with_recorded_settings(space: SearchSpace, study: Any) -> SearchSpace:
    """`space` with the study's recorded [fixed] values (as run: `--set`, [embedded]) and pins."""
    from study.records import StudyRecord

    record = StudyRecord.from_study(study)
    space = space.with_settings(**{k: v for k, v in record.fixed.items() if k in space.fixed})
    for name, value in record.pinned.items():
        space = space.pin(name, value)
    return space


def module_name(objective: str) -> str:
    """The module an objective name means: a module of `objectives` by its bare name (a schema-1
    objective is the image classifier with settings, see `study.schema1`), or
    ``package.module`` as written."""
    if objective in SCHEMA1_OBJECTIVES:
        objective = DEFAULT_OBJECTIVE
    return objective if "." in objective else f"objectives.{objective}"


def objective_module(space: SearchSpace) -> ModuleType:
    """The objective module `space` names in [study].objective, imported and checked against the
    contract (`objectives.contract`); a one-line InputError naming the file otherwise."""
    name = space.study.objective
    target = module_name(name)
    at = f"{space.path}: [study].objective = {name!r}"
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (target == exc.name or target.startswith(f"{exc.name}.")):
            raise InputError(f"{at}: importing {target} failed ({exc})") from None
        raise InputError(f"{at}: no module {target} (a module of your own is named as package.module, importable from "
                         f"the folder the study command runs in or PYTHONPATH)") from None
    except ImportError as exc:
        raise InputError(f"{at}: importing {target} failed ({exc})") from None
    lacking = contract.missing(module)
    if lacking:
        raise InputError(f"{at}: {target} is not an objective module: it lacks {', '.join(lacking)} "
                         f"(see objectives/contract.py)")
    return module
