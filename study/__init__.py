"""`study`: hyperparameter-search and ablation studies for image classifiers on Optuna + PyTorch."""
