"""The report as terminal text (the default; wide tables split into column groups of at most 120 characters) and
as GitHub markdown: headings, paragraphs, tables and figure references."""

from __future__ import annotations

import textwrap

from tabulate import tabulate

from kdbench.report.fmt import Table

TEXT_WIDTH = 120  # the terminal report's widest line
STYLES = {"text": "simple", "markdown": "github", "latex": "latex_booktabs", "html": "html"}


def tabulated(table: Table, style: str) -> str:
    """A table's body (headers and rows) in a tabulate style, every cell as written."""
    return tabulate(table.rows, headers=table.headers, tablefmt=style, disable_numparse=True)


def split_columns(table: Table, width: int = TEXT_WIDTH, style: str = "simple") -> list[Table]:
    """A table too wide for ``width`` columns as several tables over consecutive column groups, each repeating
    the first (method) column; titles say which part they are."""
    def rendered_width(headers: list[str], rows: list[list[str]]) -> int:
        text = tabulated(Table("", headers, rows), style)
        return max((len(line) for line in text.splitlines()), default=0)

    if len(table.headers) <= 2 or rendered_width(table.headers, table.rows) <= width:
        return [table]
    groups: list[list[int]] = [[]]
    for index in range(1, len(table.headers)):
        trial = [0, *groups[-1], index]
        if groups[-1] and rendered_width([table.headers[i] for i in trial],
                                         [[row[i] for i in trial] for row in table.rows]) > width:
            groups.append([])
        groups[-1].append(index)
    return [Table(f"{table.title} ({k + 1}/{len(groups)})", [table.headers[0], *[table.headers[i] for i in group]],
                  [[row[0], *[row[i] for i in group]] for row in table.rows]) for k, group in enumerate(groups)]


def wrap(text: str, fmt: str) -> str:
    """Text wrapped at the terminal width (other formats wrap themselves)."""
    return "\n".join(textwrap.wrap(text, TEXT_WIDTH, subsequent_indent="  ")) if fmt == "text" else text


def heading(text: str, fmt: str, level: int) -> str:
    """A section (level 2) or table (level 3) heading in text or markdown."""
    if fmt == "markdown":
        return f"{'#' * (level + 1)} {text}"
    return wrap(text if level == 2 else f"[{text}]", "text")


def paragraph(text: str, fmt: str) -> str:
    """Lines as one paragraph (markdown keeps the line breaks)."""
    return text.replace("\n", "  \n") if fmt == "markdown" else text


def table_text(table: Table, fmt: str) -> str:
    """A titled table in text (split into column groups that fit) or markdown."""
    style = STYLES.get(fmt, "simple")
    pieces = split_columns(table, TEXT_WIDTH, style) if fmt == "text" else [table]
    return "\n\n".join(f"{heading(piece.title, fmt, 3)}\n{tabulated(piece, style)}" for piece in pieces)


def problems_text(problems: list[str], fmt: str) -> str:
    """The runs not in the tables, one line each (a markdown list)."""
    return "\n".join(f"- {p}" if fmt == "markdown" else p for p in problems)


def figure_text(name: str, fmt: str) -> str:
    """A figure: a markdown image, or its path in text."""
    return f"![{name}]({name})" if fmt == "markdown" else name
