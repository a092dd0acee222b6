"""How the report writes numbers: a summary as ``mean ± sd``, its interval, a paired delta, a plain number, and
the titled :class:`Table` of strings every output format renders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from kdbench.report.stats import PairedDelta, Summary


@dataclass
class Table:
    """A titled table: headers and string rows."""

    title: str
    headers: list[str]
    rows: list[list[str]]


def fmt_summary(summary: Summary | None) -> str:
    """``mean ± sd`` (just the mean for n = 1), or ``-``."""
    if summary is None:
        return "-"
    return f"{summary.mean:.2f}" if summary.n == 1 else f"{summary.mean:.2f} ± {summary.sd:.2f}"


def fmt_ci(summary: Summary | None) -> str:
    """The 95% interval ``low–high``, or ``-`` when n < 2."""
    return "-" if summary is None or summary.ci95 is None else f"{summary.low:.2f}–{summary.high:.2f}"


def fmt_delta(delta: PairedDelta | None) -> str:
    """``+0.89 ±5.21 (3)~``: paired mean difference, CI half width, n seeds, ``~`` when the CI contains 0;
    ``-24.89 (n=1)`` with one seed: no CI, so no claim either way."""
    if delta is None:
        return ""
    s = delta.summary
    if s.ci95 is None:
        return f"{s.mean:+.2f} (n={s.n})"
    return f"{s.mean:+.2f} ±{s.ci95:.2f} ({s.n}){'~' if delta.inside_noise else ''}"


def missing(value: Any) -> bool:
    """None or NaN."""
    return value is None or bool(pd.isna(value))


def fmt_num(value: float | None, digits: int = 3) -> str:
    """A number in a table cell: 3 significant digits, whole numbers from 100, ``-`` when missing."""
    if missing(value):
        return "-"
    value = float(value)
    if abs(value) >= 1e6:
        return f"{value:.3g}"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.{digits}g}"


def fmt_paired(mean: Any, half: Any, n: Any) -> str:
    """``+0.50 ±0.10 (3)`` from a paired mean, its CI half width (may be missing) and n; ``""`` without a mean."""
    if missing(mean):
        return ""
    return f"{mean:+.2f}{'' if missing(half) else f' ±{half:.2f}'} ({n})"
