"""Search spaces: the TOML files (`space_file`), the pinned and validated `SearchSpace` (`space`), the
named studies and objectives (`registry`), the report's endpoints and cells (`report_layout`), and the
schema-1 recipes old stored studies still re-parse (`schema1`). Nothing here imports torch, so
`list`, `report` and the dashboard stay quick."""
