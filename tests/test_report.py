"""The report on FABRICATED records (fixtures written here): statistics, problem lists, formats."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from kdbench import store
from kdbench.report import cell_stats, load_records, render


def _record(run_id: str, label: str, seed: int, top1: float, state: str = "done", role: str = "student",
            regime: str = "balanced") -> dict:
    return {"schema": store.SCHEMA, "run_id": run_id, "state": state,
            "spec": {"role": role, "method": label, "label": label, "model": "s", "student": "s", "teacher": "t",
                     "teacher_id": "T1" if role == "student" else None, "dataset": {"name": "digits"},
                     "regime": {"name": regime}, "seed": seed, "epochs": 3},
            "metrics": {"top1_last": top1, "top1_best": top1 + 1, "top5_last": 99.0} if state == "done" else {},
            "stability": {"diverged_epoch": 2 if state == "diverged" else None}, "cost": {}}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    suite = tmp_path / "fixture"
    rows = [("r1", "kd", 0, 90.0), ("r2", "kd", 1, 92.0), ("r3", "kd", 2, 94.0), ("r4", "vanilla", 0, 80.0)]
    for run_id, label, seed, top1 in rows:
        store.atomic_write_json(suite / "runs" / run_id / "result.json", _record(run_id, label, seed, top1))
    teacher = _record("T1", "vanilla", 0, 99.0, role="teacher")
    store.atomic_write_json(suite / "teachers" / "T1" / "result.json", teacher)
    store.atomic_write_json(suite / "runs" / "r5" / "result.json", _record("r5", "vanilla", 1, 0, "diverged"))
    failed = {**_record("r6", "vanilla", 2, 0, "failed"), "error": "RuntimeError: boom"}
    store.atomic_write_json(suite / "runs" / "r6" / "result.json", failed)
    (suite / "runs" / "r7").mkdir(parents=True)
    (suite / "runs" / "r7" / "result.json").write_text("{corrupt")
    store.atomic_write_json(suite / "runs" / "r8" / "result.json", {**_record("r8", "kd", 3, 50), "schema": 0})
    store.atomic_write_json(suite / "suite.json", {"teachers": ["T1"], "runs": ["r1", "r2", "r3", "r4", "r5",
                                                                               "r6", "r9"]})
    return tmp_path


def test_statistics_match_hand_computed_values(results: Path) -> None:
    stats = cell_stats(load_records(results).frame).set_index("method")
    assert stats.loc["kd", "n"] == 3
    assert stats.loc["kd", "top1_last_mean"] == pytest.approx(92.0)
    assert stats.loc["kd", "top1_last_sd"] == pytest.approx(2.0)  # sample sd of 90, 92, 94
    assert stats.loc["vanilla", "n"] == 1 and stats.loc["vanilla", "top1_last_sd"] == 0.0


def test_problems_are_listed_and_the_rest_reports(results: Path) -> None:
    text = render(load_records(results))
    assert "92.00 ± 2.00" in text and "(teacher top-1 99.00)" in text
    assert "diverged   r5" in text and "at epoch 2" in text
    assert "failed     r6" in text and "RuntimeError: boom" in text
    assert "missing    r9" in text
    assert "r7/result.json: unreadable" in text
    assert "r8/result.json: schema 0, expected 1" in text
    assert "1 diverged, 1 failed" in text  # the vanilla row's 'not done' column


def test_formats(results: Path) -> None:
    records = load_records(results)
    frame = pd.read_csv(io.StringIO(render(records, "csv")))
    assert list(frame["method"]) == ["kd", "vanilla"]
    assert "\\toprule" in render(records, "latex")
    assert "| method" in render(records, "markdown")


def test_empty_folder_reports_nothing_found(tmp_path: Path) -> None:
    assert "no finished student runs found" in render(load_records(tmp_path))
