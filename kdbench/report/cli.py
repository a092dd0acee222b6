"""``python -m kdbench.report RESULTS [--format text|markdown|csv|latex|html] [--out DIR] [--all]
[--baseline LABEL] [--control LABEL] [--compare REFERENCE]`` (also ``python -m kdbench report ...``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kdbench.report.load import load_records
from kdbench.report.options import DEFAULT_BASELINE, DEFAULT_CONTROL, ReportOptions
from kdbench.report.render import FORMATS, analyse, render, write_outputs

DESCRIPTION = "The report: every ``result.json`` below a folder -> a pandas DataFrame -> tables and plots."


def parser() -> argparse.ArgumentParser:
    """The command line of the report."""
    parser = argparse.ArgumentParser(prog="python -m kdbench.report", description=DESCRIPTION)
    parser.add_argument("root", type=Path, help="a results folder (all records below it are read)")
    parser.add_argument("--format", choices=list(FORMATS), default="text")
    parser.add_argument("--out", type=Path, help="also write report.{txt,md,html,tex,csv}, runs.{csv,parquet}, "
                        "cells/leaderboard/variants.csv and the plots (PNG + SVG) here")
    parser.add_argument("--all", action="store_true", help="include stale records (runs the results folder's "
                        "suite no longer names) in the tables; by default they are only listed")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, metavar="LABEL",
                        help=f"the method every paired delta and the leaderboard compare against (default: "
                        f"{DEFAULT_BASELINE})")
    parser.add_argument("--control", default=DEFAULT_CONTROL, metavar="LABEL",
                        help=f"the no-distillation control: a second delta column and the cost table's ratio "
                        f"(default: {DEFAULT_CONTROL})")
    parser.add_argument("--compare", type=Path, metavar="REFERENCE",
                        help="put each cell beside a reference run's (a results folder or a report folder with "
                        "runs.csv, e.g. results/examples/smoke) and say whether it is reproduced within seed noise")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point of ``python -m kdbench.report``: prints the report, writes ``--out``."""
    args = parser().parse_args(argv)
    if not args.root.is_dir():
        what = "is a file, not a folder" if args.root.exists() else "does not exist"
        print(f"error: results folder '{args.root}' {what}", file=sys.stderr)
        return 2
    options = ReportOptions(baseline=args.baseline, control=args.control)
    records = load_records(args.root, include_stale=args.all)
    analysis = analyse(records, options=options)
    sys.stdout.write(render(analysis, args.format))
    if args.compare is not None:
        if not args.compare.is_dir():
            print(f"error: --compare '{args.compare}' is not a folder", file=sys.stderr)
            return 2
        from kdbench.report import text
        from kdbench.report.compare import compare_table, reference_frame

        table = compare_table(records.frame, reference_frame(args.compare), str(args.compare))
        style = args.format if args.format in ("text", "markdown") else "text"
        block = "\n" + text.heading(table.title, style, 2) + "\n\n" + text.table_text(table, style) + "\n"
        # a LaTeX/HTML document or a CSV table stays whole on stdout; the comparison then goes to stderr
        (sys.stdout if style == args.format else sys.stderr).write(block)
    if args.out:
        written = write_outputs(records, args.out, options, analysis)
        print(f"wrote {len(written)} files to {args.out}", file=sys.stderr)
    return 0
