"""The report: every ``result.json`` below a folder -> a pandas DataFrame -> tables and plots.

``python -m kdbench.report results/ [--format text|markdown|csv|latex|html] [--out DIR]``

A cell is (dataset, regime, teacher -> student); its rows are methods (labels). Per cell and method: accuracy
(mean ± sd, 95% t-interval, n over seeds of finished runs; last, test-best and val-selected side by side;
many/medium/few and GenDD's probe where they exist), the paired delta vs ``kd`` and vs ``vanilla`` over matching
seeds with its CI (``~`` = the CI contains 0), the published number with the gap to it; a stability table
(diverged/total, failed, seed sd, loss spikes, gradient peaks, non-finite events) and a cost table (train s/epoch
and its ratio to vanilla, inference ms/img and its ratio to the student's forward, throughput, FLOPs, extra
parameters, total epochs with extra stages). Diverged, failed, missing and unreadable runs are listed, never
fatal. ``--out`` also writes report.{md,html,csv,tex,txt} and the plots. This module reads records only.
"""

from __future__ import annotations

import argparse
import html
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from kdbench import store
from kdbench.reference import load_published, lookup
from kdbench.stats import PairedDelta, Summary, paired_delta, summarize
from kdbench.variants import GOAL_DROP, GOAL_RATIO, OWN, REFERENCE, variant_rows, variant_summary

CELL = ["dataset", "regime", "teacher", "student"]
ACCURACY = [("top1_last", "top1 last"), ("top1_best", "top1 best*"), ("top1_val", "top1 val-sel."),
            ("top5_last", "top5 last")]
EXTRA_ACCURACY = [("top1_many", "many"), ("top1_medium", "medium"), ("top1_few", "few"),
                  ("top1_probe_last", "probe top1"), ("val_top1_last", "val top1 (held-out)")]
STYLES = {"text": "simple", "markdown": "github", "latex": "latex_booktabs", "html": "html"}
BASELINES = ("kd", "vanilla")


@dataclass
class Records:
    """All records under a folder: a flat frame of readable ones, and what could not be used."""

    frame: pd.DataFrame
    problems: list[tuple[str, str]] = field(default_factory=list)   # (path, problem)
    missing: list[tuple[str, str]] = field(default_factory=list)    # (suite, run id)
    stale: list[tuple[str, str, str]] = field(default_factory=list)  # (suite, run id, label): not in the plan


def _flatten(record: dict[str, Any], path: Path) -> dict[str, Any]:
    spec = record.get("spec", {})
    stability = record.get("stability") or {}
    regime = spec.get("regime") or {}
    row = {
        "path": str(path.parent), "run_id": record.get("run_id"), "state": record.get("state"),
        "role": spec.get("role"), "method": spec.get("method"), "label": spec.get("label", spec.get("method")),
        "model": spec.get("model"), "student": spec.get("student"), "teacher": spec.get("teacher"),
        "teacher_id": spec.get("teacher_id"), "dataset": (spec.get("dataset") or {}).get("name"),
        "regime": regime.get("label") or regime.get("name"), "seed": spec.get("seed"), "epochs": spec.get("epochs"),
        "error": record.get("error"), "diverged_epoch": stability.get("diverged_epoch"),
        "loss_spikes": stability.get("loss_spikes"), "grad_norm_max": stability.get("grad_norm_max"),
        "nonfinite_events": stability.get("nonfinite_events"),
        **_provenance(spec.get("provenance")),
    }
    row.update({f"param_{k}": v for k, v in (spec.get("method_params") or {}).items()
                if isinstance(v, int | float | str | bool)})
    row.update({k: v for k, v in (record.get("metrics") or {}).items() if isinstance(v, int | float)})
    row["val_size"] = (record.get("data") or {}).get("val_size")
    row.update({k: v for k, v in (record.get("cost") or {}).items() if isinstance(v, int | float)})
    return row


def _provenance(provenance: Any) -> dict[str, Any]:
    """A run's reference recipe (``gendd/cifar100``) and the keys it deviates from it on, as report columns."""
    if not isinstance(provenance, dict) or not provenance.get("recipe"):
        return {}
    keys = [str(d.get("key", "")).split(".", 1)[-1] for d in provenance.get("deviations") or []
            if isinstance(d, dict)]
    return {"reference_recipe": str(provenance["recipe"]), "deviations": ", ".join(sorted(keys))}


def recipe_note(runs: pd.DataFrame) -> str:
    """How a method's runs in a cell relate to the authors' recipe: ``authors`` (its reference recipe, no
    deviation), ``deviates: smooth, ...`` (declared deviations), or empty (no reference recipe)."""
    if "reference_recipe" not in runs or runs["reference_recipe"].isna().all():
        return ""
    deviations = sorted({d for d in runs.get("deviations", pd.Series(dtype=str)).dropna() if d})
    return f"deviates: {'; '.join(deviations)}" if deviations else "authors"


def load_records(root: Path) -> Records:
    """Read every record below ``root``; list unreadable ones and runs a suite expects but has no record of.

    A suite folder's ``suite.json`` names the runs of the plan that last ran there. A record in that folder that
    the plan does not name (left over from an earlier version of the suite, e.g. before a method's parameters
    changed) is listed as stale and left out of the tables, so a cell never mixes two versions of a method."""
    root = Path(root)
    plans: dict[Path, set[str]] = {}
    missing, problems = [], []
    for suite_file in sorted(root.rglob(store.SUITE)):
        try:
            expected = store.read_json(suite_file)
        except (OSError, ValueError) as err:
            problems.append((str(suite_file), f"unreadable: {err}"))
            continue
        folder = suite_file.parent
        plans[folder] = set()
        for kind, ids in (("teachers", expected.get("teachers", [])), ("runs", expected.get("runs", []))):
            plans[folder].update(ids)
            missing += [(folder.name, rid) for rid in ids if not (folder / kind / rid / store.RESULT).exists()]
    rows, stale = [], []
    for scanned in store.scan_results(root):
        if scanned.record is None:
            problems.append((str(scanned.path), scanned.problem or "unreadable"))
            continue
        folder = scanned.path.parent.parent.parent  # <suite>/{runs,teachers}/<id>/result.json
        if folder in plans and scanned.path.parent.name not in plans[folder]:
            spec = scanned.record.get("spec") or {}
            stale.append((folder.name, scanned.path.parent.name, str(spec.get("label", spec.get("method")))))
            continue
        rows.append(_flatten(scanned.record, scanned.path))
    return Records(pd.DataFrame(rows), problems, missing, stale)


def method_order(labels: Sequence[str]) -> list[str]:
    """vanilla, kd, then the rest alphabetically."""
    first = [m for m in ("vanilla", "kd") if m in labels]
    return first + sorted(m for m in labels if m not in first)


# --------------------------------------------------------------------------------------------- statistics


@dataclass
class MethodStats:
    """Everything the tables show for one method in one cell."""

    label: str
    method: str
    runs: int
    done: pd.DataFrame
    accuracy: dict[str, Summary | None]
    deltas: dict[str, PairedDelta | None]
    published: pd.Series | None
    not_done: dict[str, int]
    recipe: str = ""  # "authors", "deviates: <keys>" or "" (no reference recipe): see :func:`recipe_note`


def _by_seed(frame: pd.DataFrame, column: str = "top1_last") -> dict[int, float]:
    if column not in frame:
        return {}
    return {int(s): float(v) for s, v in zip(frame["seed"], frame[column], strict=True) if pd.notna(v)}


def cell_methods(cell: pd.DataFrame, published: pd.DataFrame | None = None) -> list[MethodStats]:
    """Per-method statistics of one cell's student runs (paired deltas over matching seeds, top1 last)."""
    done_all = cell[cell["state"] == "done"]
    baseline_seeds = {}
    for base in BASELINES:
        rows = done_all[done_all["label"] == base]
        if rows.empty:
            rows = done_all[done_all["method"] == base]
            rows = rows[rows["label"] == rows["label"].min()] if not rows.empty else rows
        baseline_seeds[base] = _by_seed(rows)
    out = []
    first = cell.iloc[0]
    for label in method_order(list(cell["label"].dropna().unique())):
        runs = cell[cell["label"] == label]
        done = runs[runs["state"] == "done"]
        method = str(runs["method"].iloc[0])
        accuracy = {c: summarize(done[c].tolist()) if c in done else None for c, _ in ACCURACY + EXTRA_ACCURACY}
        mine = _by_seed(done)
        deltas = {base: (paired_delta(mine, seeds) if seeds and label != base else None)
                  for base, seeds in baseline_seeds.items()}
        epochs = int(runs["epochs"].iloc[0]) if pd.notna(runs["epochs"].iloc[0]) else None
        ref = None if published is None else lookup(published, first["dataset"], first["regime"], first["teacher"],
                                                     first["student"], method, epochs)
        not_done = runs[runs["state"] != "done"]["state"].value_counts().to_dict()
        out.append(MethodStats(label, method, len(runs), done, accuracy, deltas, ref, not_done,
                               recipe_note(runs)))
    return out


def cell_stats(frame: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """One flat row per (cell, method) with every statistic: what ``--format csv`` writes."""
    published = load_published() if published is None else published
    rows = []
    for key, cell in _cells(frame):
        for ms in cell_methods(cell, published):
            row: dict[str, Any] = dict(zip(CELL, key, strict=True))
            row.update(method=ms.label, base_method=ms.method, n=len(ms.done), runs=ms.runs,
                       seeds=" ".join(str(int(s)) for s in sorted(ms.done["seed"])))
            for column, summary in ms.accuracy.items():
                if summary is not None:
                    row.update({f"{column}_mean": summary.mean, f"{column}_sd": summary.sd,
                                f"{column}_ci95": summary.ci95})
            for base, delta in ms.deltas.items():
                if delta is not None:
                    row.update({f"delta_vs_{base}": delta.summary.mean, f"delta_vs_{base}_ci95": delta.summary.ci95,
                                f"delta_vs_{base}_n": delta.summary.n,
                                f"delta_vs_{base}_inside_noise": delta.inside_noise})
            if ms.published is not None:
                row.update(published_top1=float(ms.published["top1"]), published_source=ms.published["source"])
            for state, count in ms.not_done.items():
                row[f"runs_{state}"] = count
            if ms.recipe:
                row["recipe"] = ms.recipe
            rows.append(row)
    return pd.DataFrame(rows)


def _cells(frame: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    if frame.empty or "role" not in frame:
        return []
    students = frame[frame["role"] == "student"]
    return list(students.groupby(CELL, dropna=False, sort=True))


# --------------------------------------------------------------------------------------------- formatting


def fmt_summary(summary: Summary | None) -> str:
    """``mean ± sd`` (just the mean for n = 1), or ``-``."""
    if summary is None:
        return "-"
    return f"{summary.mean:.2f}" if summary.n == 1 else f"{summary.mean:.2f} ± {summary.sd:.2f}"


def fmt_ci(summary: Summary | None) -> str:
    """The 95% interval ``low–high``, or ``-`` when n < 2."""
    return "-" if summary is None or summary.ci95 is None else f"{summary.low:.2f}–{summary.high:.2f}"


def fmt_delta(delta: PairedDelta | None) -> str:
    """``+0.89 ±5.21 (3)~``: paired mean difference, CI half width, n seeds, ``~`` when the CI contains 0."""
    if delta is None:
        return ""
    s = delta.summary
    half = "" if s.ci95 is None else f" ±{s.ci95:.2f}"
    return f"{s.mean:+.2f}{half} ({s.n}){'~' if delta.inside_noise else ''}"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or pd.isna(value):
        return "-"
    value = float(value)
    if abs(value) >= 1e6:
        return f"{value:.3g}"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.{digits}g}"


def _median(frame: pd.DataFrame, column: str) -> float | None:
    if column not in frame:
        return None
    values = frame[column].dropna()
    return None if values.empty else float(values.median())


@dataclass
class Table:
    """A titled table: headers and string rows."""

    title: str
    headers: list[str]
    rows: list[list[str]]


def _teacher_title(frame: pd.DataFrame, cell: pd.DataFrame, published: pd.DataFrame | None) -> str:
    ids = list(cell["teacher_id"].dropna().unique())
    teachers = frame[(frame["role"] == "teacher") & frame["run_id"].isin(ids) & (frame["state"] == "done")]
    ours = ", ".join(f"{v:.2f}" for v in teachers["top1_last"]) if not teachers.empty else "not available"
    first = cell.iloc[0]
    ref = None if published is None else lookup(published, first["dataset"], first["regime"], first["teacher"],
                                                 first["student"], "teacher")
    return f"teacher top-1 {ours}" + (f"; published {ref['top1']:.2f}" if ref is not None else "")


def cell_tables(records: Records, published: pd.DataFrame | None = None) -> list[tuple[str, list[Table]]]:
    """Per cell: its title and its accuracy, stability and cost tables, and the prediction-variants table where
    runs evaluated other predictors of their trained model (GenDD's samplers)."""
    frame = records.frame
    variants = variant_summary(variant_rows(frame))
    out = []
    for key, cell in _cells(frame):
        dataset, regime, teacher, student = key
        title = f"{dataset} · {regime} · {teacher} -> {student}   ({_teacher_title(frame, cell, published)})"
        stats = cell_methods(cell, published)
        tables = [_accuracy_table(stats), _stability_table(stats), _cost_table(stats)]
        if not variants.empty:
            mine = variants[(variants[CELL] == pd.Series(key, index=CELL)).all(axis=1)]
            if not mine.empty:
                tables.append(_variants_table(mine))
        out.append((title, tables))
    return out


def _variants_table(variants: pd.DataFrame) -> Table:
    batch = variants["batch"].dropna()
    big = f"ms/img b{batch.iloc[0]}" if not batch.empty else "ms/img batch"
    headers = ["method", "variant", "how", "n", "top1", "Δ vs own", f"Δ vs {REFERENCE}", "ms/img b1", "x student",
               big, "MFLOPs/img", f"goal (<= {GOAL_RATIO:g}x, >= -{GOAL_DROP:g})"]
    rows = []

    def paired(mean: Any, half: Any, n: Any) -> str:
        if mean is None or pd.isna(mean):
            return ""
        return f"{mean:+.2f}{'' if half is None or pd.isna(half) else f' ±{half:.2f}'} ({n})"

    for _, v in variants.iterrows():
        if v["top1_mean"] is None or pd.isna(v["top1_mean"]):
            top1 = "-"
        else:
            spread = "" if v["n"] < 2 or pd.isna(v["top1_sd"]) else f" ± {v['top1_sd']:.2f}"
            top1 = f"{v['top1_mean']:.2f}{spread}"
        own = v["variant"] == OWN
        delta = "" if own else paired(v["delta_mean"], v["delta_ci95"], v["n"])
        vs_ref = "" if own and v["label"] == REFERENCE else paired(v["delta_ref_mean"], v["delta_ref_ci95"],
                                                                   v["delta_ref_n"])
        flops = None if v["flops"] is None or pd.isna(v["flops"]) else v["flops"] / 1e6
        rows.append([v["label"], v["variant"], v["how"], str(v["n"]), top1, delta, vs_ref, _num(v["ms_b1"]),
                     _num(v["x_student"]), _num(v["ms_batch"]), _num(flops),
                     "" if v["variant"] == OWN else ("yes" if v["meets_goal"] else "no")])
    return Table("prediction variants of the same trained runs (paired with each run's own prediction; medians "
                 "of timings)", headers, rows)


def _accuracy_table(stats: list[MethodStats]) -> Table:
    shown = [(c, h) for c, h in ACCURACY + EXTRA_ACCURACY if any(ms.accuracy.get(c) for ms in stats)]
    has_ref = any(ms.published is not None for ms in stats)
    has_recipe = any(ms.recipe for ms in stats)
    headers = ["method", "n", *[h for _, h in shown[:1]], "95% CI", *[h for _, h in shown[1:]],
               *[f"Δ vs {b}" for b in BASELINES], *(["published", "gap"] if has_ref else []),
               *(["recipe"] if has_recipe else []), "not done"]
    rows = []
    for ms in stats:
        first = ms.accuracy.get(shown[0][0]) if shown else None
        row = [ms.label, str(len(ms.done)), *[fmt_summary(first)] * bool(shown), fmt_ci(first),
               *[fmt_summary(ms.accuracy.get(c)) for c, _ in shown[1:]],
               *[fmt_delta(ms.deltas.get(b)) for b in BASELINES]]
        if has_ref:
            if ms.published is not None and first is not None:
                row += [f"{ms.published['top1']:.2f}", f"{first.mean - ms.published['top1']:+.2f}"]
            else:
                row += [f"{ms.published['top1']:.2f}" if ms.published is not None else "", ""]
        if has_recipe:
            row.append(ms.recipe)
        row.append(", ".join(f"{n} {s}" for s, n in ms.not_done.items()))
        rows.append(row)
    return Table("accuracy", headers, rows)


def _stability_table(stats: list[MethodStats]) -> Table:
    headers = ["method", "diverged/total", "failed", "seed sd (top1 last)", "loss spikes/run", "max grad norm",
               "non-finite events"]
    rows = []
    for ms in stats:
        summary = ms.accuracy.get("top1_last")
        finished = ms.done
        rows.append([ms.label, f"{ms.not_done.get('diverged', 0)}/{ms.runs}", str(ms.not_done.get("failed", 0)),
                     "-" if summary is None or summary.n < 2 else f"{summary.sd:.2f}",
                     _num(_mean(finished, "loss_spikes"), 2), _num(_max(finished, "grad_norm_max"), 3),
                     _num(_sum(finished, "nonfinite_events"), 3)])
    return Table("stability", headers, rows)


def _mean(frame: pd.DataFrame, column: str) -> float | None:
    return float(frame[column].mean()) if column in frame and frame[column].notna().any() else None


def _max(frame: pd.DataFrame, column: str) -> float | None:
    return float(frame[column].max()) if column in frame and frame[column].notna().any() else None


def _sum(frame: pd.DataFrame, column: str) -> float | None:
    return float(frame[column].sum()) if column in frame and frame[column].notna().any() else None


def _cost_table(stats: list[MethodStats]) -> Table:
    base = next((ms for ms in stats if ms.label == "vanilla"), None)
    base_epoch = _median(base.done, "seconds_per_epoch") if base is not None else None
    batch_columns = sorted({c for ms in stats for c in ms.done.columns
                            if c.startswith("predict_ms_per_img_b") and c != "predict_ms_per_img_b1"})
    big = batch_columns[0] if batch_columns else None
    headers = ["method", "train s/epoch", "x vanilla", "step ms", "ms/img b1", "x student", "FLOPs/img",
               "x student FLOPs",
               *([f"ms/img {big.rsplit('_', 1)[1]}", "img/s"] if big else []), "extra params", "epochs (total)",
               "peak MB"]
    rows = []
    for ms in stats:
        d = ms.done
        epoch = _median(d, "seconds_per_epoch")
        flops, student_flops = _median(d, "predict_flops_per_img"), _median(d, "student_flops_per_img")
        row = [ms.label, _num(epoch), _num(epoch / base_epoch) if epoch and base_epoch else "-",
               _num(_median(d, "train_step_ms")), _num(_median(d, "predict_ms_per_img_b1")),
               _num(_median(d, "predict_vs_student_b1")),
               _num(flops), _num(flops / student_flops) if flops and student_flops else "-"]
        if big:
            ms_big = _median(d, big)
            row += [_num(ms_big), _num(1000.0 / ms_big) if ms_big else "-"]
        total, main = _median(d, "total_epochs"), _median(d, "epochs")
        row += [_num(_median(d, "extra_params")),
                "-" if total is None else f"{total:.0f}" + (f" ({main:.0f} + {total - main:.0f})"
                                                             if main is not None and total != main else ""),
                _num(_median(d, "peak_memory_mb"))]
        rows.append(row)
    return Table("cost (medians over seeds)", headers, rows)


LEGEND = ("mean ± sd over seeds (n = finished runs); 95% CI = Student-t interval of the mean. *best = best epoch "
          "on the test split (test-selected, optimistic); last = final epoch; val-sel. = epoch chosen on a held-out "
          "split. Δ vs kd / vanilla: mean paired difference of top1 last over matching seeds ± its 95% CI half "
          "width (number of pairs); ~ = the CI contains 0 (inside the noise). many/medium/few: mean per-class "
          "top-1 at the last epoch. probe: the student's own fc on its detached feature (GenDD). val top1 (held-out): "
          "top-1 on the split held out of training, at the last epoch: the figure to choose settings by (never "
          "test). published: the "
          "anchor's number for this pair and method (kdbench/reference/published.csv), gap = ours - published. "
          "recipe: authors = every value of the method's reference recipe (kdbench/reference/recipes.csv); "
          "deviates = the suite runs other values for the keys named (declared, with reasons, in the suite). "
          "Cost: medians; ms/img timed inside each run after warm-up (median of repeats); x student = the method's "
          "full predict path over the student's plain forward; epochs (total) = main + extra stages.")


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
    lines += [f"stale      {rid}  {label} (suite {suite}: not in the plan that last ran there; left out of the "
              "tables, delete its folder or run the suite that made it)" for suite, rid, label in records.stale]
    return lines


def render(records: Records, fmt: str = "text", published: pd.DataFrame | None = None,
           figures: Sequence[str] = ()) -> str:
    """The report as text, markdown, LaTeX or HTML; ``csv`` gives the per-cell statistics."""
    published = load_published() if published is None else published
    if fmt == "csv":
        buffer = io.StringIO()
        cell_stats(records.frame, published).to_csv(buffer, index=False)
        variants = variant_summary(variant_rows(records.frame))
        if not variants.empty:  # a second block: the prediction variants, one row per (cell, method, variant)
            buffer.write("\n")
            variants.to_csv(buffer, index=False)
        return buffer.getvalue()
    style = STYLES[fmt]
    parts = []
    cells = cell_tables(records, published)
    if not cells:
        parts.append("no finished student runs found")
    for title, tables in cells:
        parts.append(_heading(title, fmt, 2))
        for table in tables:
            body = tabulate(table.rows, headers=table.headers, tablefmt=style, disable_numparse=True)
            parts.append(f"{_heading(table.title, fmt, 3)}\n{body}")
    parts.append(_paragraph(LEGEND, fmt))
    problems = problem_lines(records)
    if problems:
        parts.append(_heading(f"Runs not in the tables ({len(problems)})", fmt, 2))
        if fmt == "html":
            parts.append("<ul>" + "".join(f"<li><code>{html.escape(p)}</code></li>" for p in problems) + "</ul>")
        else:
            parts.append("\n".join(f"- {p}" if fmt == "markdown" else p for p in problems))
    if figures:
        parts.append(_heading("Figures", fmt, 2))
        parts += [_figure(name, fmt) for name in figures]
    text = "\n\n".join(parts) + "\n"
    return _html_page(text) if fmt == "html" else text


def _heading(text: str, fmt: str, level: int) -> str:
    if fmt == "markdown":
        return f"{'#' * (level + 1)} {text}"
    if fmt == "html":
        return f"<h{level}>{html.escape(text)}</h{level}>"
    if fmt == "latex":
        return f"% {text}"
    return text if level == 2 else f"[{text}]"


def _paragraph(text: str, fmt: str) -> str:
    return f"<p class='legend'>{html.escape(text)}</p>" if fmt == "html" else text


def _figure(name: str, fmt: str) -> str:
    if fmt == "html":
        return f"<figure><img src='{html.escape(name)}' alt='{html.escape(name)}'></figure>"
    if fmt == "markdown":
        return f"![{name}]({name})"
    return name


def _html_page(body: str) -> str:
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
             "margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}.legend{color:#444;font-size:90%}img{max-width:720px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>kdbench report</title><style>{style}</style>"
            f"</head><body><h1>kdbench report</h1>\n{body}</body></html>\n")


def write_outputs(records: Records, out: Path) -> list[Path]:
    """Write plots and the report in every format into ``out``; return the files written."""
    from kdbench.plots import write_plots

    out.mkdir(parents=True, exist_ok=True)
    figures = write_plots(records, out)
    names = [str(p.relative_to(out)) for p in figures]
    published = load_published()
    written = list(figures)
    for fmt, ext in (("text", "txt"), ("markdown", "md"), ("html", "html"), ("latex", "tex"), ("csv", "csv")):
        path = out / f"report.{ext}"
        store.atomic_write_bytes(path, render(records, fmt, published, names if fmt in ("markdown", "html")
                                              else ()).encode())
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point of ``python -m kdbench.report``."""
    parser = argparse.ArgumentParser(prog="python -m kdbench.report", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a results folder (all records below it are read)")
    parser.add_argument("--format", choices=["text", "markdown", "csv", "latex", "html"], default="text")
    parser.add_argument("--out", type=Path, help="also write report.{txt,md,html,tex,csv} and the plots here")
    args = parser.parse_args(argv)
    if not args.root.exists():
        print(f"error: results folder '{args.root}' does not exist", file=sys.stderr)
        return 2
    records = load_records(args.root)
    sys.stdout.write(render(records, args.format))
    if args.out:
        written = write_outputs(records, args.out)
        print(f"wrote {len(written)} files to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
