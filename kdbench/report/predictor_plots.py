"""Plots of what a method's runs record beyond their own accuracy, for any method that records it (none is named;
what to draw comes from the method's report hints, :mod:`~kdbench.report.hints`):

- ``<method>_sampling_<sweep_x>.png``: top-1 and ms/img against the settings field the hints put on the x axis
  (``sweep_x``), for the extra evaluations of the same trained runs (``eval/`` columns) whose settings state it,
  one curve per combination of the ``sweep_series`` fields;
- ``prediction_variants_<cell>.png``: every prediction variant's paired top-1 difference against its latency;
- ``<method>_<parameter>.png``: top-1 and ms/img against a hyper-parameter the cell's labels of the method sweep
  (a numeric one, or any the hints name in ``parameter_curves``), one factor at a time (the runs whose other
  parameters agree).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from kdbench.report.hints import Hints, hints_of, series_text
from kdbench.report.load import OWN, evaluations_of, settings_of
from kdbench.report.plotstyle import method_color, plt, save, slug
from kdbench.report.stats import CELL, column, done_runs
from kdbench.report.variants import GOAL_DROP, GOAL_RATIO, VariantStats

if TYPE_CHECKING:
    from kdbench.method import ReportHints

PARAM = "param_"


def _sweep_points(runs: pd.DataFrame, hints: ReportHints) -> pd.DataFrame:
    """One row per (run, extra evaluation) with settings: the settings, top1 and ms (batch 1); empty where no
    settings state the hints' ``sweep_x`` or lack a ``sweep_series`` field."""
    points = []
    for run in runs.to_dict("records"):
        for name, values in evaluations_of(run).items():
            setting = settings_of(values)
            if name != OWN and setting and values.get("top1") is not None:
                points.append({**setting, "top1": values.get("top1"), "ms": values.get("predict_ms_per_img_b1")})
    points = pd.DataFrame(points)
    needed = (hints.sweep_x, *hints.sweep_series)
    if points.empty or any(name not in points for name in needed):
        return pd.DataFrame()
    return points[points.get(hints.sweep_x).notna()]


def _sweep_plot(method: str, points: pd.DataFrame, hints: ReportHints, path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x, series = hints.sweep_x, list(hints.sweep_series)
    for key, group in (points.groupby(series) if series else [((), points)]):
        group = group.groupby(x, as_index=False).agg(top1=("top1", "mean"), ms=("ms", "mean"))
        group = group.sort_values(x)
        label = series_text(hints, dict(zip(series, key, strict=True)))
        left.plot(group.get(x), group.top1, "o-", label=label)
        right.plot(group.get(x), group.ms, "o-", label=label)
    for ax, ylabel in ((left, "top-1 %"), (right, "ms/img at batch 1")):
        ax.set_xscale("log")
        ax.set_xlabel(f"{x} of the predictor")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=7)
    fig.suptitle(f"{method}: one trained model, other predictors", fontsize=10)
    return save(fig, path)


def sampling_steps_curves(students: pd.DataFrame, folder: Path, hints: Hints | None = None) -> list[Path]:
    """Per method that declares a sweep (``sweep_x``) and whose finished runs evaluated other predictors with
    settings that state it: top-1 and ms/img against it (same trained models), into
    ``folder/<method>_sampling_<sweep_x>.png``. ``hints``: the report's (looked up here when not given)."""
    written = []
    done = done_runs(students)
    if done.empty or not any(str(c).startswith("eval/") for c in done.columns):
        return []
    hints = hints_of(done, hints)
    for method, runs in done.groupby("method", sort=True):
        declared = hints.of(method)
        points = _sweep_points(runs, declared) if declared.sweep_x else pd.DataFrame()
        if not points.empty:
            path = folder / f"{slug(method)}_sampling_{slug(declared.sweep_x)}.png"
            written.append(_sweep_plot(str(method), points, declared, path))
    return written


def _short_variant(name: str) -> str:
    """A variant's name without the parts that state a default (``-<key>default``) and without a single
    repeat (``x1``), to annotate a point."""
    return re.sub(r"x1(?!\d)", "", re.sub(r"-[A-Za-z_]*default", "", name))


def prediction_variants(variants: Sequence[VariantStats], title: str, path: Path) -> Path | None:
    """Every prediction variant of the same trained runs: its paired top-1 difference to the reference (its
    method's own prediction; the run's own prediction where there is none) with the 95% CI over seeds, against
    the median ms/img at batch 1; the goal region (within 2x the student's forward, no more than 0.3 points
    below) shaded."""
    if not variants:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    student_ms = []
    for v in variants:
        use_ref = v.delta_ref_n > 0
        y = v.delta_ref_mean if use_ref else (0.0 if v.delta_mean is None else v.delta_mean)
        half = v.delta_ref_ci95 if use_ref else v.delta_ci95
        if pd.isna(v.ms_b1) or y is None or pd.isna(y):
            continue
        color = method_color(v.label)
        marker = "*" if v.own else ("o" if v.meets_goal else "x")
        ax.errorbar(v.ms_b1, y, yerr=0 if half is None or pd.isna(half) else half, fmt=marker, color=color,
                    markersize=11 if marker == "*" else 6, capsize=2, alpha=0.85, label=v.label if v.own else None)
        ax.annotate(_short_variant(str(v.variant)), (v.ms_b1, y), textcoords="offset points", xytext=(4, 2),
                    fontsize=6, color=color)
        if v.x_student and pd.notna(v.x_student):
            student_ms.append(v.ms_b1 / v.x_student)
    if student_ms:
        limit = GOAL_RATIO * float(np.median(student_ms))
        left = min(float(np.nanmin([v.ms_b1 for v in variants])), limit) / 2
        ax.axvspan(left, limit, alpha=0.06, color="green")
        ax.axvline(limit, ls="--", color="gray", lw=0.8)
    ax.axhline(-GOAL_DROP, ls=":", color="gray", lw=0.8)
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel(f"ms/img at batch 1, median over seeds (log); dashed: {GOAL_RATIO:g}x the student's forward")
    ax.set_ylabel(f"paired Δ top-1 vs the reference prediction (95% CI); dotted: -{GOAL_DROP:g}")
    ax.set_title(f"prediction variants · {title}\n"
                 "* own prediction · o meets the goal (shaded, above dotted) · x misses", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return save(fig, path)


def _numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def swept_parameters(students: pd.DataFrame, hints: Hints | None = None) -> list[tuple[str, str]]:
    """(method, parameter) for every hyper-parameter that takes two or more values over one method's finished
    runs in one cell (its labels sweep it) and is numeric or named in the method's ``parameter_curves`` hint,
    in column order. ``hints``: the report's (looked up here when not given)."""
    done = done_runs(students)
    found: dict[tuple[str, str], None] = {}
    if done.empty:
        return []
    hints = hints_of(done, hints)
    parameters = [c for c in done.columns if str(c).startswith(PARAM)]
    for method, runs in done.groupby("method", sort=True):
        declared = hints.of(method).parameter_curves
        for name in parameters:
            if not (_numeric(column(done, name)) or name.removeprefix(PARAM) in declared):
                continue
            distinct = runs.groupby(list(CELL), dropna=False).agg(distinct=(name, "nunique")).distinct
            if (distinct >= 2).any():
                found.setdefault((str(method), name.removeprefix(PARAM)))
    return list(found)


def parameter_curve(students: pd.DataFrame, method: str, parameter: str, path: Path) -> Path | None:
    """Top-1 (last) and ms/img vs one hyper-parameter, over the method's finished runs in one cell that differ
    in it and agree in every other parameter (the set that varies it most)."""
    name = f"{PARAM}{parameter}"
    done = done_runs(students)
    runs = done[done.method == method]
    if name not in runs or column(runs, name).nunique() < 2:
        return None
    others = [c for c in runs.columns if (str(c).startswith(PARAM) and c != name) or c == "epochs"] + list(CELL)
    key = runs.loc[:, others].apply(lambda row: "|".join(map(str, row)), axis=1)
    best = max(key.unique(), key=lambda k: column(runs[key == k], name).nunique())
    runs = runs[key == best].assign(x=column(runs, name), top1=column(runs, "top1_last"),
                                    ms=column(runs, "predict_ms_per_img_b1"))
    if runs.x.nunique() < 2:
        return None
    grouped = runs.groupby("x").agg(top1=("top1", "mean"), sd=("top1", "std"), ms=("ms", "median"),
                                    n=("top1", "size"))
    fig, (ax, lat) = plt.subplots(1, 2, figsize=(8, 3.6))  # small multiples: one quantity per axis
    color = method_color(method)
    for value, group in runs.groupby("x"):
        ax.scatter([value] * len(group), group.top1, s=10, color=color, alpha=0.5)
    ax.errorbar(grouped.index, grouped.top1, yerr=grouped.sd.fillna(0), fmt="o", capsize=4, color=color)
    for x, mean, n in zip(grouped.index, grouped.top1, grouped.n, strict=True):
        ax.annotate(f"n={n}", (x, mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(parameter)
    ax.set_ylabel("top-1 % (last), mean ± sd, seeds as dots")
    ax.grid(alpha=0.3)
    lat.plot(grouped.index, grouped.ms, "s", color="0.3")
    lat.set_xlabel(parameter)
    lat.set_ylabel("ms/img at batch 1 (median)")
    lat.set_ylim(bottom=0)
    lat.grid(alpha=0.3)
    fig.suptitle(f"{method}: top-1 and latency vs {parameter} (other settings equal; points, not a curve)",
                 fontsize=8)
    return save(fig, path)
