"""The report as a LaTeX document that pdflatex compiles: booktabs tables with captions and labels, every cell's
text escaped (``%``, ``_``, ``&``, ...), the report's Unicode (±, Δ, ×, –, ·, ->) written as LaTeX, each table
scaled to ``\\linewidth``. Paste a ``table`` environment into a paper with ``booktabs`` and ``graphicx`` loaded."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Protocol

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
            ">": r"\textgreater{}"}
_UNICODE = {"±": r"$\pm$", "Δ": r"$\Delta$", "×": r"$\times$", "–": "--", "—": "---", "·": r"$\cdot$",
            "→": r"$\rightarrow$", "≥": r"$\geq$", "≤": r"$\leq$", "≈": r"$\approx$", "…": r"\ldots{}"}
PREAMBLE = (r"\documentclass[10pt]{article}" "\n" r"\usepackage[T1]{fontenc}" "\n" r"\usepackage[margin=2cm]{geometry}"
            "\n" r"\usepackage{booktabs}" "\n" r"\usepackage{graphicx}" "\n")


class TableLike(Protocol):
    """What :func:`latex_table` needs of a table."""

    title: str
    headers: list[str]
    rows: list[list[str]]


def escape(text: object) -> str:
    """Plain text -> LaTeX: specials escaped, ``->`` as an arrow, the report's symbols as math, any other
    non-ASCII character transliterated (never passed through to break pdflatex)."""
    out = []
    for char in str(text).replace("->", "→"):
        if char in _SPECIAL:
            out.append(_SPECIAL[char])
        elif char in _UNICODE:
            out.append(_UNICODE[char])
        elif ord(char) < 128:
            out.append(char)
        else:
            out.append(unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode() or "?")
    return "".join(out)


def label_for(text: str) -> str:
    """A ``\\label`` key from a title: ``tab:`` + lowercase words joined by ``-``."""
    return "tab:" + (re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "table")


def _row(cells: Sequence[object]) -> str:
    return " & ".join(escape(c) for c in cells) + r" \\"


def latex_table(table: TableLike, caption: str, label: str) -> str:
    """One booktabs table: caption and label above, first column left, the others right, scaled to the line."""
    spec = "l" + "r" * (len(table.headers) - 1)
    lines = [r"\begin{table}[htbp]", r"\centering\small", rf"\caption{{{escape(caption)}}}", rf"\label{{{label}}}",
             r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             _row(table.headers), r"\midrule"]
    lines += [_row(row) for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    return "\n".join(lines)


def latex_document(title: str, summary: Sequence[str], sections: Sequence[tuple[str, Sequence[TableLike]]],
                   legend: str, problems: Sequence[str] = ()) -> str:
    """A complete document: summary paragraphs, one section per cell with its tables, the legend, problems."""
    parts = [PREAMBLE, r"\begin{document}", rf"\section*{{{escape(title)}}}"]
    parts += [escape(line) + r"\par" for line in summary]
    used: set[str] = set()
    for heading, tables in sections:
        parts.append(rf"\subsection*{{{escape(heading)}}}")
        for table in tables:
            label = label_for(f"{heading} {table.title.split('(')[0]}")
            while label in used:
                label += "-x"
            used.add(label)
            parts.append(latex_table(table, f"{table.title}. {heading}.", label))
    parts.append(r"\paragraph{Legend.} " + escape(legend))
    if problems:
        parts.append(r"\paragraph{Runs not in the tables.}")
        parts += [r"\noindent\texttt{" + escape(p) + r"}\par" for p in problems]
    parts.append(r"\end{document}")
    return "\n\n".join(parts) + "\n"
