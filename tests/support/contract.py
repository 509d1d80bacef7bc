"""The toy study's TOML, which both the contract's unit tests and its end-to-end run (run, ablate,
report) use."""

from __future__ import annotations

TOY_TOML = """schema = 2
[study]
objective = "tests.toy_objective"
metric = "accuracy"
sampler = "random"
pruner = "hyperband"
trials = 4
seed = 3
[fixed]
rounds = 3
points = 80
[space]
rate = { low = 0.05, high = 2.0, log = true }
spread = { choices = [0.5, 1.5] }
[embedded]
train_images = 20
test_images = 10
"""
