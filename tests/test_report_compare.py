"""``--compare``: per cell, whether these results reproduce a reference run's within seed noise (issue 19)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from kdbench import store
from kdbench.report.compare import compare_table, verdict


def _frame(rows: list[tuple[str, int, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"role": "student", "state": "done", "dataset": "digits", "regime": "balanced",
                          "teacher": "t", "student": "s", "label": label, "seed": seed, "top1_last": top1}
                         for label, seed, top1 in rows])


def test_the_verdict_follows_welchs_test_over_seeds() -> None:
    same = pd.Series([94.0, 95.0, 96.0])
    assert verdict(same, pd.Series([94.5, 95.5, 95.0]))[0] == "reproduced within noise"
    assert verdict(same, pd.Series([84.0, 85.0, 86.0]))[0] == "differs"
    assert verdict(pd.Series([95.0]), pd.Series([94.0]))[0] == "cannot tell (one seed each)"
    # one seed here: the reference's seed sd stands for both
    outcome, p = verdict(pd.Series([95.2]), same)
    assert outcome == "reproduced within noise" and 0.05 < p <= 1.0


def test_cells_on_one_side_only_are_named() -> None:
    ours = _frame([("kd", 0, 95.0), ("kd", 1, 96.0), ("mse", 0, 93.0), ("mse", 1, 92.0)])
    theirs = _frame([("kd", 0, 95.5), ("kd", 1, 95.0), ("gendd", 0, 88.0), ("gendd", 1, 89.0)])
    table = compare_table(ours, theirs, "ref")
    by_method = {row[2]: row[-1] for row in table.rows}
    assert by_method == {"kd": "reproduced within noise", "mse": "only in these results",
                         "gendd": "only in the reference"}


def _record(root: Path, run_id: str, label: str, seed: int, top1: float) -> None:
    spec = {"role": "student", "method": label, "label": label, "model": "s", "student": "s", "teacher": "t",
            "dataset": {"name": "digits", "params": {}}, "regime": {"name": "balanced", "params": {}}, "seed": seed,
            "epochs": 3}
    store.atomic_write_json(root / "s" / "runs" / run_id / store.RESULT, {
        "schema": store.SCHEMA, "run_id": run_id, "state": "done", "spec": spec,
        "metrics": {"top1_last": top1}, "stability": {}, "cost": {}})


def test_the_command_compares_with_a_shipped_report_folder(tmp_path: Path) -> None:
    for i, (label, seed, top1) in enumerate([("kd", 0, 95.0), ("kd", 1, 96.0), ("kd", 2, 95.5)]):
        _record(tmp_path / "ref", f"r{i}", label, seed, top1)
        _record(tmp_path / "mine", f"m{i}", label, seed, top1 - 0.3)
    out = tmp_path / "example"
    made = subprocess.run([sys.executable, "-m", "kdbench.report", str(tmp_path / "ref"), "--out", str(out)],
                          capture_output=True, text=True)
    assert made.returncode == 0 and (out / "runs.csv").is_file(), made.stderr
    done = subprocess.run([sys.executable, "-m", "kdbench.report", str(tmp_path / "mine"), "--compare", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Compared with" in done.stdout and "reproduced within noise" in done.stdout
    assert "95.20 ± 0.50 (3)" in done.stdout and "-0.30" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "kdbench.report", str(tmp_path / "mine"), "--compare",
                          str(tmp_path / "nothing")], capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a folder" in bad.stderr
