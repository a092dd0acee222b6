"""Prediction variants of one trained run, side by side (the report's "GenDD prediction" table and plot).

A method may evaluate other predictors of the same trained model at the end of a run (GenDD: other samplers of
its head, the one-step estimate, a distilled linear map); the record keeps, per variant, its top-1 and its
latency (``extra_evaluations``). Here every variant is paired with the run's own final prediction (the authors'
sampler for GenDD) on the same checkpoint and seed: the delta is the mean over seeds of (variant - own), with its
95% CI. Variants of other runs in the cell (e.g. a flow-matching head) are also paired by seed with the reference
method's own prediction (label ``REFERENCE``: GenDD with the authors' sampler). The goal column marks variants
within ``GOAL_RATIO`` x the student's forward at batch 1 and no more than ``GOAL_DROP`` points below the
reference (the run's own prediction where the cell has no reference runs): issue 9's target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kdbench import store
from kdbench.stats import summarize

GOAL_RATIO = 2.0  # x the student's own forward, batch 1
GOAL_DROP = 0.3   # top-1 points below the run's own (authors') prediction
OWN = "own prediction"
REFERENCE = "gendd"  # the label whose own prediction is the authors' sampler


def _sampler_text(settings: dict[str, Any] | None) -> str:
    if not settings:
        return ""
    if settings.get("sampler") == "distilled":
        return "linear map of LN(f_s)"
    return (f"{settings.get('sampler')} K={settings.get('steps')} x{settings.get('samples')} "
            f"cfg {settings.get('cfg'):g} t{settings.get('start_step')}")


def variant_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (finished run, variant), the run's own prediction included, with its timings and the paired
    difference to the own prediction."""
    rows = []
    if frame.empty or "role" not in frame:
        return pd.DataFrame()
    runs = frame[(frame["role"] == "student") & (frame["state"] == "done")]
    for _, run in runs.iterrows():
        record = store.result_or_empty(Path(run["path"]))
        variants = record.get("extra_evaluations") or {}
        if not variants:
            continue
        diagnostics = record.get("diagnostics") or {}
        cost, metrics = record.get("cost") or {}, record.get("metrics") or {}
        own_top1 = metrics.get("top1_last")
        base = {"dataset": run["dataset"], "regime": run["regime"], "teacher": run["teacher"],
                "student": run["student"], "label": run["label"], "seed": run["seed"], "run_id": run["run_id"]}
        settings = diagnostics.get("sweep_settings") or {}
        entries = [(OWN, {"top1": own_top1, **cost}, diagnostics.get("sampler"))]
        entries += [(name, result, settings.get(name)) for name, result in variants.items()]
        for name, result, setting in entries:
            batch_key = next((k for k in sorted(result) if k.startswith("predict_ms_per_img_b")
                              and k != "predict_ms_per_img_b1"), None)
            rows.append({**base, "variant": name, "how": _sampler_text(setting), "top1": result.get("top1"),
                         "delta": None if own_top1 is None or result.get("top1") is None
                         else result["top1"] - own_top1,
                         "ms_b1": result.get("predict_ms_per_img_b1"),
                         "ms_batch": result.get(batch_key) if batch_key else None,
                         "batch": batch_key.rsplit("_b", 1)[1] if batch_key else None,
                         "x_student": result.get("predict_vs_student_b1"),
                         "flops": result.get("predict_flops_per_img"),
                         "student_flops": result.get("student_flops_per_img")})
    return pd.DataFrame(rows)


def variant_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, label, variant): top-1 mean/sd, paired deltas (vs the run's own prediction and vs the
    reference method's) with CI half widths, median timings, and whether it meets the goal."""
    if rows.empty:
        return rows
    cell = ["dataset", "regime", "teacher", "student"]
    reference = rows[(rows["label"] == REFERENCE) & (rows["variant"] == OWN)]
    reference_top1 = {(*key, seed): top1 for *key, seed, top1 in
                      reference[[*cell, "seed", "top1"]].itertuples(index=False)}
    out = []
    keys = [*cell, "label", "variant"]
    for key, group in rows.groupby(keys, sort=False, dropna=False):
        top1 = summarize(group["top1"].dropna().tolist())
        delta = summarize(group["delta"].dropna().tolist())
        vs_ref = summarize([r.top1 - reference_top1[(*key[:4], r.seed)] for r in group.itertuples()
                            if (*key[:4], r.seed) in reference_top1 and r.top1 is not None])
        judged = vs_ref if vs_ref is not None else delta
        ratio = group["x_student"].median()
        meets = (key[-1] != OWN and ratio is not None and pd.notna(ratio) and judged is not None
                 and ratio <= GOAL_RATIO and judged.mean >= -GOAL_DROP)
        out.append({**dict(zip(keys, key, strict=True)), "how": group["how"].iloc[0], "n": len(group),
                    "top1_mean": top1.mean if top1 else None, "top1_sd": top1.sd if top1 else None,
                    "delta_mean": delta.mean if delta else None, "delta_ci95": delta.ci95 if delta else None,
                    "delta_ref_mean": vs_ref.mean if vs_ref else None,
                    "delta_ref_ci95": vs_ref.ci95 if vs_ref else None, "delta_ref_n": vs_ref.n if vs_ref else 0,
                    "ms_b1": group["ms_b1"].median(), "ms_batch": group["ms_batch"].median(),
                    "batch": group["batch"].iloc[0], "x_student": ratio, "flops": group["flops"].median(),
                    "student_flops": group["student_flops"].median(), "meets_goal": bool(meets)})
    table = pd.DataFrame(out)
    table["_own_last"] = table["variant"] != OWN  # each method's own prediction first, then its variants by name
    return table.sort_values([*cell, "label", "_own_last", "variant"]).drop(columns="_own_last").reset_index(drop=True)
