"""What one trial does: data, models, losses, the training loop and the image-classification objective.

Plain PyTorch. Nothing here imports the CLI or knows about Optuna: an objective receives a frozen
config and a `report(epoch, metrics)` callback and returns its final metrics (`objectives.contract`).
"""
