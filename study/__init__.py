"""`study`: hyperparameter-search and ablation studies for image classifiers on Optuna + PyTorch.

From Python (a notebook), `from study import load_trials, load_ablation` and the report's tables
(`factor_table`, `cell_table`, `ablation_table`, `importance_table`, `write_report`); see
`study.api`. Importing `study` loads none of pandas, Optuna, scipy or torch: each function imports
what it needs when called, so the CLI does not pay for them at start-up.
"""

from __future__ import annotations

from typing import Any

from study import log as _log  # noqa: F401 - installs the one-line handler of the `study` logger (`study.log`)

__all__ = ["ablation_table", "cell_table", "factor_table", "importance_table", "load_ablation", "load_trials",
           "open_study", "write_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from study import api

        return getattr(api, name)
    raise AttributeError(f"module 'study' has no attribute {name!r}")
