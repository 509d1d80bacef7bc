"""The page view of the report's tables: pandas-made Markdown and LaTeX, one precision per metric,
numbers right-aligned, at most 8 columns with the test metrics first; the CSV keeps every column."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from objectives.metrics import TABLE_METRICS
from study import tables
from study.report.frames import page_view


def _levels() -> pd.DataFrame:
    """A cell table as `cell_table` builds it: three keys (the DR lab's cells) and the level stats."""
    rows = []
    for i, (arch, pretrained, loss) in enumerate([("resnet18", "True", "ce"), ("resnet50", "False", "focal")]):
        row = {"arch": arch, "pretrained": pretrained, "loss": loss, "n": 4 + i, "pruned": i, "failed": 1 - i,
               "best": 0.61234 - i / 10, "mean": 0.5, "std": np.nan if i else 0.03013, "best_trial": 7 + i}
        for split in ("val", "test"):
            row.update({f"{split}_{m}": 0.4286 + i / 100 for m in TABLE_METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def test_metrics_have_one_precision_and_missing_is_a_dash():
    assert [tables.metric(v) for v in (0.4286, 0.63, 0.03013, 1.0)] == ["0.429", "0.630", "0.030", "1.000"]
    assert tables.metric(0.0123, signed=True) == "+0.012" and tables.metric(-0.5, signed=True) == "-0.500"
    assert tables.metric(float("nan")) == tables.metric(None) == "–"
    assert tables.mean_std(0.5, float("nan")) == "0.500" and tables.mean_std(0.5, 0.0301) == "0.500 ± 0.030"
    assert tables.cell(0.00443) == "0.00443"  # a parameter value keeps its significant digits


def test_cell_view_leads_with_the_test_metric_in_7_columns():
    view = page_view(_levels(), "kappa")
    assert list(view.columns) == ["arch", "pretrained", "loss", "n (pr., f.)", "test kappa", "best val (#)",
                                  "val mean ± std"]
    assert view.iloc[0].tolist() == ["resnet18", "True", "ce", "4 (0, 1)", "0.429", "0.612 (#7)", "0.500 ± 0.030"]
    assert view.iloc[1]["val mean ± std"] == "0.500"  # n = 1 has no std
    assert list(page_view(_levels(), "accuracy").columns)[4] == "test acc"  # an accuracy study: test accuracy


def test_markdown_right_aligns_numbers_only():
    view = page_view(_levels(), "kappa")
    header, rule, first, _ = tables.markdown(view).splitlines()
    cells = [c.strip() for c in rule.strip("|").split("|")]
    assert cells[:3] == [":" + "-" * (len(c) - 1) for c in cells[:3]]  # text columns: left
    assert all(c.endswith(":") and not c.startswith(":") for c in cells[3:])  # numbers: right
    assert "0.612 (#7)" in first and "| resnet18 " in first


def test_write_keeps_every_column_in_the_csv_and_captions_the_page(tmp_path: Path):
    frame = _levels()
    view = page_view(frame, "kappa")
    written = tables.write(frame, view, tmp_path / "cells", tables.FORMATS, "Best 50% & more")
    assert [p.suffix for p in written] == [".md", ".csv", ".tex"]
    back = pd.read_csv(tmp_path / "cells.csv")
    assert list(back.columns) == list(frame.columns) and np.isclose(back.best[0], 0.61234)
    tex = (tmp_path / "cells.tex").read_text()
    assert "\\begin{tabular}{lllrrrr}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert "\\caption{Best 50\\% \\& more}" in tex and "\\label{tab:cells}" in tex
    assert "0.500 $\\pm$ 0.030" in tex and "(\\#7)" in tex
    assert (tmp_path / "cells.md").read_text().startswith("Best 50% & more\n\n| arch")


def test_the_latex_compiles_with_only_booktabs_and_fits_the_page(tmp_path: Path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (.ci/run installs texlive-latex-base and -recommended)")
    frame = _levels()
    caption = "Δ kappa ≥ 0 -> 50% of {cells} & x_y ~ ^"
    tables.write(frame, page_view(frame, "kappa"), tmp_path / "cells", ["tex"], caption)
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage{graphicx}"
                                      "\\begin{document}\\input{cells.tex}\\end{document}\n")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log, log[-3000:]  # the DR cell table fits the text width of a plain article
