"""The per-cell tables (accuracy, stability, cost, prediction variants), the summary's leaderboards, the legend and
the list of runs not in the tables, as :class:`~kdbench.report.fmt.Table` objects of strings for every format."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from kdbench.report.fmt import Table, fmt_ci, fmt_delta, fmt_num, fmt_paired, fmt_summary, missing
from kdbench.report.hints import Hints
from kdbench.report.load import Records
from kdbench.report.options import ReportOptions
from kdbench.report.stats import (
    ACCURACY,
    EPOCH_ACCURACY,
    EXTRA_ACCURACY,
    MethodStats,
    cell_methods,
    cells,
    column,
    maximum,
    mean,
    median,
    published_for,
    total,
)
from kdbench.report.summary import Leaderboard, leaderboard_rows, leaderboards, resolution_line, what_ran
from kdbench.report.variants import GOAL_DROP, GOAL_RATIO, VariantStats, variant_rows, variant_stats


def teacher_title(frame: pd.DataFrame, cell: pd.DataFrame, published: pd.DataFrame | None) -> str:
    """``teacher top-1 <ours>; published <theirs>`` for the teacher the cell's runs distilled from."""
    ids = list(cell.teacher_id.dropna().unique())
    teachers = frame[(frame.role == "teacher") & frame.run_id.isin(ids) & (frame.state == "done")]
    ours = ", ".join(f"{v:.2f}" for v in column(teachers, "top1_last")) if not teachers.empty else "not available"
    ref = published_for(published, cell, "teacher")
    return f"teacher top-1 {ours}" + (f"; published {ref.top1:.2f}" if ref is not None else "")


def cell_tables(records: Records, published: pd.DataFrame | None = None, options: ReportOptions | None = None,
                variants: Sequence[VariantStats] | None = None) -> list[tuple[str, list[Table]]]:
    """Per cell: its title and its accuracy, stability and cost tables, and the prediction-variants table where
    runs evaluated other predictors of their trained model (``variants``: the frame's :func:`~kdbench.report.
    variants.variant_stats`, computed here when not given)."""
    options = options or ReportOptions()
    frame = records.frame
    variants = variant_stats(variant_rows(frame, records.hints)) if variants is None else variants
    out = []
    for key, cell in cells(frame):
        dataset, regime, teacher, student = key
        title = f"{dataset} · {regime} · {teacher} -> {student}   ({teacher_title(frame, cell, published)})"
        stats = cell_methods(cell, published, options)
        tables = [accuracy_table(stats, options), stability_table(stats), cost_table(stats, options)]
        mine = [v for v in variants if v.cell() == tuple(key)]
        if mine:
            tables.append(variants_table(mine))
        out.append((title, tables))
    return out


def variants_table(variants: Sequence[VariantStats]) -> Table:
    """One cell's prediction variants: top-1, paired deltas, timings, FLOPs and whether each meets the goal."""
    batch = [v.batch for v in variants if not missing(v.batch)]
    big = f"ms/img b{batch[0]}" if batch else "ms/img batch"
    references = sorted({v.reference for v in variants if v.reference})
    reference = references[0] if len(references) == 1 else "reference"
    headers = list(("method", "variant", "how", "n", "top1", "Δ vs own", f"Δ vs {reference}", "ms/img b1",
                    "x student", big, "MFLOPs/img", f"goal (<= {GOAL_RATIO:g}x, >= -{GOAL_DROP:g})"))
    rows = []
    for v in variants:
        if missing(v.top1_mean):
            top1 = "-"
        else:
            spread = "" if v.n < 2 or missing(v.top1_sd) else f" ± {v.top1_sd:.2f}"
            top1 = f"{v.top1_mean:.2f}{spread}"
        delta = "" if v.own else fmt_paired(v.delta_mean, v.delta_ci95, v.n)
        vs_ref = "" if v.own and v.label == v.reference else fmt_paired(v.delta_ref_mean, v.delta_ref_ci95,
                                                                         v.delta_ref_n)
        flops = None if missing(v.flops) else v.flops / 1e6
        rows.append([v.label, v.variant, v.how, str(v.n), top1, delta, vs_ref, fmt_num(v.ms_b1),
                     fmt_num(v.x_student), fmt_num(v.ms_batch), fmt_num(flops),
                     "" if v.own else ("yes" if v.meets_goal else "no")])
    return Table("prediction variants of the same trained runs (paired with each run's own prediction; medians "
                 "of timings)", headers, rows)


def accuracy_table(stats: list[MethodStats], options: ReportOptions | None = None) -> Table:
    """Accuracy per method: every column one predictor; paired deltas; the published number and gap; recipe."""
    baselines = (options or ReportOptions()).baselines
    epoch_columns = EPOCH_ACCURACY if any(ms.epoch_predictor for ms in stats) else ()
    shown = [c for c in (*ACCURACY, *epoch_columns, *EXTRA_ACCURACY) if any(ms.accuracy.get(c.name) for ms in stats)]
    has_ref = any(ms.published is not None for ms in stats)
    has_recipe = any(ms.recipe for ms in stats)
    headers = list(("method", "n", *[c.header for c in shown[:1]], "95% CI", *[c.header for c in shown[1:]],
                    *[f"Δ vs {b}" for b in baselines], *(("published", "gap") if has_ref else ()),
                    *(("recipe",) if has_recipe else ()), "not done"))
    rows = []
    for ms in stats:
        first = ms.accuracy.get(shown[0].name) if shown else None
        row = [ms.label, str(len(ms.done)), *[fmt_summary(first)] * bool(shown), fmt_ci(first),
               *[fmt_summary(ms.accuracy.get(c.name)) for c in shown[1:]],
               *[fmt_delta(ms.deltas.get(b)) for b in baselines]]
        if has_ref:
            ours = f"{ms.published.top1:.2f}" if ms.published is not None else ""
            gap = f"{first.mean - ms.published.top1:+.2f}" if ms.published is not None and first is not None else ""
            row += [ours, gap]
        if has_recipe:
            row.append(ms.recipe)
        row.append(", ".join(f"{n} {s}" for s, n in ms.not_done.items()))
        rows.append(row)
    return Table(accuracy_caption(stats, bool(epoch_columns)), headers, rows)


def accuracy_caption(stats: list[MethodStats], epoch_columns: bool) -> str:
    """The accuracy table's title, naming each predictor: every column is one predictor."""
    own = sorted({ms.predictor for ms in stats if ms.predictor and not ms.epoch_predictor})
    special = [f"{ms.label}: {ms.predictor}" for ms in stats if ms.epoch_predictor]
    named = (f"{'; '.join(special)}; others: {', '.join(own) or 'student logits'}" if special else
             (", ".join(own) if own else ""))
    caption = "accuracy, each method's own predictor" + (f" ({named})" if named else "")
    if epoch_columns:
        epoch = "; ".join(f"{ms.label}: {ms.epoch_predictor}" for ms in stats if ms.epoch_predictor)
        caption += f"; [per-epoch] = the predictor evaluated every epoch ({epoch}; others: their own)"
    return caption


def stability_table(stats: list[MethodStats]) -> Table:
    """Per method: diverged/total, failed, the seed sd of top1 last, loss spikes, gradient peaks, non-finite."""
    headers = list(("method", "diverged/total", "failed", "seed sd (top1 last)", "loss spikes/run", "max grad norm",
                    "non-finite events"))
    rows = []
    for ms in stats:
        summary = ms.accuracy.get("top1_last")
        finished = ms.done
        rows.append([ms.label, f"{ms.not_done.get('diverged', 0)}/{ms.runs}", str(ms.not_done.get("failed", 0)),
                     "-" if summary is None or summary.n < 2 else f"{summary.sd:.2f}",
                     fmt_num(mean(finished, "loss_spikes"), 2), fmt_num(maximum(finished, "grad_norm_max"), 3),
                     fmt_num(total(finished, "nonfinite_events"), 3)])
    return Table("stability", headers, rows)


def _epochs_text(total_epochs: float | None, main: float | None) -> str:
    if total_epochs is None:
        return "-"
    extra = f" ({main:.0f} + {total_epochs - main:.0f})" if main is not None and total_epochs != main else ""
    return f"{total_epochs:.0f}{extra}"


def cost_table(stats: list[MethodStats], options: ReportOptions | None = None) -> Table:
    """Medians over seeds: train time (and its ratio to the control's), step time, inference time and FLOPs
    (and their ratio to the student's forward), throughput at batch B, extra parameters, epochs, memory."""
    control = (options or ReportOptions()).control
    base = next((ms for ms in stats if ms.label == control), None)
    base_epoch = median(base.done, "seconds_per_epoch") if base is not None else None
    batch_columns = sorted({c for ms in stats for c in ms.done.columns
                            if c.startswith("predict_ms_per_img_b") and c != "predict_ms_per_img_b1"})
    big = batch_columns[0] if batch_columns else None
    headers = list(("method", "train s/epoch", f"x {control}", "step ms", "ms/img b1", "x student", "FLOPs/img",
                    "x student FLOPs", *((f"ms/img {big.rsplit('_', 1)[1]}", "img/s") if big else ()),
                    "extra params", "epochs (total)", "peak MB"))
    rows = []
    for ms in stats:
        d = ms.done
        epoch = median(d, "seconds_per_epoch")
        flops, student_flops = median(d, "predict_flops_per_img"), median(d, "student_flops_per_img")
        row = [ms.label, fmt_num(epoch), fmt_num(epoch / base_epoch) if epoch and base_epoch else "-",
               fmt_num(median(d, "train_step_ms")), fmt_num(median(d, "predict_ms_per_img_b1")),
               fmt_num(median(d, "predict_vs_student_b1")),
               fmt_num(flops), fmt_num(flops / student_flops) if flops and student_flops else "-"]
        if big:
            ms_big = median(d, big)
            row += [fmt_num(ms_big), fmt_num(1000.0 / ms_big) if ms_big else "-"]
        row += [fmt_num(median(d, "extra_params")), _epochs_text(median(d, "total_epochs"), median(d, "epochs")),
                fmt_num(median(d, "peak_memory_mb"))]
        rows.append(row)
    return Table("cost (medians over seeds)", headers, rows)


def _examples(labels: list[str], text: str = "", possessive: bool = False) -> str:
    """`` (A's, B's text)``: examples from the methods' declared labels; ``""`` where none declares one."""
    if not labels:
        return ""
    names = [label + "'s" if possessive else label for label in labels]
    return f" ({', '.join(names)}{text})"


def legend(options: ReportOptions | None = None, hints: Hints | None = None) -> str:
    """What every column means (printed under the tables); ``hints``: the report's methods' report hints, whose
    declared labels name the examples (none without hints)."""
    options = options or ReportOptions()
    hints = hints or Hints()
    sampler = _examples(hints.labels(own_predictor=True), " N-sample sampler", possessive=True)
    probe = _examples(hints.labels())
    return (
        "mean ± sd over seeds (n = finished runs); 95% CI = Student-t interval of the mean. *best = best epoch "
        "on the test split (test-selected, optimistic); last = final epoch; val-sel. = epoch chosen on a held-out "
        f"split. Δ vs {options.baseline} / {options.control}: mean paired difference of top1 last over matching "
        "seeds ± its 95% CI half "
        "width (number of pairs); ~ = the CI contains 0 (inside the noise); (n=1) = one seed: no CI, nothing "
        "resolved. [per-epoch] columns: the predictor evaluated every epoch, where a method's final one differs"
        f"{sampler}; a final best* is the better of the final evaluations (last and the "
        "per-epoch-best epoch). many/medium/few: mean per-class "
        f"top-1 at the last epoch. probe: the student's own fc on its detached feature{probe}. val top1 (held-out): "
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
        for row in frame[frame.state == "diverged"].itertuples():
            lines.append(f"diverged   {row.run_id}  {row.label} {row.regime} seed {row.seed} "
                         f"at epoch {row.diverged_epoch}")
        for row in frame[frame.state == "failed"].itertuples():
            lines.append(f"failed     {row.run_id}  {row.role} {row.label} {row.regime} "
                         f"seed {row.seed}: {row.error}")
    lines += [f"missing    {rid}  (suite {suite}: no result.json yet)" for suite, rid in records.missing]
    lines += [f"unreadable {path}: {why}" for path, why in records.problems]
    lines += [f"invalid    {path}: {why} (value left out of the tables)" for path, why in records.dropped]
    lines += [f"set aside  {path}  (an invalid record `kdbench run` moved aside before redoing its run)"
              for path in records.set_aside]
    lines += [f"stale      {rid}  {label} (suite {suite}: not in the plan that last ran there; left out of the "
              "tables unless --all; delete its folder or run the suite that made it)"
              for suite, rid, label in records.stale]
    return lines


def leaderboard_table(board: Leaderboard) -> Table:
    """One (dataset, regime)'s leaderboard as a table."""
    headers, rows = leaderboard_rows(board)
    return Table("leaderboard (mean rank over cells, 1 = best top1 last; W/T/L paired by seed)", headers, rows)


def summary_tables(records: Records, boards: Sequence[Leaderboard] | None = None,
                   options: ReportOptions | None = None) -> tuple[list[str], list[tuple[str, Table, str]]]:
    """The first screen: what ran (lines), then per (dataset, regime) its leaderboard and resolution line
    (``boards``: the frame's leaderboards, computed here when not given)."""
    boards = leaderboards(records.frame, options) if boards is None else boards
    ran = what_ran(records.frame, len(records.missing), len(records.stale))
    return ran, [(f"{board.dataset} · {board.regime}: {board.cells} cell(s)", leaderboard_table(board),
                  resolution_line(board)) for board in boards]
