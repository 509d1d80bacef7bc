"""Reports of a study from the storage alone: factor and cell tables (`frames`), ablation
statistics (`stats`) and their table (`ablation`), importances (`importance`), figures and the
report.md that gathers them (`build`)."""
