"""One TOML file per named study; read with `study.space.load_space` (a package so the files install)."""
