"""Running trials: options (`options`), preparation and checks (`prepare`, `data`), sampler and
pruner from the TOML (`samplers`), the loop (`loop`), the per-trial recorder (`trainer`), the
pruning reporter (`reporter`), the replay of pruning rules over recorded curves (`replay`),
checkpoints (`checkpoints`), failure reasons (`failures`), worker processes (`workers`,
`worker`), console output (`output`) and the session `run` and `ablate` share (`session`).
Importing this package imports no torch, so a worker can choose its GPU first.
"""
