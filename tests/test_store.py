"""Atomic writes, torn JSON lines and scanning of records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kdbench import store


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "result.json"
    store.atomic_write_json(path, {"state": "done"})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.atomic_write_json(path, {"state": "failed"})
    assert json.loads(path.read_text()) == {"state": "done"}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"], "no temporary file is left behind"


def test_non_finite_numbers_become_null(tmp_path: Path) -> None:
    store.atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert store.read_json(tmp_path / "r.json") == {"a": None, "b": [None, 1.5]}


def test_torn_last_jsonl_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert store.read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]


def test_appended_lines_follow_a_torn_line_only_after_a_rewrite(tmp_path: Path) -> None:
    """metrics.jsonl is appended to, one line per epoch (no rewrite of the whole file, no fsync); a killed
    writer's torn line hides what follows until the loop rewrites the file from the checkpoint on resume."""
    path = tmp_path / "metrics.jsonl"
    store.append_jsonl(path, {"epoch": 1, "loss": float("nan")})
    store.append_jsonl(path, {"epoch": 2})
    assert store.read_jsonl(path) == [{"epoch": 1, "loss": None}, {"epoch": 2}]
    with open(path, "a") as f:
        f.write('{"epo')  # killed mid-line
    store.append_jsonl(path, {"epoch": 3})
    assert store.read_jsonl(path) == [{"epoch": 1, "loss": None}, {"epoch": 2}]
    store.atomic_write_jsonl(path, [{"epoch": 1}, {"epoch": 2}])  # what resuming from the checkpoint does
    store.append_jsonl(path, {"epoch": 3})
    assert [row["epoch"] for row in store.read_jsonl(path)] == [1, 2, 3]


def test_scan_lists_corrupt_and_old_schema_records(tmp_path: Path) -> None:
    store.atomic_write_json(tmp_path / "a" / "result.json", {"schema": store.SCHEMA, "run_id": "a", "state": "done",
                                                             "spec": {}})
    store.atomic_write_json(tmp_path / "b" / "result.json", {"schema": 0, "state": "done"})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "result.json").write_text("{not json")
    store.atomic_write_json(tmp_path / ".submitit" / "x" / "result.json", {"ignored": True})
    found = {p.path.parent.name: p for p in store.scan_results(tmp_path)}
    assert set(found) == {"a", "b", "c"}
    assert found["a"].record["state"] == "done" and found["a"].problem is None
    assert "schema 0" in found["b"].problem
    assert "not valid JSON" in found["c"].problem


def test_run_lock_is_exclusive(tmp_path: Path) -> None:
    with store.run_lock(tmp_path):
        assert store.is_locked(tmp_path)
        with pytest.raises(store.RunLockedError), store.run_lock(tmp_path, timeout_s=0):
            pass
    assert not store.is_locked(tmp_path)
