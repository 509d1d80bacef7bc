"""Tables as Markdown, CSV and LaTeX (booktabs), from one pandas DataFrame.

Own small writers instead of pandas' `to_markdown`/`to_latex`, which need tabulate and jinja2:
the tables here are small and plain, and the LaTeX must compile with only booktabs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

FORMATS = ("md", "csv", "tex")
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}"}  # plain < > print as ¡ ¿ in LaTeX's default font encoding


def cell(value: object, digits: int = 4) -> str:
    """A value as text: floats to `digits` significant places, NaN/None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(cell(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def latex(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table environment; ± becomes $\\pm$, -> an arrow."""
    def esc(text: str) -> str:
        out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text.replace("->", "→"))
        for plain, math in (("±", r"$\pm$"), ("–", "--"), ("×", r"$\times$"), ("Δ", r"$\Delta$"), ("→", r"$\to$")):
            out = out.replace(plain, math)
        return out

    spec = "l" * len(frame.columns)
    lines = [
        r"\begin{table}[ht]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
        " & ".join(esc(str(c)) for c in frame.columns) + r" \\", r"\midrule",
        *(" & ".join(esc(cell(v)) for v in row) + r" \\" for row in frame.itertuples(index=False)),
        r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(caption)}}}", rf"\label{{{label}}}", r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def write(frame: pd.DataFrame, display: pd.DataFrame, stem: Path, formats: Sequence[str], caption: str) -> list[Path]:
    """`stem`.csv from the raw numbers (reads back with pandas to the same values); .md and .tex
    from `display`, the human-formatted version (mean ± std and such)."""
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "md":
            path.write_text(f"{caption}\n\n{markdown(display)}")
        else:
            path.write_text(latex(display, caption, f"tab:{stem.name}"))
        written.append(path)
    return written
