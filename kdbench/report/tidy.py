"""The report's data files, one table each (tidy: one header row, one row per observation), for pandas, R or a
spreadsheet: ``runs.csv``/``runs.parquet`` (one row per run: the frame :mod:`kdbench.report.load` read: spec
fields, metrics, cost, stability, seed, environment), ``cells.csv`` (per cell and method statistics: also what
``--format csv`` prints), ``leaderboard.csv`` and ``variants.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdbench import store
from kdbench.reference import load_published
from kdbench.report.hints import Hints
from kdbench.report.load import Records
from kdbench.report.options import ReportOptions
from kdbench.report.stats import CELL, MethodStats, cell_methods, cells
from kdbench.report.summary import Leaderboard, leaderboards
from kdbench.report.variants import VariantStats, variant_rows, variant_stats, variants_frame

RUN_ORDER = ("role", "dataset", "regime", "teacher", "student", "label", "seed")


def runs_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every run, one row each, with columns of one type: a column that mixes types (e.g. a hyper-parameter
    that is a number in one method and a string in another) is written as text."""
    table = frame.copy()
    for column in table.columns:
        values = table[column].dropna()
        if values.empty:
            continue
        kinds = {_kind(v) for v in values}
        if table[column].dtype == object and len(kinds) > 1:
            table[column] = table[column].map(lambda v: None if v is None or v != v else str(v))
    return table.sort_values(list(RUN_ORDER), na_position="first", kind="stable").reset_index(drop=True)


def _kind(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, int | float | np.number):
        return "number"
    return "text"


def write_csv(path: Path, table: pd.DataFrame) -> Path:
    """One table as CSV, written atomically."""
    store.atomic_write_bytes(path, table.to_csv(index=False).encode())
    return path


def write_parquet(path: Path, table: pd.DataFrame) -> Path:
    """One table as Parquet (pyarrow), written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def _method_row(key: tuple, ms: MethodStats) -> dict[str, Any]:
    row: dict[str, Any] = dict(zip(CELL, key, strict=True))
    row.update(method=ms.label, base_method=ms.method, n=len(ms.done), runs=ms.runs,
               seeds=" ".join(str(int(s)) for s in sorted(ms.done.seed)))
    for name, summary in ms.accuracy.items():
        if summary is not None:
            row.update({f"{name}_mean": summary.mean, f"{name}_sd": summary.sd, f"{name}_ci95": summary.ci95})
    for base, delta in ms.deltas.items():
        if delta is not None:
            row.update({f"delta_vs_{base}": delta.summary.mean, f"delta_vs_{base}_ci95": delta.summary.ci95,
                        f"delta_vs_{base}_n": delta.summary.n, f"delta_vs_{base}_inside_noise": delta.inside_noise})
    if ms.published is not None:
        row.update(published_top1=ms.published.top1, published_source=ms.published.source)
    row.update({f"runs_{state}": count for state, count in ms.not_done.items()})
    if ms.recipe:
        row.update(recipe=ms.recipe)
    return row


def cell_stats(frame: pd.DataFrame, published: pd.DataFrame | None = None,
               options: ReportOptions | None = None) -> pd.DataFrame:
    """One flat row per (cell, method) with every statistic: what ``--format csv`` writes."""
    published = load_published() if published is None else published
    return pd.DataFrame([_method_row(key, ms) for key, cell in cells(frame)
                         for ms in cell_methods(cell, published, options)])


def leaderboard_frame(boards: Sequence[Leaderboard]) -> pd.DataFrame:
    """Every leaderboard's standings, one row per (dataset, regime, method)."""
    rows = []
    for board in boards:
        base = board.baseline
        for standing in board.standings:
            rows.append({"dataset": board.dataset, "regime": board.regime, "method": standing.label,
                         "cells": standing.cells, "mean_rank": standing.mean_rank, f"wins_vs_{base}": standing.wins,
                         f"ties_vs_{base}": standing.ties, f"losses_vs_{base}": standing.losses,
                         f"unresolved_vs_{base}": standing.unresolved, f"p_better_than_{base}": standing.poi,
                         f"p_better_than_{base}_low": standing.poi_low,
                         f"p_better_than_{base}_high": standing.poi_high, "seeds": board.seeds,
                         f"mde_vs_{base}": board.mde})
    return pd.DataFrame(rows)


def write_data_files(records: Records, out: Path, published: pd.DataFrame | None = None,
                     options: ReportOptions | None = None, boards: Sequence[Leaderboard] | None = None,
                     variants: Sequence[VariantStats] | None = None, hints: Hints | None = None) -> list[Path]:
    """runs.csv and runs.parquet (one row per run), cells.csv, leaderboard.csv and variants.csv: one table each.
    ``boards`` and ``variants``, when given, are the leaderboards and variant statistics already computed;
    ``hints``: the report hints of the records' methods (the records' own when not given)."""
    published = load_published() if published is None else published
    written = []
    if not records.frame.empty:
        runs = runs_table(records.frame)
        written += [write_csv(out / "runs.csv", runs), write_parquet(out / "runs.parquet", runs)]
    written.append(write_csv(out / "cells.csv", cell_stats(records.frame, published, options)))
    boards = leaderboards(records.frame, options) if boards is None else boards
    written.append(write_csv(out / "leaderboard.csv", leaderboard_frame(boards)))
    variants = variant_stats(variant_rows(records.frame, hints or records.hints)) if variants is None else variants
    if variants:
        written.append(write_csv(out / "variants.csv", variants_frame(list(variants))))
    return written
