"""Named studies (one TOML file each in `search_spaces/`) and the objective modules they run."""

from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path
from types import ModuleType

from objectives.errors import InputError
from study.space import SearchSpace, load_space

OBJECTIVES = {"dr_focal": "objectives.dr_focal", "cifar_loss": "objectives.cifar_loss"}


def named_studies() -> dict[str, Path]:
    """Study name -> its search-space file, for every TOML shipped in `search_spaces`."""
    folder = resources.files("search_spaces")
    return {Path(f.name).stem: Path(str(f)) for f in sorted(folder.iterdir(), key=lambda f: f.name) if f.name.endswith(".toml")}


def resolve(name_or_file: str) -> SearchSpace:
    """A named study, or a path to a search-space file of the user's own (named by its stem)."""
    candidate = Path(name_or_file)
    if candidate.suffix == ".toml":
        return load_space(candidate)
    studies = named_studies()
    if name_or_file not in studies:
        raise InputError(f"unknown study {name_or_file!r}; named studies: {', '.join(studies)} (or give a path to a .toml file)")
    return load_space(studies[name_or_file], name_or_file)


def objective_module(name: str) -> ModuleType:
    """The objective module a search space names in [study].objective."""
    if name not in OBJECTIVES:
        raise InputError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    return importlib.import_module(OBJECTIVES[name])
