"""What one trial does: data, models, losses, the training loop and the named objectives.

Plain PyTorch. Nothing here imports the CLI or knows about Optuna: an objective receives a frozen
config and a `report(epoch, metrics)` callback and returns its final metrics.
"""
