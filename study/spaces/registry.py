"""Named studies (one TOML file each in `search_spaces/`) and the objective modules they run."""

from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path
from typing import Any

from objectives import contract
from objectives.errors import InputError
from objectives.metrics import REGISTRY
from study.spaces.schema1 import SCHEMA1_OBJECTIVES
from study.spaces.space import DEFAULT_OBJECTIVE, SearchSpace
from study.spaces.space_file import load_space, load_space_text


def named_studies() -> dict[str, Path]:
    """Study name -> its search-space file, for every TOML shipped in `search_spaces`."""
    folder = resources.files("search_spaces")
    files = sorted(folder.iterdir(), key=lambda f: f.name)
    return {Path(f.name).stem: Path(str(f)) for f in files if f.name.endswith(".toml")}


# The objectives that ship with the tool: the only ones a space read from a storage may name
# without the user naming it too (`trusted_objective`). Schema-1 names run the image classifier
# (the studies made from schema-1 files recorded them, and migrated files keep them).
BUILTIN_OBJECTIVES = frozenset({DEFAULT_OBJECTIVE, *SCHEMA1_OBJECTIVES})


class UnknownStudy(InputError):
    """`resolve` found neither a named study nor a .toml path: the caller may look in a storage.
    Any other error of a file the user named (its TOML, its schema) is the file's own and is shown."""


def resolve(name_or_file: str) -> SearchSpace:
    """A named study, or a path to a search-space file of the user's own (named by its stem)."""
    candidate = Path(name_or_file)
    if candidate.suffix == ".toml":
        return load_space(candidate)
    studies = named_studies()
    if name_or_file not in studies:
        raise UnknownStudy(f"unknown study {name_or_file!r}; named studies: {', '.join(studies)} "
                           f"(or give a path to a .toml file)")
    return load_space(studies[name_or_file], name_or_file)


def trusted_objective(objective: str, study_name: str, allowed: str | None) -> None:
    """Refuse, before anything is imported, an objective that a stored study names unless it is
    built in or the user named the same module (`--objective`, or a TOML file of theirs).

    A storage may be shared: whoever can write to it can put any dotted name in a study's record,
    and importing a module runs its top-level code. So what a storage says decides nothing about
    code: the allow-list is the shipped objectives plus what the user typed."""
    if objective in BUILTIN_OBJECTIVES or (allowed is not None and objective == allowed):
        return
    shown = objective if objective.isprintable() and len(objective) <= 200 else repr(objective[:200])
    mismatch = f" (--objective {allowed} is another module)" if allowed is not None else ""
    raise InputError(f"study {study_name}: its stored objective {shown!r} is not a built-in objective and is not "
                     f"imported from what a storage says{mismatch}; if you trust it, run with --objective {shown} "
                     f"or pass the study's .toml file")


def recorded_space(study: Any, *, objective: str | None = None) -> SearchSpace | None:
    """The search space an Optuna study ran with, from the TOML text it recorded (user attr
    ``space_text``) with its recorded settings and pins: the same space on any machine, whatever
    happened to the file since. None for a study made before studies recorded their TOML.

    The recorded objective must pass `trusted_objective` (`objective`: the module the user named),
    and the space is named after the study, not the recorded file path: both come from a storage
    that anyone sharing it can write."""
    from study.records import StudyRecord

    record = StudyRecord.from_study(study)
    if not record.space_text:
        return None
    space = load_space_text(record.space_text, stored_label(study.study_name), study.study_name,
                            direction=stored_direction(study), stored=True)
    trusted_objective(space.study.objective, study.study_name, objective)
    return with_recorded_settings(space, study)


def stored_direction(study: Any) -> str | None:
    """The direction a stored study ran with ("maximize"/"minimize"), None when it has none (not
    a single-objective Optuna study): the stored TOML is re-read with it, never re-checked."""
    try:
        return "maximize" if study.direction.name == "MAXIMIZE" else "minimize"
    except (AttributeError, RuntimeError):
        return None


def stored_label(study_name: str) -> Path:
    """How messages name a space read from a storage: the study, never a local path it recorded."""
    return Path(f"study {study_name!r} (stored space)")


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
    objective is the image classifier with settings, see `study.spaces.schema1`), or
    ``package.module`` as written."""
    if objective in SCHEMA1_OBJECTIVES:
        objective = DEFAULT_OBJECTIVE
    return objective if "." in objective else f"objectives.{objective}"


def objective_module(space: SearchSpace) -> contract.Objective:
    """The objective module `space` names in [study].objective, imported and checked against the
    contract (`objectives.contract.objective`: the module itself, or one of the contract's first
    form with its defaults), reporting the study's metric; a one-line InputError naming the file
    otherwise."""
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
    try:
        found = contract.objective(module)
    except TypeError as exc:
        raise InputError(f"{at}: {target} is not an objective module: {exc} (see objectives/contract.py)") from None
    metric = space.study.metric
    if metric in REGISTRY and metric not in found.METRICS:  # an unregistered one is an old study's: as it ran
        raise InputError(f"{at}: {target} does not report metric {metric!r} (it reports {', '.join(found.METRICS)}); "
                         f"set [study].metric to one of them")
    return found
