"""``--compare REFERENCE``: a user's cells beside a reference run's, and per cell whether the difference is within
seed noise, so "did I reproduce it?" has an answer.

The reference is a results folder or a report folder with its ``runs.csv`` (e.g. the shipped
``results/examples/smoke``). Per (dataset, regime, pair, method) cell both sides' final top-1 over seeds are compared
with Welch's t-test (two-sided, alpha 0.05; scipy): ``reproduced within noise`` when it cannot tell them apart,
``differs`` when it can. With one seed on a side, that value is tested against the other side's prediction
interval (its mean and seed sd, t with n - 1 degrees of freedom); with one seed on each side nothing can be said
and the line says so. Different machines differ by float kernels (the records' ``env``
names CPU, BLAS and GPU), which is exactly what the seed noise test absorbs or not.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from scipy import stats

from kdbench.report.fmt import Table

KEY = ("dataset", "regime", "teacher", "student", "label")
METRIC = "top1_last"
ALPHA = 0.05
HEADERS = ("regime", "pair", "method", "these results", "reference", "difference", "p", "verdict")


def reference_frame(path: Path) -> pd.DataFrame:
    """The reference's runs: its ``runs.csv`` when it has one, else every record below it."""
    tidy = Path(path) / "runs.csv"
    if tidy.is_file():
        return pd.read_csv(tidy)
    from kdbench.report.load import load_records

    return load_records(Path(path)).frame


def _finished_students(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty or METRIC not in frame.columns:
        return frame.iloc[0:0]
    return frame.loc[(frame.role == "student") & (frame.state == "done") & frame.loc[:, METRIC].notna()]


def _moments(values: pd.Series) -> tuple[int, float, float | None]:
    n = len(values)
    return n, float(values.mean()), float(values.std(ddof=1)) if n >= 2 else None


def verdict(ours: pd.Series, theirs: pd.Series) -> tuple[str, float | None]:
    """``reproduced within noise`` / ``differs`` / ``cannot tell (one seed each)`` and Welch's p-value."""
    n1, m1, s1 = _moments(ours)
    n2, m2, s2 = _moments(theirs)
    s1, s2 = s1 if s1 is not None else s2, s2 if s2 is not None else s1
    if s1 is None or s2 is None:
        return "cannot tell (one seed each)", None
    if s1 == 0 and s2 == 0:
        return ("reproduced exactly" if m1 == m2 else "differs"), None
    if min(n1, n2) == 1:  # one seed on a side: is it inside the other side's prediction interval?
        n, sd = (n2, s2) if n1 == 1 else (n1, s1)
        t = abs(m1 - m2) / (sd * math.sqrt(1 + 1 / n))
        p = float(2 * stats.t.sf(t, n - 1))
    else:
        p = float(stats.ttest_ind_from_stats(m1, s1, n1, m2, s2, n2, equal_var=False).pvalue)
    return ("reproduced within noise" if p >= ALPHA or math.isnan(p) else "differs"), p


def compare_table(frame: pd.DataFrame, reference: pd.DataFrame, name: str) -> Table:
    """Per cell: both sides' mean ± sd (n), the difference and the verdict; cells on one side only say so."""
    ours, theirs = _finished_students(frame), _finished_students(reference)
    keys = sorted({tuple(str(v) for v in row) for row in ours.loc[:, list(KEY)].itertuples(index=False)} |
                  {tuple(str(v) for v in row) for row in theirs.loc[:, list(KEY)].itertuples(index=False)})
    rows = []
    for key in keys:
        mine, ref = _cell(ours, key), _cell(theirs, key)
        shown = [key[1], f"{key[2]} -> {key[3]}", key[4], _summary(mine), _summary(ref)]
        if mine.empty or ref.empty:
            rows.append([*shown, "", "", "only in " + ("the reference" if mine.empty else "these results")])
            continue
        outcome, p = verdict(mine, ref)
        rows.append([*shown, f"{mine.mean() - ref.mean():+.2f}", "" if p is None else f"{p:.2f}", outcome])
    title = f"Compared with {name}: final top-1 per cell, Welch's t-test over seeds (alpha {ALPHA})"
    return Table(title, list(HEADERS), rows)


def _cell(frame: pd.DataFrame, key: tuple[str, ...]) -> pd.Series:
    match = (frame.loc[:, list(KEY)].astype(str) == pd.Series(key, index=list(KEY))).all(axis=1)
    return frame.loc[match, METRIC]


def _summary(values: pd.Series) -> str:
    if values.empty:
        return "-"
    n, mean, sd = _moments(values)
    return f"{mean:.2f} ({n})" if sd is None else f"{mean:.2f} ± {sd:.2f} ({n})"
