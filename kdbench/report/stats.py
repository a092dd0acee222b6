"""Statistics of the report: mean, sd, 95% t-interval, paired deltas over matching seeds, and per cell and method
everything the tables show (:class:`MethodStats`), computed from the runs frame of :mod:`kdbench.report.load`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pandas as pd
from scipy import stats as _scipy_stats

from kdbench.reference import lookup
from kdbench.report.options import ReportOptions

CELL = ("dataset", "regime", "teacher", "student")
"""The columns that make a cell: one (dataset, regime, teacher -> student)."""


class Column(NamedTuple):
    """An accuracy column of the frame and its table header."""

    name: str
    header: str


ACCURACY = (Column("top1_last", "top1 last"), Column("top1_best", "top1 best*"), Column("top1_val", "top1 val-sel."),
            Column("top5_last", "top5 last"))
EPOCH_ACCURACY = (Column("epoch_top1_last", "last [per-epoch]"), Column("epoch_top1_best", "best* [per-epoch]"),
                  Column("epoch_top1_val", "val-sel. [per-epoch]"))  # shown where some method's final one differs
EXTRA_ACCURACY = (Column("top1_many", "many"), Column("top1_medium", "medium"), Column("top1_few", "few"),
                  Column("top1_probe_last", "probe top1"), Column("val_top1_last", "val top1 (held-out)"))


@dataclass(frozen=True)
class Summary:
    """mean, sample sd (ddof 1; 0 for n = 1), n and the 95% t-interval half width (None for n < 2)."""

    mean: float
    sd: float
    n: int
    ci95: float | None

    @property
    def low(self) -> float | None:
        """The interval's lower end (None without an interval)."""
        return None if self.ci95 is None else self.mean - self.ci95

    @property
    def high(self) -> float | None:
        """The interval's upper end (None without an interval)."""
        return None if self.ci95 is None else self.mean + self.ci95


def t_quantile(n: int, level: float = 0.95) -> float:
    """The two-sided Student-t quantile for ``n`` observations (``n - 1`` degrees of freedom)."""
    return float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1))


def summarize(values: Sequence[Any], level: float = 0.95) -> Summary | None:
    """Summary of the finite values (None and NaN are left out); None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return None
    mean = sum(xs) / n
    if n == 1:
        return Summary(mean, 0.0, 1, None)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Summary(mean, sd, n, t_quantile(n, level) * sd / math.sqrt(n))


@dataclass(frozen=True)
class PairedDelta:
    """``a - b`` over the seeds both have: its summary, and whether its 95% CI contains 0 (inside the noise)."""

    summary: Summary
    seeds: tuple[int, ...]

    @property
    def inside_noise(self) -> bool | None:
        """Whether the 95% CI contains 0; None when there is no CI (fewer than two seeds: nothing is known)."""
        s = self.summary
        return None if s.ci95 is None else s.low <= 0 <= s.high


def paired_delta(a: Mapping[int, float], b: Mapping[int, float]) -> PairedDelta | None:
    """Per-seed differences ``a[seed] - b[seed]`` over matching seeds, summarised; None without a common seed."""
    seeds = tuple(sorted(set(a) & set(b)))
    summary = summarize([a.get(s) - b.get(s) for s in seeds])
    return None if summary is None else PairedDelta(summary, seeds)


# ------------------------------------------------------------------------------------------ frame helpers


def column(frame: pd.DataFrame, name: str) -> pd.Series:
    """The frame's column ``name``, or an all-missing one when the frame has none."""
    values = frame.get(name)
    return values if values is not None else pd.Series(None, index=frame.index, dtype=object)


def by_seed(frame: pd.DataFrame, name: str = "top1_last") -> dict[int, float]:
    """seed -> value of column ``name`` over the frame's rows that have one (the pairing of every delta)."""
    if name not in frame:
        return {}
    return {int(s): float(v) for s, v in zip(frame.seed, column(frame, name), strict=True) if pd.notna(v)}


def median(frame: pd.DataFrame, name: str) -> float | None:
    """The median of a column's values, or None when it has none."""
    values = column(frame, name).dropna()
    return None if values.empty else float(values.median())


def mean(frame: pd.DataFrame, name: str) -> float | None:
    """The mean of a column's values, or None when it has none."""
    values = column(frame, name)
    return float(values.mean()) if values.notna().any() else None


def maximum(frame: pd.DataFrame, name: str) -> float | None:
    """The largest of a column's values, or None when it has none."""
    values = column(frame, name)
    return float(values.max()) if values.notna().any() else None


def total(frame: pd.DataFrame, name: str) -> float | None:
    """The sum of a column's values, or None when it has none."""
    values = column(frame, name)
    return float(values.sum()) if values.notna().any() else None


def first_text(frame: pd.DataFrame, name: str) -> str:
    """A column's first value as text, or ``""`` when it has none."""
    values = column(frame, name).dropna()
    return str(values.iloc[0]) if not values.empty else ""


def done_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The finished runs (state ``done``) of a frame."""
    return frame[frame.state == "done"] if "state" in frame else frame.iloc[0:0]


def cells(frame: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """The student runs grouped by cell (sorted): ``[(dataset, regime, teacher, student), runs]``."""
    if frame.empty or "role" not in frame:
        return []
    students = frame[frame.role == "student"]
    return list(students.groupby(list(CELL), dropna=False, sort=True))


def method_order(labels: Sequence[str], options: ReportOptions | None = None) -> list[str]:
    """The control, the baseline, then the rest alphabetically."""
    options = options or ReportOptions()
    first = [m for m in dict.fromkeys(options.first) if m in labels]
    return first + sorted(m for m in labels if m not in first)


def recipe_note(runs: pd.DataFrame) -> str:
    """How a method's runs in a cell relate to the authors' recipe: ``authors`` (its reference recipe, no
    deviation), ``deviates: smooth, ...`` (declared deviations), or empty (no reference recipe)."""
    if column(runs, "reference_recipe").isna().all():
        return ""
    deviations = sorted({d for d in column(runs, "deviations").dropna() if d})
    return f"deviates: {'; '.join(deviations)}" if deviations else "authors"


# ------------------------------------------------------------------------------------------ per cell


@dataclass(frozen=True)
class Published:
    """A published top-1 for a cell and method (``kdbench/reference/published.csv``), and where it is from."""

    top1: float
    source: Any


def published_for(published: pd.DataFrame | None, cell: pd.DataFrame, method: str,
                  epochs: int | None = None) -> Published | None:
    """The primary published number for the cell's pair and ``method`` (``teacher`` for its teacher), or None."""
    if published is None:
        return None
    first = cell.iloc[0]
    row = lookup(published, first.dataset, first.regime, first.teacher, first.student, method, epochs)
    return None if row is None else Published(float(row.top1), row.source)


@dataclass
class MethodStats:
    """Everything the tables show for one method in one cell."""

    label: str
    method: str
    runs: int
    done: pd.DataFrame
    accuracy: dict[str, Summary | None]
    deltas: dict[str, PairedDelta | None]
    published: Published | None
    not_done: dict[str, int]
    recipe: str = ""  # "authors", "deviates: <keys>" or "" (no reference recipe): see :func:`recipe_note`
    predictor: str = ""  # what its final predictor computes, as its records describe it
    epoch_predictor: str = ""  # the per-epoch one, when it differs


def _baseline_rows(done: pd.DataFrame, base: str) -> pd.DataFrame:
    """A baseline's finished runs in a cell: its label, else the first label of that method."""
    rows = done[done.label == base]
    if rows.empty:
        rows = done[done.method == base]
        rows = rows[rows.label == rows.label.min()] if not rows.empty else rows
    return rows


def cell_methods(cell: pd.DataFrame, published: pd.DataFrame | None = None,
                 options: ReportOptions | None = None) -> list[MethodStats]:
    """Per-method statistics of one cell's student runs (paired deltas over matching seeds, top1 last)."""
    options = options or ReportOptions()
    baseline_seeds = {base: by_seed(_baseline_rows(done_runs(cell), base)) for base in options.baselines}
    out = []
    for label in method_order(list(cell.label.dropna().unique()), options):
        runs = cell[cell.label == label]
        done = done_runs(runs)
        method = str(runs.method.iloc[0])
        accuracy = {c.name: summarize(column(done, c.name).tolist()) if c.name in done else None
                    for c in (*ACCURACY, *EPOCH_ACCURACY, *EXTRA_ACCURACY)}
        mine = by_seed(done)
        deltas = {base: (paired_delta(mine, seeds) if seeds and label != base else None)
                  for base, seeds in baseline_seeds.items()}
        epochs = int(runs.epochs.iloc[0]) if pd.notna(runs.epochs.iloc[0]) else None
        not_done = runs[runs.state != "done"].state.value_counts().to_dict()
        differs = bool(column(done, "final_predictor_differs").fillna(False).astype(bool).any())
        out.append(MethodStats(label, method, len(runs), done, accuracy, deltas,
                               published_for(published, cell, method, epochs), not_done, recipe_note(runs),
                               first_text(done, "predictor_final") or ("final predictor" if differs else ""),
                               (first_text(done, "predictor_epoch") or "per-epoch predictor") if differs else ""))
    return out
