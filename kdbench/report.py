"""The report: every ``result.json`` below a folder -> a pandas DataFrame -> tables per cell.

``python -m kdbench.report results/ [--format text|markdown|csv|latex] [--out DIR]``

A cell is (dataset, regime, teacher -> student); its rows are methods, its values mean +- sd (n) over seeds
of runs that finished (``done``). Diverged, failed, missing and unreadable runs are listed below the tables,
never fatal. This module reads records only; it never imports the engine.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from kdbench import store

CELL = ["dataset", "regime", "teacher", "student"]
ACCURACY = [("top1_last", "top1 last"), ("top1_best", "top1 best*"), ("top5_last", "top5 last")]
GROUPS = [("top1_many", "many"), ("top1_medium", "medium"), ("top1_few", "few")]
OPTIONAL = [("top1_probe_last", "probe top1 (last)")]  # shown when some method in the cell reports it
COST = [("total_epochs", "epochs"), ("predict_ms_per_img_b1", "ms/img b1"), ("predict_vs_student_b1", "x student")]
FORMATS = {"text": "simple", "markdown": "github", "latex": "latex_booktabs"}


@dataclass
class Records:
    """All records under a folder: a flat frame of readable ones, and what could not be used."""

    frame: pd.DataFrame
    problems: list[tuple[str, str]] = field(default_factory=list)   # (path, problem)
    missing: list[tuple[str, str]] = field(default_factory=list)    # (suite, run id)


def _flatten(record: dict[str, Any], path: Path) -> dict[str, Any]:
    spec = record.get("spec", {})
    row = {
        "path": str(path.parent), "run_id": record.get("run_id"), "state": record.get("state"),
        "role": spec.get("role"), "method": spec.get("method"), "label": spec.get("label", spec.get("method")),
        "model": spec.get("model"), "student": spec.get("student"), "teacher": spec.get("teacher"),
        "teacher_id": spec.get("teacher_id"), "dataset": spec.get("dataset", {}).get("name"),
        "regime": spec.get("regime", {}).get("name"), "seed": spec.get("seed"), "epochs": spec.get("epochs"),
        "error": record.get("error"), "diverged_epoch": (record.get("stability") or {}).get("diverged_epoch"),
    }
    row.update({k: v for k, v in (record.get("metrics") or {}).items() if isinstance(v, int | float)})
    row.update({k: v for k, v in (record.get("cost") or {}).items() if isinstance(v, int | float)})
    return row


def load_records(root: Path) -> Records:
    """Read every record below ``root``; list unreadable ones and runs a suite expects but has no record of."""
    root = Path(root)
    rows, problems = [], []
    for scanned in store.scan_results(root):
        if scanned.record is None:
            problems.append((str(scanned.path), scanned.problem or "unreadable"))
        else:
            rows.append(_flatten(scanned.record, scanned.path))
    missing = []
    for suite_file in sorted(root.rglob(store.SUITE)):
        try:
            expected = store.read_json(suite_file)
        except (OSError, ValueError) as err:
            problems.append((str(suite_file), f"unreadable: {err}"))
            continue
        folder = suite_file.parent
        for kind, ids in (("teachers", expected.get("teachers", [])), ("runs", expected.get("runs", []))):
            missing += [(folder.name, rid) for rid in ids if not (folder / kind / rid / store.RESULT).exists()]
    return Records(pd.DataFrame(rows), problems, missing)


def _method_order(labels: Sequence[str]) -> list[str]:
    first = [m for m in ("vanilla", "kd") if m in labels]
    return first + sorted(m for m in labels if m not in first)


def _mean_sd(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def _median(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    value = float(values.median())
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def cell_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell and method: n and mean/sd of every accuracy column of finished student runs."""
    done = frame[(frame["role"] == "student") & (frame["state"] == "done")]
    columns = [c for c, _ in ACCURACY + GROUPS + OPTIONAL if c in done]
    rows = []
    for key, group in done.groupby([*CELL, "label"], dropna=False, sort=True):
        row = dict(zip([*CELL, "method"], key, strict=True))
        row["n"] = len(group)
        row["seeds"] = " ".join(str(s) for s in sorted(group["seed"]))
        for column in columns:
            values = group[column].dropna()
            row[f"{column}_mean"] = values.mean() if len(values) else None
            row[f"{column}_sd"] = values.std(ddof=1) if len(values) > 1 else (0.0 if len(values) else None)
        rows.append(row)
    return pd.DataFrame(rows)


def _teacher_top1(frame: pd.DataFrame, ids: Sequence[str]) -> str:
    teachers = frame[(frame["role"] == "teacher") & (frame["run_id"].isin(list(ids)))]
    done = teachers[teachers["state"] == "done"]
    return ", ".join(f"{v:.2f}" for v in done["top1_last"]) if not done.empty else "not available"


def cell_tables(records: Records) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) of each cell's table, rows = methods in a stable order."""
    frame = records.frame
    if frame.empty or "role" not in frame:
        return []
    students = frame[frame["role"] == "student"]
    tables = []
    for key, cell in students.groupby(CELL, dropna=False, sort=True):
        dataset, regime, teacher, student = key
        teacher_ids = cell["teacher_id"].dropna().unique()
        title = (f"{dataset} · {regime} · {teacher} -> {student}   "
                 f"(teacher top-1 {_teacher_top1(frame, teacher_ids)})")
        groups = [(c, h) for c, h in GROUPS if c in cell and cell[c].notna().any()]
        groups += [(c, h) for c, h in OPTIONAL if c in cell and cell[c].notna().any()]
        costs = [(c, h) for c, h in COST if c in cell and cell[c].notna().any()]
        headers = ["method", "n", *[h for _, h in ACCURACY], *[h if "(" in h else f"{h} (last)" for _, h in groups],
                   *[h for _, h in costs], "not done"]
        rows = []
        for label in _method_order(list(cell["label"].dropna().unique())):
            runs = cell[cell["label"] == label]
            done = runs[runs["state"] == "done"]
            other = runs[runs["state"] != "done"]["state"].value_counts()
            rows.append([label, str(len(done)), *[_mean_sd(done[c]) if c in done else "-" for c, _ in ACCURACY],
                         *[_mean_sd(done[c]) for c, _ in groups],
                         *[_median(done[c]) for c, _ in costs],
                         ", ".join(f"{n} {s}" for s, n in other.items()) or ""])
        tables.append((title, headers, rows))
    return tables


def problem_lines(records: Records) -> list[str]:
    """Human-readable lines for diverged, failed, missing and unreadable runs."""
    lines = []
    frame = records.frame
    if not frame.empty and "state" in frame:
        for _, row in frame[frame["state"] == "diverged"].iterrows():
            lines.append(f"diverged   {row['run_id']}  {row['label']} {row['regime']} seed {row['seed']} "
                         f"at epoch {row['diverged_epoch']}")
        for _, row in frame[frame["state"] == "failed"].iterrows():
            lines.append(f"failed     {row['run_id']}  {row['role']} {row['label']} {row['regime']} "
                         f"seed {row['seed']}: {row['error']}")
    lines += [f"missing    {rid}  (suite {suite}: no result.json yet)" for suite, rid in records.missing]
    lines += [f"unreadable {path}: {why}" for path, why in records.problems]
    return lines


def render(records: Records, fmt: str = "text") -> str:
    """The report as text, markdown or LaTeX (``csv`` gives the per-cell statistics as CSV)."""
    if fmt == "csv":
        buffer = io.StringIO()
        stats = cell_stats(records.frame) if not records.frame.empty else pd.DataFrame()
        stats.to_csv(buffer, index=False)
        return buffer.getvalue()
    style = FORMATS[fmt]
    parts = []
    tables = cell_tables(records)
    if not tables:
        parts.append("no finished student runs found")
    for title, headers, rows in tables:
        heading = f"### {title}" if fmt == "markdown" else f"% {title}" if fmt == "latex" else title
        parts.append(f"{heading}\n\n{tabulate(rows, headers=headers, tablefmt=style, disable_numparse=True)}")
    parts.append("mean ± sd over seeds (n = finished runs). *best = the best epoch on the test split "
                 "(test-selected, optimistic); last = the final epoch. many/medium/few: mean per-class top-1. "
                 "probe: the student's own fc on its detached feature (GenDD). epochs: all training epochs "
                 "including extra stages (budget parity). ms/img b1: the method's full predict path at batch 1 "
                 "(median), x student: that time over the student's plain forward. Cost columns are medians.")
    problems = problem_lines(records)
    if problems:
        body = "\n".join(f"- {p}" if fmt == "markdown" else p for p in problems)
        parts.append(f"Runs not in the tables ({len(problems)}):\n{body}")
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point of ``python -m kdbench.report``."""
    parser = argparse.ArgumentParser(prog="python -m kdbench.report", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a results folder (all records below it are read)")
    parser.add_argument("--format", choices=["text", "markdown", "csv", "latex"], default="text")
    parser.add_argument("--out", type=Path, help="also write the report (report.<ext>) into this folder")
    args = parser.parse_args(argv)
    if not args.root.exists():
        print(f"error: results folder '{args.root}' does not exist", file=sys.stderr)
        return 2
    text = render(load_records(args.root), args.format)
    sys.stdout.write(text)
    if args.out:
        ext = {"text": "txt", "markdown": "md", "csv": "csv", "latex": "tex"}[args.format]
        store.atomic_write_bytes(args.out / f"report.{ext}", text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
