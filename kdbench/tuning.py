"""Running a tuned suite: the trial stage, the selection on the held-out split, then the final stage.

``kdbench run`` of a suite with ``tune:`` dispatches every cell's trials (after their teachers, locally or on
SLURM), reads the trials' records, picks per cell the configuration with the best mean held-out score over its
trial seeds (the first in trial order on a tie; test metrics are never read), writes ``tuning.json`` beside the
runs, and dispatches the final runs with the chosen values. Each final run's spec carries, under ``tuned``, the
search space, the budget, every trial's values and score, the chosen values and the tuning cost, so the report
can say "every method was tuned with the same budget". Rerunning skips what finished (trials and finals alike);
with ``wait: false`` on SLURM the final stage starts on the next ``kdbench run`` once the trials have ended.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdbench import store
from kdbench.dispatch import DispatchSummary, dispatch, run_dirs, suite_dir
from kdbench.suite.schema import Suite
from kdbench.suite.tuneplan import TuningPlan, budget, cell_name, final_plan, tuning_plan

TUNING = "tuning.json"


def _score(record: store.Record | None, metric: str) -> float | None:
    if record is None or record.state != "done":
        return None
    value = record.metrics.get(metric)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def select(trials: TuningPlan, root: Path, suite: Suite) -> tuple[dict, dict, list[dict[str, Any]]]:
    """Per cell: the chosen configuration, what the final runs record about it, and a row for ``tuning.json``."""
    dirs = run_dirs(root, trials.plan)
    metric = suite.tune.metric
    chosen, tuned, rows = {}, {}, []
    for key, cell_trials in trials.cells.items():
        records = {t.run_id: store.load_record(dirs[t.run_id]) for t in cell_trials}
        by_config: dict[int, list[float | None]] = {}
        for trial in cell_trials:
            by_config.setdefault(trial.index, []).append(_score(records[trial.run_id], metric))
        values = {t.index: t.values for t in cell_trials}
        scores = {i: statistics.fmean(s) for i, s in by_config.items() if s and all(v is not None for v in s)}
        seconds = sum(r.cost.get("train_seconds") or 0.0 for r in records.values() if r is not None)
        devices = max(1, suite.executor.gpus_per_run)
        row = {"cell": cell_name(key), "space": suite.tune.space_for(key[3]), "budget": budget(suite),
               "trials": [{"values": values[i], "score": scores.get(i), "run_ids": [t.run_id for t in cell_trials
                                                                                   if t.index == i]}
                          for i in sorted(values)],
               "trials_finished": len(scores), "cost_seconds": seconds,
               "cost_device_hours": seconds * devices / 3600, "device": "gpu" if suite.executor.gpus_per_run else "cpu"}
        if scores:
            best = max(sorted(scores), key=lambda i: scores[i])  # the first configuration among equal best scores
            chosen[key] = values[best]
            row.update(chosen=values[best], chosen_score=scores[best])
            tuned[key] = {k: row[k] for k in ("space", "budget", "trials", "trials_finished", "chosen",
                                              "chosen_score", "cost_seconds", "cost_device_hours", "device")}
        rows.append(row)
    return chosen, tuned, rows


def run_tuned(suite: Suite, results_root: Path, progress: bool = True,
              say: Callable[[str], None] = print) -> DispatchSummary:
    """Both stages of a tuned suite; returns the summary of the two dispatches together."""
    trials = tuning_plan(suite)
    root = suite_dir(results_root, trials.plan)
    say(f"tuning stage: {len(trials.plan.runs)} trial run(s) in {len(trials.cells)} cell(s), "
        f"{suite.tune.trials} trial(s) x {len(suite.tune.seeds)} seed(s) x {budget(suite)['epochs']} epochs per "
        f"method, selected on {suite.tune.metric}")
    first = dispatch(trials.plan, results_root, suite.executor, progress=progress)
    if first.queued:  # SLURM without waiting: the finals start on the next run, once the trials have ended
        say("tuning stage queued; run the same command again once it has ended to start the final stage")
        return first
    chosen, tuned, rows = select(trials, root, suite)
    store.atomic_write_json(root / TUNING, {"suite": suite.name, "budget": budget(suite), "cells": rows})
    for row in rows:
        picked = row.get("chosen")
        say(f"  {row['cell']}: " + (f"chose {picked} ({suite.tune.metric} {row['chosen_score']:.2f})" if picked
                                     else "no trial finished: its final runs are refused"))
    final = final_plan(suite, chosen, tuned)
    say(f"final stage: {len(final.runs)} run(s)")
    teacher_dirs = run_dirs(root, final)
    counted = sum(store.is_finished(teacher_dirs[t]) for t in final.teachers)  # the first stage counted them
    second = dispatch(final, results_root, suite.executor, progress=progress)
    merged = DispatchSummary(skipped=first.skipped + second.skipped - counted, states={**first.states, **second.states},
                             submitted=first.submitted + second.submitted, attached=first.attached + second.attached,
                             queued={**first.queued, **second.queued})
    return merged
