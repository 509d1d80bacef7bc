"""One TOML file per named study; read with `study.spaces.space_file.load_space` (a package so the files install)."""
