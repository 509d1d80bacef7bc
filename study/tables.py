"""Tables as Markdown, CSV and LaTeX (booktabs), written by pandas from one DataFrame.

The CSV holds the raw numbers and every column; Markdown and LaTeX hold the page view a caller
builds (`metric` formats every metric at one precision, at most ~8 headline columns), with
number columns right-aligned: `DataFrame.to_markdown` (tabulate) and `Styler.to_latex` (jinja2).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import SupportsFloat

import pandas as pd

FORMATS = ("md", "csv", "tex")
DIGITS = 3  # every metric on the page: kappa, accuracy, F1 and their differences
DASH = "–"  # a missing number
PAGE_FIT = "\\small\n\\setlength{\\tabcolsep}{4pt}\n"  # inside the table group: the document's other tables keep theirs
FIT_OPEN = "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n"  # shrink only a wide one
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}"}  # plain < > print as ¡ ¿ in LaTeX's default encoding
_LATEX_SYMBOLS = (("±", r"$\pm$"), ("–", "--"), ("×", r"$\times$"), ("Δ", r"$\Delta$"), ("→", r"$\to$"),
                  ("≥", r"$\geq$"), ("≤", r"$\leq$"))
_NUMBER = re.compile(r"^[+\-−]?(\d|\.\d|inf|nan)", re.IGNORECASE)  # a cell that starts like a number
_NUMBER_WORDS = {"reference", "n/a"}  # text that stands in a number column (the baseline's delta)


def cell(value: object, digits: int = 4) -> str:
    """A parameter value as text (a learning rate needs significant digits, not decimals): floats
    to `digits` significant places, NaN/None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def metric(value: SupportsFloat | None, signed: bool = False) -> str:
    """A metric (or a difference of metrics) at the page's one precision, NaN/None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value):
        return DASH
    return f"{float(value):+.{DIGITS}f}" if signed else f"{float(value):.{DIGITS}f}"


def mean_std(mean: float, std: float) -> str:
    """`mean ± std` at the page's precision; the mean alone where the std is undefined (n = 1)."""
    return metric(mean) if pd.isna(std) else f"{metric(mean)} ± {metric(std)}"


def numeric_columns(frame: pd.DataFrame) -> list[bool]:
    """Per column: True where every non-missing cell is (or starts like) a number, so it is
    right-aligned; text columns (names, levels, notes) stay left."""
    flags = []
    for column in frame.columns:
        values = [v for v in frame[column]
                  if not (v is None or (isinstance(v, float) and math.isnan(v)) or v == DASH or v in _NUMBER_WORDS)]
        flags.append(bool(values) and all(isinstance(v, (int, float)) or bool(_NUMBER.match(str(v))) for v in values))
    return flags


def markdown(frame: pd.DataFrame) -> str:
    """A pipe table: the cells as they are (a caller formats them), numbers right-aligned."""
    text = frame.map(lambda v: DASH if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    align = ["right" if numeric else "left" for numeric in numeric_columns(frame)]
    return text.to_markdown(index=False, tablefmt="pipe", colalign=align, disable_numparse=True) + "\n"


def latex_escape(text: str) -> str:
    """Plain text as LaTeX that pdflatex compiles with only booktabs: specials escaped, the
    symbols the tables use (±, Δ, –, ×, →) in math mode or as dashes."""
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text.replace("->", "→"))
    out = out.replace("--", "-{}-")  # `--retune` stays two hyphens, not an en dash
    for plain, latex_text in _LATEX_SYMBOLS:
        out = out.replace(plain, latex_text)
    return out


STACK_AFTER = 14  # characters: a longer cell with an interval or a note puts it on a second line
WRAP_TEXT = 28  # characters: a longer text column wraps in a paragraph column
_SECOND_LINE = re.compile(r" (?=[\[(])")  # where a cell's interval or parenthesis starts


def stacked(text: str, align: str = "r") -> str:
    """A long cell (``0.595 [0.492, 0.689]``, ``0.519 ± 0.140 (-0.366 [...])``) as two lines, the
    estimate above its interval, in a nested tabular: intervals double a column's width otherwise,
    and a table of them would not fit a page. Plain LaTeX (booktabs is all a document needs)."""
    escaped = latex_escape(text)
    if len(text) <= STACK_AFTER:
        return escaped
    parts = _SECOND_LINE.split(text, maxsplit=1)
    if len(parts) != 2:
        return escaped
    first, second = (latex_escape(part) for part in parts)
    return f"\\begin{{tabular}}[t]{{@{{}}{align}@{{}}}}{first}\\\\{{}} {second}\\end{{tabular}}"


def _header(name: str) -> str:
    """A long header on two lines, split at the space nearest its middle."""
    text = str(name)
    if len(text) <= STACK_AFTER or " " not in text:
        return latex_escape(text)
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    cut = min(spaces, key=lambda i: abs(i - len(text) / 2))
    return (f"\\begin{{tabular}}[b]{{@{{}}c@{{}}}}{latex_escape(text[:cut])}\\\\{{}} "
            f"{latex_escape(text[cut + 1:])}\\end{{tabular}}")


def latex(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs `table` (caption, label, numbers right-aligned) through `Styler.to_latex`; long
    text columns wrap (a paragraph column), long numeric cells put their interval on a second
    line (`stacked`), long headers take two lines, so the page views fit a plain article."""
    shown = frame.map(lambda v: DASH if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    numeric = numeric_columns(frame)
    spec = ""
    for column, is_number in zip(shown.columns, numeric):
        longest = int(shown[column].str.len().max()) if len(shown) else 0
        spec += "r" if is_number else (f"p{{{min(longest, 40) * 0.5:.1f}em}}" if longest > WRAP_TEXT else "l")
    styler = (shown.style.hide(axis="index")
              .format(lambda v: stacked(v), subset=[c for c, n in zip(shown.columns, numeric) if n])
              .format(latex_escape, subset=[c for c, n in zip(shown.columns, numeric) if not n])
              .format_index(_header, axis=1))
    text = styler.to_latex(column_format=spec, hrules=True, position="ht", position_float="centering",
                           caption=latex_escape(caption), label=label, environment="table")
    text = text.replace("\\centering\n", "\\centering\n" + PAGE_FIT, 1)
    # the outer tabular (the first begin, the last end: cells nest their own) shrinks to the text
    # width only when it is wider; graphicx's \\resizebox, in every LaTeX distribution
    begin, end = text.index("\\begin{tabular}"), text.rindex("\\end{tabular}") + len("\\end{tabular}")
    return text[:begin] + FIT_OPEN + text[begin:end] + "}" + text[end:]


@dataclass(frozen=True)
class Caption:
    """A caption a paper can use (`text`: what was compared, over what, what the interval and the
    star mean, what the table supports) and the notes that qualify this table's numbers (`notes`:
    failed seeds, confounds, what the intervals leave out), printed under the table. ``in`` and
    ``str`` see both, so every caveat stays next to the figures it qualifies."""

    text: str
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        return " ".join((self.text, *self.notes))

    def __contains__(self, part: str) -> bool:
        return part in str(self)

    def markdown_notes(self) -> str:
        return "\n\nNotes:\n\n" + "\n".join(f"- {note}" for note in self.notes) if self.notes else ""

    def latex_notes(self) -> str:
        """The notes as a small paragraph under the tabular, inside the float."""
        if not self.notes:
            return ""
        notes = latex_escape(" ".join(self.notes))
        return "\\par\\smallskip{\\footnotesize\\raggedright\\emph{Notes.} " + notes + "\\par}\n"


def write(frame: pd.DataFrame, display: pd.DataFrame, stem: Path, formats: Sequence[str],
          caption: str | Caption) -> list[Path]:
    """`stem`.csv from the raw numbers (every column; reads back with pandas to the same values);
    .md and .tex from `display`, the page view (formatted cells, headline columns only), with a
    `Caption`'s notes under the table."""
    caption = caption if isinstance(caption, Caption) else Caption(caption)
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "md":
            path.write_text(f"{caption.text}\n\n{markdown(display)}{caption.markdown_notes()}")
        else:
            text = latex(display, caption.text, f"tab:{stem.name}")
            end = text.rindex("\\end{table}")
            path.write_text(text[:end] + caption.latex_notes() + text[end:])
        written.append(path)
    return written
