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
import base64
import html
import io
import re
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
EPOCH_ACCURACY = [("epoch_top1_last", "last [per-epoch]"), ("epoch_top1_best", "best* [per-epoch]"),
                  ("epoch_top1_val", "val-sel. [per-epoch]")]  # shown where some method's final predictor differs
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
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (path, problem): invalid values left out
    set_aside: list[str] = field(default_factory=list)  # invalid records `run` moved aside (and redid)


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
    metrics = {k: v for k, v in (record.get("metrics") or {}).items() if isinstance(v, int | float)}
    row.update(metrics)
    row.update(_predictor_columns(metrics, record.get("predictors") or {}))
    row["val_size"] = (record.get("data") or {}).get("val_size")
    row["wall_seconds"] = record.get("wall_seconds")
    row.update({k: v for k, v in (record.get("cost") or {}).items() if isinstance(v, int | float)})
    row.update({f"recipe_{k}": v for k, v in (spec.get("recipe") or {}).items()
                if isinstance(v, int | float | str | bool)})
    env = record.get("env") or {}
    row.update({f"env_{k}": v for k, v in env.items() if isinstance(v, int | float | str | bool)})
    return row


def _predictor_columns(metrics: dict[str, Any], predictors: dict[str, Any]) -> dict[str, Any]:
    """One predictor per column. ``top1_last/best/val`` are the method's own (final) predictor; ``epoch_top1_*``
    the per-epoch one. For a method whose final predictor differs (GenDD's N-sample sampler: its runner
    re-evaluates the last and the per-epoch-best epoch with it, keeping the per-epoch values as ``*_per_epoch``),
    its final ``best`` is the better of those two evaluations (so best >= last), and it has no final val-selected
    value (that epoch was never evaluated with the final predictor)."""
    differs = "top1_last_per_epoch" in metrics
    out: dict[str, Any] = {"predictor_final": predictors.get("final"), "predictor_epoch": predictors.get("per_epoch"),
                           "final_predictor_differs": differs}
    if not differs:
        for key in ("top1_last", "top1_best", "top1_val"):
            out[f"epoch_{key}"] = metrics.get(key)
        return out
    out.update(epoch_top1_last=metrics.get("top1_last_per_epoch"), epoch_top1_best=metrics.get("top1_best_per_epoch"),
               epoch_top1_val=metrics.get("top1_val"))
    finals = [v for v in (metrics.get("top1_last"), metrics.get("top1_best")) if v is not None]
    out.update(top1_best=max(finals) if finals else None, top1_val=None, top5_val=None)
    return out


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


def load_records(root: Path, include_stale: bool = False) -> Records:
    """Read every record below ``root``; list unreadable ones and runs a suite expects but has no record of.

    A suite folder's ``suite.json`` names the runs of the plan that last ran there. A record in that folder that
    the plan does not name (left over from an earlier version of the suite, e.g. before a method's parameters
    changed) is listed as stale and left out of the tables, so a cell never mixes two versions of a method;
    ``include_stale`` (``--all``) puts them in the tables too (still listed)."""
    root = Path(root)
    plans: dict[Path, set[str]] = {}
    missing, problems = [], []
    for suite_file in sorted(root.rglob(store.SUITE)):
        try:
            expected = store.read_json(suite_file)
        except store.StoreReadError as err:
            problems.append((str(suite_file), err.problem))
            continue
        folder = suite_file.parent
        plans[folder] = set()
        for kind, ids in (("teachers", expected.get("teachers", [])), ("runs", expected.get("runs", []))):
            plans[folder].update(ids)
            missing += [(folder.name, rid) for rid in ids if not (folder / kind / rid / store.RESULT).exists()]
    rows, stale, dropped = [], [], []
    for scanned in store.scan_results(root):
        if scanned.record is None:
            problems.append((str(scanned.path), scanned.problem or "unreadable"))
            continue
        dropped += [(str(scanned.path), what) for what in scanned.dropped]
        folder = scanned.path.parent.parent.parent  # <suite>/{runs,teachers}/<id>/result.json
        if folder in plans and scanned.path.parent.name not in plans[folder]:
            spec = scanned.record.get("spec") or {}
            stale.append((folder.name, scanned.path.parent.name, str(spec.get("label", spec.get("method")))))
            if not include_stale:
                continue
        rows.append(_flatten(scanned.record, scanned.path))
    set_aside = sorted(str(p) for p in root.rglob(f"{store.RESULT}.corrupt-*"))
    return Records(pd.DataFrame(rows), problems, missing, stale, dropped, set_aside)


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
    predictor: str = ""  # what its final predictor computes (from the records), e.g. "ddpm 100 steps, 5 samples"
    epoch_predictor: str = ""  # the per-epoch one, when it differs


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
        accuracy = {c: summarize(done[c].tolist()) if c in done else None
                    for c, _ in ACCURACY + EPOCH_ACCURACY + EXTRA_ACCURACY}
        mine = _by_seed(done)
        deltas = {base: (paired_delta(mine, seeds) if seeds and label != base else None)
                  for base, seeds in baseline_seeds.items()}
        epochs = int(runs["epochs"].iloc[0]) if pd.notna(runs["epochs"].iloc[0]) else None
        ref = None if published is None else lookup(published, first["dataset"], first["regime"], first["teacher"],
                                                     first["student"], method, epochs)
        not_done = runs[runs["state"] != "done"]["state"].value_counts().to_dict()
        differs = bool(done.get("final_predictor_differs", pd.Series(dtype=bool)).fillna(False).astype(bool).any())
        out.append(MethodStats(label, method, len(runs), done, accuracy, deltas, ref, not_done,
                               recipe_note(runs), _first(done, "predictor_final") or
                               ("final predictor" if differs else ""),
                               (_first(done, "predictor_epoch") or "per-epoch predictor") if differs else ""))
    return out


def _first(frame: pd.DataFrame, column: str) -> str:
    values = frame[column].dropna() if column in frame else pd.Series(dtype=str)
    return str(values.iloc[0]) if not values.empty else ""


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
    """``+0.89 ±5.21 (3)~``: paired mean difference, CI half width, n seeds, ``~`` when the CI contains 0;
    ``-24.89 (n=1)`` with one seed: no CI, so no claim either way."""
    if delta is None:
        return ""
    s = delta.summary
    if s.ci95 is None:
        return f"{s.mean:+.2f} (n={s.n})"
    return f"{s.mean:+.2f} ±{s.ci95:.2f} ({s.n}){'~' if delta.inside_noise else ''}"


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
    epoch_columns = EPOCH_ACCURACY if any(ms.epoch_predictor for ms in stats) else []
    shown = [(c, h) for c, h in ACCURACY + epoch_columns + EXTRA_ACCURACY if any(ms.accuracy.get(c) for ms in stats)]
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
    return Table(_accuracy_caption(stats, bool(epoch_columns)), headers, rows)


def _accuracy_caption(stats: list[MethodStats], epoch_columns: bool) -> str:
    """The accuracy table's title, naming each predictor: every column is one predictor."""
    own = sorted({ms.predictor for ms in stats if ms.predictor and not ms.epoch_predictor})
    special = [f"{ms.label}: {ms.predictor}" for ms in stats if ms.epoch_predictor]
    parts = [f"{'; '.join(special)}; others: {', '.join(own) or 'student logits'}" if special else
             (", ".join(own) if own else "")]
    caption = "accuracy, each method's own predictor" + (f" ({parts[0]})" if parts[0] else "")
    if epoch_columns:
        epoch = "; ".join(f"{ms.label}: {ms.epoch_predictor}" for ms in stats if ms.epoch_predictor)
        caption += f"; [per-epoch] = the predictor evaluated every epoch ({epoch}; others: their own)"
    return caption


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
          "width (number of pairs); ~ = the CI contains 0 (inside the noise); (n=1) = one seed: no CI, nothing "
          "resolved. [per-epoch] columns: the predictor evaluated every epoch, where a method's final one differs "
          "(GenDD's N-sample sampler); a final best* is the better of the final evaluations (last and the "
          "per-epoch-best epoch). many/medium/few: mean per-class "
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
    lines += [f"invalid    {path}: {why} (value left out of the tables)" for path, why in records.dropped]
    lines += [f"set aside  {path}  (an invalid record `kdbench run` moved aside before redoing its run)"
              for path in records.set_aside]
    lines += [f"stale      {rid}  {label} (suite {suite}: not in the plan that last ran there; left out of the "
              "tables unless --all; delete its folder or run the suite that made it)"
              for suite, rid, label in records.stale]
    return lines


TEXT_WIDTH = 120  # the terminal report's widest line


def split_columns(table: Table, width: int = TEXT_WIDTH, style: str = "simple") -> list[Table]:
    """A table too wide for ``width`` columns as several tables over consecutive column groups, each repeating
    the first (method) column; titles say which part they are."""
    def rendered_width(headers: list[str], rows: list[list[str]]) -> int:
        text = tabulate(rows, headers=headers, tablefmt=style, disable_numparse=True)
        return max((len(line) for line in text.splitlines()), default=0)

    if len(table.headers) <= 2 or rendered_width(table.headers, table.rows) <= width:
        return [table]
    groups: list[list[int]] = [[]]
    for index in range(1, len(table.headers)):
        trial = [0, *groups[-1], index]
        if groups[-1] and rendered_width([table.headers[i] for i in trial],
                                         [[row[i] for i in trial] for row in table.rows]) > width:
            groups.append([])
        groups[-1].append(index)
    return [Table(f"{table.title} ({k + 1}/{len(groups)})", [table.headers[0], *[table.headers[i] for i in group]],
                  [[row[0], *[row[i] for i in group]] for row in table.rows]) for k, group in enumerate(groups)]


def summary_tables(records: Records) -> tuple[list[str], list[tuple[str, Table, str]]]:
    """The first screen: what ran (lines), then per (dataset, regime) its leaderboard and resolution line."""
    from kdbench.report.summary import leaderboard_rows, leaderboards, resolution_line, what_ran

    ran = what_ran(records.frame, len(records.missing), len(records.stale))
    boards = []
    for board in leaderboards(records.frame):
        headers, rows = leaderboard_rows(board)
        boards.append((f"{board.dataset} · {board.regime}: {board.cells} cell(s)",
                       Table("leaderboard (mean rank over cells, 1 = best top1 last; W/T/L paired by seed)",
                             headers, rows), resolution_line(board)))
    return ran, boards


def render(records: Records, fmt: str = "text", published: pd.DataFrame | None = None,
           figures: Sequence[str] = (), figure_root: Path | None = None) -> str:
    """The report as text, markdown, LaTeX (a complete document) or HTML, summary first; ``csv`` is the
    per-cell statistics table (one table; :func:`write_outputs` writes the others to files of their own)."""
    published = load_published() if published is None else published
    if fmt == "csv":
        buffer = io.StringIO()
        cell_stats(records.frame, published).to_csv(buffer, index=False)
        return buffer.getvalue()
    cells = cell_tables(records, published)
    ran, boards = summary_tables(records)
    problems = problem_lines(records)
    if fmt == "latex":
        from kdbench.report.latex import latex_document

        sections = [(f"Summary: {title}", [table]) for title, table, _ in boards] + cells
        summary = ran + [line for _, _, line in boards]
        return latex_document("kdbench report", summary, sections, LEGEND, problems)
    style = STYLES[fmt]

    def table_text(table: Table) -> str:
        if fmt == "html":  # the title as the table's caption, the table in a scrolling box (never the page)
            body = tabulate(table.rows, headers=table.headers, tablefmt="html", disable_numparse=True)
            body = body.replace("<table>", f"<table><caption>{html.escape(table.title)}</caption>", 1)
            return f"<div class='scroll'>{body}</div>"
        parts = []
        for piece in (split_columns(table, TEXT_WIDTH, style) if fmt == "text" else [table]):
            body = tabulate(piece.rows, headers=piece.headers, tablefmt=style, disable_numparse=True)
            parts.append(f"{_heading(piece.title, fmt, 3)}\n{body}")
        return "\n\n".join(parts)

    parts = [_heading("Summary", fmt, 2), _paragraph("\n".join(_wrap(line, fmt) for line in ran), fmt)]
    for title, table, resolution in boards:
        parts += [_heading(title, fmt, 3), table_text(table), _paragraph(_wrap(resolution, fmt), fmt)]
    if not cells:
        parts.append("no finished student runs found")
    for title, tables in cells:
        parts.append(_heading(title, fmt, 2))
        parts += [table_text(table) for table in tables]
    parts.append(_paragraph(_wrap(LEGEND, fmt), fmt))
    if problems:
        parts.append(_heading(f"Runs not in the tables ({len(problems)})", fmt, 2))
        if fmt == "html":
            parts.append("<ul>" + "".join(f"<li><code>{html.escape(p)}</code></li>" for p in problems) + "</ul>")
        else:
            parts.append("\n".join(f"- {p}" if fmt == "markdown" else p for p in problems))
    if figures:
        parts.append(_heading("Figures", fmt, 2))
        parts += [_figure(name, fmt, figure_root) for name in figures]
    text = "\n\n".join(parts) + "\n"
    return _html_page(text) if fmt == "html" else text


def _wrap(text: str, fmt: str) -> str:
    """Text wrapped at the terminal width (other formats wrap themselves)."""
    import textwrap

    return "\n".join(textwrap.wrap(text, TEXT_WIDTH, subsequent_indent="  ")) if fmt == "text" else text


def _heading(text: str, fmt: str, level: int) -> str:
    if fmt == "markdown":
        return f"{'#' * (level + 1)} {text}"
    if fmt == "html":
        anchor = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
        return f"<h{level} id='{anchor}'>{html.escape(text)}</h{level}>"
    if fmt == "latex":
        return f"% {text}"
    return _wrap(text if level == 2 else f"[{text}]", "text")


def _paragraph(text: str, fmt: str) -> str:
    if fmt == "html":
        return "".join(f"<p class='legend'>{html.escape(line)}</p>" for line in text.splitlines())
    return text.replace("\n", "  \n") if fmt == "markdown" else text


def _figure(name: str, fmt: str, root: Path | None = None) -> str:
    if fmt == "html":  # embedded as a data URI: the page is one self-contained file
        path = (root / name) if root is not None else Path(name)
        src = name
        if path.is_file():
            src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        caption = html.escape(Path(name).stem.replace("_", " "))
        return f"<figure><img src='{src}' alt='{caption}'><figcaption>{caption}</figcaption></figure>"
    if fmt == "markdown":
        return f"![{name}]({name})"
    return name


def _html_page(body: str) -> str:
    """One self-contained page: a table of contents of the level-2 headings, then the body."""
    style = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1360px;padding:0 1em}"
             ".scroll{overflow-x:auto;max-width:100%;margin:.5em 0 1.5em}table{border-collapse:collapse}"
             "caption{caption-side:bottom;text-align:left;color:#444;font-size:85%;padding-top:4px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap;"
             "font-variant-numeric:tabular-nums}td:first-child,th:first-child{text-align:left}"
             "th{position:sticky;top:0;background:#f4f4f4}.legend{color:#444;font-size:90%}"
             "img{max-width:100%;height:auto}figure{margin:1em 0}figcaption{color:#444;font-size:85%}"
             "nav li{margin:2px 0}")
    toc = "".join(f"<li><a href='#{anchor}'>{title}</a></li>"
                  for anchor, title in re.findall(r"<h2 id='([^']*)'>(.*?)</h2>", body))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>kdbench report</title><style>{style}</style>"
            f"</head><body><h1>kdbench report</h1>\n<nav><ul>{toc}</ul></nav>\n{body}</body></html>\n")


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
                                              else (), figure_root=out).encode())
        written.append(path)
    written += write_data_files(records, out, published)
    return written


def write_data_files(records: Records, out: Path, published: pd.DataFrame | None = None) -> list[Path]:
    """runs.csv and runs.parquet (one row per run), cells.csv, leaderboard.csv and variants.csv: one table each."""
    from kdbench.report.summary import leaderboards
    from kdbench.report.tidy import runs_table, write_csv, write_parquet

    published = load_published() if published is None else published
    written = []
    if not records.frame.empty:
        runs = runs_table(records.frame)
        written += [write_csv(out / "runs.csv", runs), write_parquet(out / "runs.parquet", runs)]
    written.append(write_csv(out / "cells.csv", cell_stats(records.frame, published)))
    boards = []
    for board in leaderboards(records.frame):
        for standing in board.standings:
            boards.append({"dataset": board.dataset, "regime": board.regime, "method": standing.label,
                           "cells": standing.cells, "mean_rank": standing.mean_rank, "wins_vs_kd": standing.wins,
                           "ties_vs_kd": standing.ties, "losses_vs_kd": standing.losses,
                           "unresolved_vs_kd": standing.unresolved, "p_better_than_kd": standing.poi,
                           "p_better_than_kd_low": standing.poi_low, "p_better_than_kd_high": standing.poi_high,
                           "seeds": board.seeds, "mde_vs_kd": board.mde})
    written.append(write_csv(out / "leaderboard.csv", pd.DataFrame(boards)))
    variants = variant_summary(variant_rows(records.frame))
    if not variants.empty:
        written.append(write_csv(out / "variants.csv", variants))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point of ``python -m kdbench.report``."""
    parser = argparse.ArgumentParser(prog="python -m kdbench.report", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a results folder (all records below it are read)")
    parser.add_argument("--format", choices=["text", "markdown", "csv", "latex", "html"], default="text")
    parser.add_argument("--out", type=Path, help="also write report.{txt,md,html,tex,csv}, runs.{csv,parquet}, "
                        "cells/leaderboard/variants.csv and the plots (PNG + SVG) here")
    parser.add_argument("--all", action="store_true", help="include stale records (runs the results folder's "
                        "suite no longer names) in the tables; by default they are only listed")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        what = "is a file, not a folder" if args.root.exists() else "does not exist"
        print(f"error: results folder '{args.root}' {what}", file=sys.stderr)
        return 2
    records = load_records(args.root, include_stale=args.all)
    sys.stdout.write(render(records, args.format))
    if args.out:
        written = write_outputs(records, args.out)
        print(f"wrote {len(written)} files to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
