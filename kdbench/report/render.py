"""The report in one format, and every format plus the plots and data files into a folder.

The records are analysed once (:func:`analyse`: leaderboards, per-cell tables, prediction variants, problem
lines); each format then renders that :class:`Analysis`: text (terminal), markdown, HTML (one self-contained
page), LaTeX (a complete document) and CSV (the per-cell statistics table)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdbench import store
from kdbench.reference import load_published
from kdbench.report import html_page, text
from kdbench.report.fmt import Table
from kdbench.report.hints import Hints, hints_of
from kdbench.report.latex import latex_document
from kdbench.report.load import Records
from kdbench.report.options import ReportOptions
from kdbench.report.summary import Leaderboard, leaderboards
from kdbench.report.tables import cell_tables, legend, problem_lines, summary_tables
from kdbench.report.tidy import cell_stats, write_data_files
from kdbench.report.tuning import tuning_tables
from kdbench.report.variants import VariantStats, variant_rows, variant_stats

FORMATS = ("text", "markdown", "csv", "latex", "html")
EXTENSIONS = (("text", "txt"), ("markdown", "md"), ("html", "html"), ("latex", "tex"), ("csv", "csv"))


@dataclass
class Analysis:
    """Everything the report shows, computed once from the records."""

    records: Records
    published: pd.DataFrame
    options: ReportOptions
    boards: list[Leaderboard]
    variants: list[VariantStats]
    cells: list[tuple[str, list[Table]]]
    ran: list[str]
    summary: list[tuple[str, Table, str]]  # per (dataset, regime): title, leaderboard, resolution line
    problems: list[str]
    hints: Hints | None = None  # the report hints of the records' methods, looked up once
    tuning: list[tuple[str, Table]] | None = None  # per dataset: the tuned cells' choices and budget


def analyse(records: Records, published: pd.DataFrame | None = None,
            options: ReportOptions | None = None) -> Analysis:
    """The report's content from the records' frame (read nothing)."""
    options = options or ReportOptions()
    published = load_published() if published is None else published
    hints = hints_of(records.frame, records.hints)
    boards = leaderboards(records.frame, options)
    variants = variant_stats(variant_rows(records.frame, hints))
    cells = cell_tables(records, published, options, variants)
    ran, summary = summary_tables(records, boards)
    return Analysis(records, published, options, boards, variants, cells, ran, summary, problem_lines(records),
                    hints, tuning_tables(records.frame))


def _heading(title: str, fmt: str, level: int) -> str:
    return html_page.heading(title, level) if fmt == "html" else text.heading(title, fmt, level)


def _paragraph(body: str, fmt: str) -> str:
    return html_page.paragraph(body) if fmt == "html" else text.paragraph(body, fmt)


def _table(table: Table, fmt: str) -> str:
    return html_page.table(table) if fmt == "html" else text.table_text(table, fmt)


def _document(analysis: Analysis, fmt: str, figures: Sequence[str], figure_root: Path | None) -> str:
    """Text, markdown or HTML: the summary, each cell's tables, the legend, the problems, the figures."""
    parts = [_heading("Summary", fmt, 2), _paragraph("\n".join(text.wrap(line, fmt) for line in analysis.ran), fmt)]
    for title, table, resolution in analysis.summary:
        parts += [_heading(title, fmt, 3), _table(table, fmt), _paragraph(text.wrap(resolution, fmt), fmt)]
    for _, table in analysis.tuning or []:  # the table carries its own title
        parts.append(_table(table, fmt))
    if not analysis.cells:
        parts.append("no finished student runs found")
    for title, tables in analysis.cells:
        parts.append(_heading(title, fmt, 2))
        parts += [_table(table, fmt) for table in tables]
    parts.append(_paragraph(text.wrap(legend(analysis.options, analysis.hints), fmt), fmt))
    if analysis.problems:
        parts.append(_heading(f"Runs not in the tables ({len(analysis.problems)})", fmt, 2))
        parts.append(html_page.problems(analysis.problems) if fmt == "html"
                     else text.problems_text(analysis.problems, fmt))
    if figures:
        parts.append(_heading("Figures", fmt, 2))
        parts += [html_page.figure(name, figure_root) if fmt == "html" else text.figure_text(name, fmt)
                  for name in figures]
    body = "\n\n".join(parts) + "\n"
    return html_page.page(body) if fmt == "html" else body


def render(records: Records | Analysis, fmt: str = "text", published: pd.DataFrame | None = None,
           figures: Sequence[str] = (), figure_root: Path | None = None, options: ReportOptions | None = None) -> str:
    """The report as text, markdown, LaTeX (a complete document) or HTML, summary first; ``csv`` is the
    per-cell statistics table (one table; :func:`write_outputs` writes the others to files of their own).
    ``records`` may be an :class:`Analysis` already made (then ``published`` and ``options`` are its own)."""
    analysis = records if isinstance(records, Analysis) else analyse(records, published, options)
    if fmt == "csv":
        buffer = io.StringIO()
        cell_stats(analysis.records.frame, analysis.published, analysis.options).to_csv(buffer, index=False)
        return buffer.getvalue()
    if fmt == "latex":
        sections = [(f"Summary: {title}", [table]) for title, table, _ in analysis.summary] + \
            [(title, [table]) for title, table in analysis.tuning or []] + analysis.cells
        summary = analysis.ran + [line for _, _, line in analysis.summary]
        return latex_document("kdbench report", summary, sections, legend(analysis.options, analysis.hints),
                              analysis.problems)
    if fmt not in text.STYLES:
        raise ValueError(f"unknown report format {fmt!r} (known: {', '.join(FORMATS)})")
    return _document(analysis, fmt, figures, figure_root)


def write_outputs(records: Records, out: Path, options: ReportOptions | None = None,
                  analysis: Analysis | None = None) -> list[Path]:
    """Write plots and the report in every format into ``out``; return the files written. ``analysis``: the
    records' :func:`analyse`, when already made."""
    from kdbench.report.plots import write_plots

    out.mkdir(parents=True, exist_ok=True)
    analysis = analyse(records, load_published(), options) if analysis is None else analysis
    figures = write_plots(records, out, analysis.variants, analysis.hints)
    names = [str(p.relative_to(out)) for p in figures]
    written = list(figures)
    for fmt, ext in EXTENSIONS:
        path = out / f"report.{ext}"
        shown = names if fmt in ("markdown", "html") else ()
        store.atomic_write_bytes(path, render(analysis, fmt, figures=shown, figure_root=out).encode())
        written.append(path)
    written += write_data_files(records, out, analysis.published, analysis.options, analysis.boards,
                                analysis.variants, analysis.hints)
    return written
