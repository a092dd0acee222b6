"""The report's pictures (matplotlib, PNG at 150 dpi with an SVG beside each): accuracy vs inference latency per
cell, learning curves per cell, and, for any method whose runs record them, its predictor sweeps, prediction
variants and hyper-parameter curves (:mod:`kdbench.report.predictor_plots`). A method has one colour in every
plot (a stable function of its label); every point says its n and shows its seeds; one quantity per axis (small
multiples, never twin axes); the teacher's top-1 is a dashed line where known. Plots work on the runs frame;
only the learning curves read a per-run file (``metrics.jsonl``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench import store
from kdbench.report.hints import Hints, hints_of
from kdbench.report.load import Records
from kdbench.report.plotstyle import cell_title, method_color, plt, save, slug, teacher_line
from kdbench.report.predictor_plots import parameter_curve, prediction_variants, sampling_steps_curves, swept_parameters
from kdbench.report.stats import CELL, column, done_runs
from kdbench.report.variants import VariantStats, variant_rows, variant_stats


def accuracy_vs_latency(cell: pd.DataFrame, title: str, path: Path, teacher_top1: float | None = None
                        ) -> Path | None:
    """One point per method: mean top-1 (last, its own predictor) with its seed sd and its seeds as small dots,
    against median ms/img at batch 1 (log x); n in the label; the teacher's top-1 dashed."""
    done = done_runs(cell)
    if done.empty or "predict_ms_per_img_b1" not in done:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, runs in done.groupby("label"):
        latency = runs.predict_ms_per_img_b1.median()
        top1 = column(runs, "top1_last")
        color = method_color(str(label))
        ax.scatter([latency] * len(top1), top1, s=10, color=color, alpha=0.5)
        ax.errorbar(latency, top1.mean(), yerr=top1.std(ddof=1) if len(top1) > 1 else 0, fmt="o", capsize=4,
                    color=color, markerfacecolor="white" if len(top1) < 2 else color)
        ax.annotate(f"{label} (n={len(top1)})", (latency, top1.mean()), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    teacher_line(ax, teacher_top1)
    ax.set_xscale("log")
    ax.set_xlabel("inference ms/img at batch 1 (full predict path, log scale)")
    ax.set_ylabel("top-1 % (last epoch, own predictor), mean ± sd")
    ax.set_title(title + "  (hollow: n = 1, no spread)", fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)


def _curve(folder: str) -> list[float]:
    """A run's per-epoch test top-1 of its main phase, from its ``metrics.jsonl``."""
    lines = store.read_jsonl(Path(folder) / store.METRICS)
    return [r.get("top1") for r in lines if r.get("phase", "main") == "main" and r.get("top1") is not None]


def learning_curves(cell: pd.DataFrame, title: str, path: Path, teacher_top1: float | None = None) -> Path | None:
    """Per method, per-epoch test top-1 of the main phase (the per-epoch predictor): mean over seeds, ±sd band."""
    done = done_runs(cell)
    if done.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for label, runs in done.groupby("label"):
        curves = [c for c in map(_curve, runs.path) if c]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        data = np.array([c[:length] for c in curves])
        epochs = np.arange(1, length + 1)
        mean, sd = data.mean(0), data.std(0, ddof=1) if len(data) > 1 else np.zeros(length)
        color = method_color(str(label))
        ax.plot(epochs, mean, label=f"{label} (n={len(data)})", color=color)
        ax.fill_between(epochs, mean - sd, mean + sd, alpha=0.2, color=color)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    teacher_line(ax, teacher_top1)
    ax.set_xlabel("epoch (main phase)")
    ax.set_ylabel("test top-1 % (per-epoch predictor)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)


def teacher_top1(frame: pd.DataFrame, cell: pd.DataFrame) -> float | None:
    """The measured top-1 of the teacher the cell's runs distilled from (one value when they share it)."""
    if "teacher_id" not in cell or "top1_last" not in frame:
        return None
    ids = set(cell.teacher_id.dropna())
    teachers = frame[(frame.role == "teacher") & frame.run_id.isin(ids) & (frame.state == "done")]
    values = teachers.top1_last.dropna()
    return float(values.iloc[0]) if len(values) == 1 else None


Job = tuple[Callable[..., Path | list[Path] | None], tuple]


def write_plots(records: Records, out: Path, variants: Sequence[VariantStats] | None = None,
                hints: Hints | None = None) -> list[Path]:
    """Every plot the records allow, under ``out/plots``; a plot that cannot be drawn is named on stderr and
    left out. ``variants``: the frame's :func:`~kdbench.report.variants.variant_stats`, when already computed;
    ``hints``: the report hints of the records' methods (the records' own when not given)."""
    frame = records.frame
    if frame.empty or "role" not in frame:
        return []
    hints = hints_of(frame, hints or records.hints)
    folder = out / "plots"
    students = frame[frame.role == "student"]
    jobs: list[Job] = []
    for key, cell in students.groupby(list(CELL), dropna=False, sort=True):
        title, teacher = cell_title(key), teacher_top1(frame, cell)
        jobs.append((accuracy_vs_latency, (cell, title, folder / f"accuracy_vs_latency_{slug(*key)}.png", teacher)))
        jobs.append((learning_curves, (cell, title, folder / f"learning_curves_{slug(*key)}.png", teacher)))
    jobs.append((sampling_steps_curves, (students, folder, hints)))
    variants = variant_stats(variant_rows(frame, hints)) if variants is None else variants
    by_cell: dict[tuple, list[VariantStats]] = {}
    for v in variants:
        by_cell.setdefault(v.cell(), []).append(v)
    for key in sorted(by_cell, key=lambda k: tuple(map(str, k))):
        path = folder / f"prediction_variants_{slug(*key)}.png"
        jobs.append((prediction_variants, (by_cell.get(key), cell_title(key), path)))
    for method, parameter in swept_parameters(students, hints):
        jobs.append((parameter_curve, (students, method, parameter, folder / f"{slug(method)}_{parameter}.png")))
    written: list[Path] = []
    for plot, args in jobs:
        try:
            result = plot(*args)
        except Exception as err:  # a plot that cannot be drawn is reported, never fatal to the report
            plt.close("all")
            print(f"warning: plot {plot.__name__} failed: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        written += [p for p in (result if isinstance(result, list) else [result]) if p is not None]
    return written
