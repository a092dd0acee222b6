"""Prediction variants of one trained run, side by side (the report's "prediction variants" table and plot).

A method may evaluate other predictors of the same trained model at the end of a run (e.g. other samplers of a
generative head, a one-step estimate, a distilled linear map); the record keeps, per variant, its top-1 and its
latency (``extra_evaluations``, in the frame as ``eval/<variant>/<field>`` columns). Here every variant is paired
with the run's own final prediction on the same checkpoint and seed: the delta is the mean over seeds of
(variant - own), with its 95% CI. Where the method's report hints say its own prediction is the reference
(``reference``), every variant is also paired by seed with the own prediction of the cell's runs labelled with the
method's name (the method as registered, e.g. a flow-matching variant of a method against the method's default).
A variant's settings read as the hints' ``setting_text`` / ``setting_labels`` say (:func:`~kdbench.report.hints.
describe`). The goal column marks variants within ``GOAL_RATIO`` x the student's forward at batch 1 and no more
than ``GOAL_DROP`` points below the reference (the run's own prediction where there are no reference runs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kdbench.report.hints import Hints, describe, hints_of
from kdbench.report.load import OWN, evaluations_of, settings_of
from kdbench.report.stats import CELL, summarize

GOAL_RATIO = 2.0  # x the student's own forward, batch 1
GOAL_DROP = 0.3   # top-1 points below the reference prediction
BATCH_PREFIX = "predict_ms_per_img_b"
B1 = "predict_ms_per_img_b1"
OWN_COST = ("predict_vs_student_b1", "predict_flops_per_img", "student_flops_per_img")  # the run's cost columns


def _value(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _batch_key(values: Mapping[str, Any]) -> str | None:
    return next((k for k in sorted(values) if k.startswith(BATCH_PREFIX) and k != B1), None)


def _variant_row(base: dict[str, Any], name: str, values: Mapping[str, Any], own_top1: Any,
                 how: str) -> dict[str, Any]:
    key, top1 = _batch_key(values), values.get("top1")
    return {**base, "variant": name, "how": how, "top1": top1,
            "delta": None if own_top1 is None or top1 is None else top1 - own_top1,
            "ms_b1": values.get(B1), "ms_batch": values.get(key) if key else None,
            "batch": key.rsplit("_b", 1)[1] if key else None, "x_student": values.get("predict_vs_student_b1"),
            "flops": values.get("predict_flops_per_img"), "student_flops": values.get("student_flops_per_img")}


def variant_rows(frame: pd.DataFrame, hints: Hints | None = None) -> pd.DataFrame:
    """One row per (finished student run, variant), the run's own prediction included, with its timings, the
    paired difference to the own prediction, its settings as text and the label its method's reference runs
    carry (``""`` where the method declares none). ``hints``: the report's (looked up here when not given)."""
    if frame.empty or "role" not in frame:
        return pd.DataFrame()
    hints = hints_of(frame, hints)
    rows = []
    runs = frame[(frame.role == "student") & (frame.state == "done")]
    for run in runs.to_dict("records"):
        run = {k: _value(v) for k, v in run.items()}
        variants = evaluations_of(run)
        own = variants.pop(OWN, {})
        if not variants:
            continue
        declared = hints.of(run.get("method"))
        base = {name: run.get(name) for name in (*CELL, "label", "method", "seed", "run_id")}
        base.update(reference=str(run.get("method")) if declared.reference else "")
        own_values = {k: v for k, v in run.items() if v is not None and (k.startswith(BATCH_PREFIX) or k in OWN_COST)}
        own_top1 = run.get("top1_last")
        rows.append(_variant_row(base, OWN, {"top1": own_top1, **own_values}, own_top1,
                                 describe(declared, settings_of(own))))
        rows += [_variant_row(base, name, values, own_top1, describe(declared, settings_of(values)))
                 for name, values in variants.items()]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class VariantStats:
    """One variant of one method in one cell: top-1 over seeds, its paired deltas (vs the run's own prediction
    and vs the reference's), median timings, and whether it meets the goal."""

    dataset: Any
    regime: Any
    teacher: Any
    student: Any
    label: str
    variant: str
    how: str
    n: int
    top1_mean: float | None
    top1_sd: float | None
    delta_mean: float | None
    delta_ci95: float | None
    delta_ref_mean: float | None
    delta_ref_ci95: float | None
    delta_ref_n: int
    ms_b1: float | None
    ms_batch: float | None
    batch: str | None
    x_student: float | None
    flops: float | None
    student_flops: float | None
    meets_goal: bool
    reference: str = dataclasses.field(default="", compare=False)  # the label the reference delta pairs with
    # ("": the method declares no reference)

    @property
    def own(self) -> bool:
        """This is the run's own prediction (not another variant)."""
        return self.variant == OWN

    def cell(self) -> tuple:
        """The cell it belongs to: (dataset, regime, teacher, student)."""
        return (self.dataset, self.regime, self.teacher, self.student)


def _sort_key(stats: VariantStats) -> tuple:
    def text(value: Any) -> tuple[bool, str]:
        return (_value(value) is None, "" if _value(value) is None else str(value))

    return (*[text(v) for v in stats.cell()], text(stats.label), not stats.own, text(stats.variant))


def variant_stats(rows: pd.DataFrame) -> list[VariantStats]:
    """Per (cell, label, variant), each method's own prediction first, then its variants by name."""
    if rows.empty:
        return []
    own = rows[rows.variant == OWN]
    reference_top1 = {(*key, seed): top1 for *key, seed, top1 in own.loc[:, [*CELL, "label", "seed", "top1"]]
                      .itertuples(index=False)}
    keys = [*CELL, "label", "variant"]
    out = []
    for key, group in rows.groupby(keys, sort=False, dropna=False):
        reference = str(group.reference.iloc[0])
        top1 = summarize(group.top1.dropna().tolist())
        delta = summarize(group.delta.dropna().tolist())
        vs_ref = summarize([r.top1 - reference_top1.get((*key[:4], reference, r.seed)) for r in group.itertuples()
                            if reference and (*key[:4], reference, r.seed) in reference_top1 and r.top1 is not None])
        judged = vs_ref if vs_ref is not None else delta
        ratio = group.x_student.median()
        meets = (key[-1] != OWN and ratio is not None and pd.notna(ratio) and judged is not None
                 and ratio <= GOAL_RATIO and judged.mean >= -GOAL_DROP)
        out.append(VariantStats(
            *key, how=group.how.iloc[0], n=len(group), top1_mean=top1.mean if top1 else None,
            top1_sd=top1.sd if top1 else None, delta_mean=delta.mean if delta else None,
            delta_ci95=delta.ci95 if delta else None, delta_ref_mean=vs_ref.mean if vs_ref else None,
            delta_ref_ci95=vs_ref.ci95 if vs_ref else None, delta_ref_n=vs_ref.n if vs_ref else 0,
            ms_b1=group.ms_b1.median(), ms_batch=group.ms_batch.median(), batch=group.batch.iloc[0],
            x_student=ratio, flops=group.flops.median(), student_flops=group.student_flops.median(),
            meets_goal=bool(meets), reference=reference))
    return sorted(out, key=_sort_key)


def variants_frame(stats: list[VariantStats]) -> pd.DataFrame:
    """Variant statistics as a table (what ``variants.csv`` holds), one row per (cell, label, variant)."""
    return pd.DataFrame([{k: v for k, v in dataclasses.asdict(s).items() if k != "reference"} for s in stats])


def variant_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """:func:`variant_stats` of :func:`variant_rows` as a table (:func:`variants_frame`)."""
    return rows if rows.empty else variants_frame(variant_stats(rows))
