"""The report's pictures (matplotlib, PNG at 150 dpi with an SVG beside each): accuracy vs inference latency per
cell, learning curves per cell, and GenDD ablation curves (top-1 and latency vs sampling steps, token size,
smooth). A method has one colour in every plot (from its label); every point says its n and shows its seeds;
one quantity per axis (small multiples, never twin axes); the teacher's top-1 is a dashed line where known."""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kdbench import store

CELL = ["dataset", "regime", "teacher", "student"]


def _slug(*parts: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(str(p) for p in parts)).strip("_")


PALETTE = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
FIXED = {"vanilla": 7, "kd": 0, "mse": 2, "gendd": 3}  # the common ones keep the same tab10 colour everywhere
DPI = 150


def method_color(label: str) -> tuple[float, ...]:
    """The colour of a method label in every plot and report: fixed for the common methods, else from a stable
    hash of the label (never from the order the methods happen to be drawn in)."""
    if label in FIXED:
        return PALETTE[FIXED[label]]
    return PALETTE[int(hashlib.md5(label.encode()).hexdigest(), 16) % len(PALETTE)]


def _save(fig: plt.Figure, path: Path) -> Path:
    """PNG (150 dpi) and SVG beside it, each written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    for target, kind in ((path, "png"), (path.with_suffix(".svg"), "svg")):
        tmp = target.with_suffix(f".tmp.{kind}")
        fig.savefig(tmp, dpi=DPI, format=kind)
        tmp.replace(target)
    plt.close(fig)
    return path


def _teacher_line(ax: plt.Axes, teacher_top1: float | None) -> None:
    if teacher_top1 is not None and np.isfinite(teacher_top1):
        ax.axhline(teacher_top1, color="0.3", linestyle="--", linewidth=1, label=f"teacher {teacher_top1:.2f}")


def accuracy_vs_latency(cell: pd.DataFrame, title: str, path: Path, teacher_top1: float | None = None
                        ) -> Path | None:
    """One point per method: mean top-1 (last, its own predictor) with its seed sd and its seeds as small dots,
    against median ms/img at batch 1 (log x); n in the label; the teacher's top-1 dashed."""
    done = cell[cell["state"] == "done"]
    if done.empty or "predict_ms_per_img_b1" not in done:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, runs in done.groupby("label"):
        latency = runs["predict_ms_per_img_b1"].median()
        top1 = runs["top1_last"]
        color = method_color(str(label))
        ax.scatter([latency] * len(top1), top1, s=10, color=color, alpha=0.5)
        ax.errorbar(latency, top1.mean(), yerr=top1.std(ddof=1) if len(top1) > 1 else 0, fmt="o", capsize=4,
                    color=color, markerfacecolor="white" if len(top1) < 2 else color)
        ax.annotate(f"{label} (n={len(top1)})", (latency, top1.mean()), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    _teacher_line(ax, teacher_top1)
    ax.set_xscale("log")
    ax.set_xlabel("inference ms/img at batch 1 (full predict path, log scale)")
    ax.set_ylabel("top-1 % (last epoch, own predictor), mean ± sd")
    ax.set_title(title + "  (hollow: n = 1, no spread)", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def learning_curves(cell: pd.DataFrame, title: str, path: Path, teacher_top1: float | None = None) -> Path | None:
    """Per method, per-epoch test top-1 of the main phase (the per-epoch predictor): mean over seeds, ±sd band."""
    done = cell[cell["state"] == "done"]
    if done.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for label, runs in done.groupby("label"):
        curves = []
        for folder in runs["path"]:
            lines = [r for r in store.read_jsonl(Path(folder) / store.METRICS) if r.get("phase", "main") == "main"]
            if lines:
                curves.append([r["top1"] for r in lines])
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
    _teacher_line(ax, teacher_top1)
    ax.set_xlabel("epoch (main phase)")
    ax.set_ylabel("test top-1 % (per-epoch predictor)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _parse_sweep_name(name: str, params: dict) -> dict | None:
    """Settings from a sweep name such as ``ddim-16x1-cfgdefault-tdefault`` (records written before the
    settings were stored beside it)."""
    match = re.fullmatch(r"(ddpm|ddim)-(\d+)x(\d+)-cfg([^-]+)-t(.+)", name)
    if not match:
        return None
    sampler, steps, samples, cfg, start = match.groups()
    return {"sampler": sampler, "steps": int(steps), "samples": int(samples),
            "cfg": float(params.get("cfg", 2.0)) if cfg == "default" else float(cfg),
            "start_step": int(params.get("start_step", 999)) if start == "default" else int(start)}


def gendd_sampler_curves(frame: pd.DataFrame, path: Path) -> Path | None:
    """Top-1 and ms/img vs sampling steps for the sampler sweeps recorded by GenDD runs (same trained head)."""
    rows = []
    for folder in frame[(frame["method"] == "gendd") & (frame["state"] == "done")]["path"]:
        record = store.result_or_empty(Path(folder))
        settings = (record.get("diagnostics") or {}).get("sweep_settings") or {}
        params = (record.get("spec") or {}).get("method_params") or {}
        for name, result in (record.get("extra_evaluations") or {}).items():
            setting = settings.get(name) or _parse_sweep_name(name, params)
            if setting:
                rows.append({**setting, "top1": result["top1"], "ms": result.get("predict_ms_per_img_b1")})
    if not rows:
        return None
    sweep = pd.DataFrame(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, group in sweep.groupby(["sampler", "samples", "cfg", "start_step"]):
        group = group.groupby("steps", as_index=False)[["top1", "ms"]].mean().sort_values("steps")
        label = f"{key[0]} x{key[1]} cfg {key[2]:g} t{key[3]}"
        left.plot(group["steps"], group["top1"], "o-", label=label)
        right.plot(group["steps"], group["ms"], "o-", label=label)
    for ax, ylabel in ((left, "top-1 %"), (right, "ms/img at batch 1")):
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps K")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=7)
    fig.suptitle("GenDD: one trained head, other samplers", fontsize=10)
    return _save(fig, path)


def _short_variant(name: str) -> str:
    return name.replace("-cfgdefault", "").replace("-tdefault", "").replace("x1", "")


def prediction_variants(summary: pd.DataFrame, title: str, path: Path) -> Path | None:
    """Every prediction variant of the same trained runs: its paired top-1 difference to the reference (GenDD's
    authors' sampler; the run's own prediction where there is none) with the 95% CI over seeds, against the median
    ms/img at batch 1; the goal region (within 2x the student's forward, no more than 0.3 points below) shaded."""
    from kdbench.variants import GOAL_DROP, GOAL_RATIO

    if summary.empty:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    student_ms = []
    for i, (label, group) in enumerate(summary.groupby("label", sort=False)):
        color = colors[i % len(colors)]
        for _, v in group.iterrows():
            use_ref = v["delta_ref_n"] > 0
            y = v["delta_ref_mean"] if use_ref else (0.0 if v["delta_mean"] is None else v["delta_mean"])
            half = v["delta_ref_ci95"] if use_ref else v["delta_ci95"]
            if pd.isna(v["ms_b1"]) or y is None or pd.isna(y):
                continue
            marker = "*" if v["variant"] == "own prediction" else ("o" if v["meets_goal"] else "x")
            ax.errorbar(v["ms_b1"], y, yerr=0 if half is None or pd.isna(half) else half, fmt=marker, color=color,
                        markersize=11 if marker == "*" else 6, capsize=2, alpha=0.85,
                        label=label if v["variant"] == "own prediction" else None)
            ax.annotate(_short_variant(str(v["variant"])), (v["ms_b1"], y), textcoords="offset points",
                        xytext=(4, 2), fontsize=6, color=color)
            if v["x_student"] and pd.notna(v["x_student"]):
                student_ms.append(v["ms_b1"] / v["x_student"])
    if student_ms:
        limit = GOAL_RATIO * float(np.median(student_ms))
        left = min(float(summary["ms_b1"].min()), limit) / 2
        ax.axvspan(left, limit, alpha=0.06, color="green")
        ax.axvline(limit, ls="--", color="gray", lw=0.8)
    ax.axhline(-GOAL_DROP, ls=":", color="gray", lw=0.8)
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel(f"ms/img at batch 1, median over seeds (log); dashed: {GOAL_RATIO:g}x the student's forward")
    ax.set_ylabel(f"paired Δ top-1 vs the authors' sampler (95% CI); dotted: -{GOAL_DROP:g}")
    ax.set_title(f"prediction variants · {title}\n"
                 "* own prediction · o meets the goal (shaded, above dotted) · x misses", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def gendd_parameter_curve(frame: pd.DataFrame, parameter: str, path: Path) -> Path | None:
    """Top-1 (last) and ms/img vs one GenDD hyper-parameter, over GenDD runs that differ in it."""
    column = f"param_{parameter}"
    runs = frame[(frame["method"] == "gendd") & (frame["state"] == "done")]
    if column not in runs or runs[column].nunique() < 2:
        return None
    # one factor at a time: keep the runs whose other settings agree, choosing the set that varies it most
    others = [c for c in runs.columns if (c.startswith("param_") and c != column) or c == "epochs"]
    key = runs[others].apply(lambda row: "|".join(map(str, row)), axis=1) if others \
        else pd.Series("", index=runs.index)
    best = max(key.unique(), key=lambda k: runs.loc[key == k, column].nunique())
    runs = runs[key == best]
    if runs[column].nunique() < 2:
        return None
    grouped = runs.groupby(column).agg(top1=("top1_last", "mean"), sd=("top1_last", "std"),
                                       ms=("predict_ms_per_img_b1", "median"), n=("top1_last", "size"))
    fig, (ax, lat) = plt.subplots(1, 2, figsize=(8, 3.6))  # small multiples: one quantity per axis
    color = method_color("gendd")
    for value, group in runs.groupby(column):
        ax.scatter([value] * len(group), group["top1_last"], s=10, color=color, alpha=0.5)
    ax.errorbar(grouped.index, grouped["top1"], yerr=grouped["sd"].fillna(0), fmt="o", capsize=4, color=color)
    for x, (mean, n) in zip(grouped.index, zip(grouped["top1"], grouped["n"], strict=True), strict=True):
        ax.annotate(f"n={n}", (x, mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(parameter)
    ax.set_ylabel("top-1 % (last), mean ± sd, seeds as dots")
    ax.grid(alpha=0.3)
    lat.plot(grouped.index, grouped["ms"], "s", color="0.3")
    lat.set_xlabel(parameter)
    lat.set_ylabel("ms/img at batch 1 (median)")
    lat.set_ylim(bottom=0)
    lat.grid(alpha=0.3)
    fig.suptitle(f"GenDD: top-1 and latency vs {parameter} (other settings equal; points, not a curve)", fontsize=8)
    return _save(fig, path)


def _teacher_top1(frame: pd.DataFrame, cell: pd.DataFrame) -> float | None:
    """The measured top-1 of the teacher the cell's runs distilled from (one value when they share it)."""
    if "teacher_id" not in cell or "top1_last" not in frame:
        return None
    ids = set(cell["teacher_id"].dropna())
    teachers = frame[(frame["role"] == "teacher") & frame["run_id"].isin(ids) & (frame["state"] == "done")]
    values = teachers["top1_last"].dropna()
    return float(values.iloc[0]) if len(values) == 1 else None


def write_plots(records: object, out: Path) -> list[Path]:
    """Every plot the records allow, under ``out/plots``."""
    frame: pd.DataFrame = records.frame
    written: list[Path | None] = []
    if frame.empty or "role" not in frame:
        return []
    students = frame[frame["role"] == "student"]
    jobs: list[tuple[Callable[..., Path | None], tuple]] = []
    for key, cell in students.groupby(CELL, dropna=False, sort=True):
        title = " · ".join(str(k) for k in key[:2]) + f" · {key[2]} -> {key[3]}"
        teacher = _teacher_top1(frame, cell)
        jobs.append((accuracy_vs_latency, (cell, title, out / "plots" / f"accuracy_vs_latency_{_slug(*key)}.png",
                                           teacher)))
        jobs.append((learning_curves, (cell, title, out / "plots" / f"learning_curves_{_slug(*key)}.png",
                                       teacher)))
    jobs.append((gendd_sampler_curves, (students, out / "plots" / "gendd_sampling_steps.png")))
    from kdbench.variants import variant_rows, variant_summary

    variants = variant_summary(variant_rows(frame))
    if not variants.empty:
        for key, cell in variants.groupby(CELL, dropna=False, sort=True):
            title = " · ".join(str(k) for k in key[:2]) + f" · {key[2]} -> {key[3]}"
            jobs.append((prediction_variants, (cell, title, out / "plots" / f"prediction_variants_{_slug(*key)}.png")))
    for parameter in ("token_dim", "smooth", "sample_steps"):
        jobs.append((gendd_parameter_curve, (students, parameter, out / "plots" / f"gendd_{parameter}.png")))
    for plot, args in jobs:
        try:
            written.append(plot(*args))
        except Exception as err:  # a plot that cannot be drawn is reported, never fatal to the report
            plt.close("all")
            print(f"warning: plot {plot.__name__} failed: {type(err).__name__}: {err}", file=sys.stderr)
    return [p for p in written if p is not None]
