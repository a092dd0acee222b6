"""The report's pictures (matplotlib, PNG): accuracy vs inference latency per cell, learning curves per cell,
and GenDD ablation curves (top-1 and latency vs sampling steps, token size, smooth)."""

from __future__ import annotations

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


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".tmp.png"), dpi=110)
    plt.close(fig)
    path.with_suffix(".tmp.png").replace(path)
    return path


def accuracy_vs_latency(cell: pd.DataFrame, title: str, path: Path) -> Path | None:
    """One point per method: mean top-1 (last) with its seed sd against median ms/img at batch 1 (log x)."""
    done = cell[cell["state"] == "done"]
    if done.empty or "predict_ms_per_img_b1" not in done:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, runs in done.groupby("label"):
        latency = runs["predict_ms_per_img_b1"].median()
        top1 = runs["top1_last"]
        ax.errorbar(latency, top1.mean(), yerr=top1.std(ddof=1) if len(top1) > 1 else 0, fmt="o", capsize=4)
        ax.annotate(f"{label} (n={len(top1)})", (latency, top1.mean()), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("inference ms/img at batch 1 (full predict path, log scale)")
    ax.set_ylabel("top-1 % (last epoch), mean ± sd")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def learning_curves(cell: pd.DataFrame, title: str, path: Path) -> Path | None:
    """Per method, per-epoch test top-1 of the main phase: mean over seeds and a ±sd band."""
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
        ax.plot(epochs, mean, label=f"{label} (n={len(data)})")
        ax.fill_between(epochs, mean - sd, mean + sd, alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch (main phase)")
    ax.set_ylabel("test top-1 % (per-epoch evaluation)")
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
        record = store.load_result(Path(folder)) or {}
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
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar(grouped.index, grouped["top1"], yerr=grouped["sd"].fillna(0), fmt="o-", capsize=4)
    ax.set_xlabel(parameter)
    ax.set_ylabel("top-1 % (last)")
    twin = ax.twinx()
    twin.plot(grouped.index, grouped["ms"], "s--", color="tab:red")
    twin.set_ylabel("ms/img b1", color="tab:red")
    ax.set_title(f"GenDD: top-1 and latency vs {parameter} (other settings equal)", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


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
        jobs.append((accuracy_vs_latency, (cell, title, out / "plots" / f"accuracy_vs_latency_{_slug(*key)}.png")))
        jobs.append((learning_curves, (cell, title, out / "plots" / f"learning_curves_{_slug(*key)}.png")))
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
