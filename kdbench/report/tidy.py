"""The report's data files, one table each (tidy: one header row, one row per observation), for pandas, R or a
spreadsheet: ``runs.csv``/``runs.parquet`` (one row per run: spec fields, metrics, cost, stability, seed,
environment), ``cells.csv`` (per cell and method statistics), ``leaderboard.csv`` and ``variants.csv``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kdbench import store


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
    return table.sort_values(["role", "dataset", "regime", "teacher", "student", "label", "seed"],
                             na_position="first", kind="stable").reset_index(drop=True)


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
