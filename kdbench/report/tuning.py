"""The tuning table: per cell of a tuned suite, the chosen values, the search space, the trials used of the
budget (the same for every method) and the tuning cost, from the final runs' records."""

from __future__ import annotations

import pandas as pd

from kdbench.report.fmt import Table, fmt_num, missing

CELL = ("regime", "teacher", "student", "label")


def tuning_tables(frame: pd.DataFrame) -> list[tuple[str, Table]]:
    """One table per dataset of the tuned cells (none when no run was tuned)."""
    if frame.empty or "tuned_chosen" not in frame.columns:
        return []
    tuned = frame.loc[frame.tuned_chosen.notna() & (frame.role == "student")]
    out = []
    for dataset, runs in tuned.groupby("dataset", sort=True):
        cells = runs.drop_duplicates(list(CELL)).sort_values(list(CELL))
        budgets = sorted(set(cells.tuned_budget))
        same = "the same budget for every method" if len(budgets) == 1 else "BUDGETS DIFFER"
        unit = "GPU-h" if set(cells.tuned_device) == {"gpu"} else "CPU-h"
        rows = [[str(c.regime), f"{c.teacher} -> {c.student}", str(c.label), str(c.tuned_chosen),
                 str(c.tuned_space), str(c.tuned_trials), fmt_num(None if missing(c.tuned_score) else c.tuned_score),
                 fmt_num(c.tuned_hours)] for c in cells.itertuples()]
        title = f"Tuning {dataset}: {same} ({'; '.join(budgets)}), chosen on the held-out split, never test"
        headers = ("regime", "pair", "method", "chosen", "search space", "trials", "held-out score", f"tuning {unit}")
        out.append((title, Table(title, list(headers), rows)))
    return out
