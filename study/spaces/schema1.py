"""Schema 1, the search-space format before ``schema = 2``: its objectives as settings.

Schema 1 named two objective modules, `dr_focal` and `cifar_loss`, each a recipe of what is now
the one image classifier. A schema-1 file that names one runs `objectives.image_classifier` with
that recipe's settings underneath its own [fixed] (so a parameter a condition leaves unsampled
takes the old default, as it did), uses its embedded dataset, and keeps its objective as written,
so the studies it made keep their fingerprint. The table is frozen: it is what those modules did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from study.spaces.report_layout import Endpoint

REFERABLE_DR = Endpoint("referable", (2, 3, 4))  # moderate or worse: the screening endpoint of DR papers

@dataclass(frozen=True)
class Schema1Objective:
    """A schema-1 objective: its embedded dataset, and every image-classifier setting as its
    `Config` defaulted it or its code implied it (classes, flips, crops, schedule)."""

    embedded_dataset: str
    settings: Mapping[str, Any]
    endpoints: tuple[Endpoint, ...] = ()  # the report's binary endpoints (schema 1 had no [report])


SCHEMA1_OBJECTIVES: Mapping[str, Schema1Objective] = MappingProxyType({
    "dr_focal": Schema1Objective("synthetic-fundus", MappingProxyType({
        "image_size": 512, "val_fraction": 0.2, "split_seed": 0, "group_by": "auto", "norm_mean": (), "norm_std": (),
        "num_classes": 5, "class_names": (),
        "arch": "resnet18", "pretrained": False, "fe_epochs": 0, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
        "epochs": 15, "batch_size": 32, "step_size": 0, "step_gamma": 0.1, "loss": "ce", "focal_gamma": 0.0,
        "focal_alpha": "none", "hflip": True, "vflip": True, "crop_padding": 0, "seed": 0,
    }), (REFERABLE_DR,)),
    "cifar_loss": Schema1Objective("digits", MappingProxyType({
        "image_size": 32, "val_fraction": 0.1, "split_seed": 0, "group_by": "auto", "norm_mean": (), "norm_std": (),
        "num_classes": 0, "class_names": (),
        "arch": "convnet", "pretrained": False, "fe_epochs": 0, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0,
        "epochs": 30, "batch_size": 128, "step_size": 5, "step_gamma": 0.5, "loss": "ce", "focal_gamma": 0.0,
        "focal_alpha": "none", "hflip": True, "vflip": False, "crop_padding": 4, "seed": 0,
    })),
})
