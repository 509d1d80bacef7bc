"""The architecture families beyond ResNet that both the model unit tests and the end-to-end training
run name."""

from __future__ import annotations

FAMILIES = ("efficientnet_b0", "convnext_tiny", "mobilenet_v3_small", "regnet_y_400mf")
