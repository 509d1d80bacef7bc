"""The dashboard room: optuna-dashboard served on the study's storage (`server`), each trial's page
of figures and note stored as artifacts while it trains (`trial_pages`), and the child process that
draws those figures off the training thread (`renderer`). Importing it loads no torch."""
