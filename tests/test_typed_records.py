"""The typed run spec and record (kdbench.store.runspec / kdbench.store.record): one serialiser each way, exact
round trips (so run ids and records do not change), schema migration, and attribute access."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_suite

from kdbench import store
from kdbench.dispatch import dispatch
from kdbench.store import record as record_module
from kdbench.store.record import Metrics, Record, RecordError, Stability, migrate
from kdbench.store.runspec import RunSpec
from kdbench.suite import ExecutorSettings, expand, list_suites, load_suite, spec_id, validate


@pytest.mark.parametrize("name", list_suites())
def test_every_shipped_spec_round_trips_exactly_through_the_typed_spec(name: str) -> None:
    plan = expand(load_suite(name, check_files=False))
    for run_id, spec in {**plan.teachers, **plan.runs}.items():
        raw = spec.to_dict() if isinstance(spec, RunSpec) else spec
        typed = RunSpec.from_dict(raw)
        assert typed.to_dict() == raw
        assert spec_id(typed.to_dict()) == run_id


def test_records_written_by_a_real_run_read_back_to_the_same_json(tmp_path: Path) -> None:
    plan = expand(validate(tiny_suite(regimes=[{"name": "balanced"}], methods=[{"name": "kd"}])))
    dispatch(plan, tmp_path, ExecutorSettings(name="debug"), progress=False)
    paths = sorted((tmp_path / "tiny").rglob(store.RESULT))
    assert len(paths) == 2  # the teacher and the student
    for path in paths:
        raw = json.loads(path.read_text())
        typed = Record.from_dict(raw)
        assert typed.to_dict() == raw
        assert typed.state == "done" and typed.finished
        assert typed.metrics.top1_last == raw["metrics"]["top1_last"]
        assert isinstance(typed.stability, Stability) and typed.stability.nonfinite_events == 0
        assert typed.run_spec().seed == 0
        assert store.load_record(path.parent) == typed


def test_a_known_metric_reads_as_an_attribute_and_an_unknown_name_says_how_to_read_it() -> None:
    metrics = Metrics({"top1_last": 71.5, "top1_many": 80.0})
    assert metrics.top1_last == 71.5 and metrics.top1_best is None
    assert metrics.get("top1_many") == 80.0 and "top1_many" in metrics
    with pytest.raises(AttributeError, match=r"\.get\('top1_manyy'\)"):
        _ = metrics.top1_manyy
    with pytest.raises(AttributeError):
        metrics.top1_last = 0.0


def test_older_records_are_migrated_and_newer_or_unmigratable_ones_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    old = {"schema": 0, "run_id": "r", "spec": {}, "state": "ok", "metrics": {"top1": 50.0}}
    with pytest.raises(RecordError, match="no migration from 0"):
        migrate(old)

    def from_0(raw: dict) -> dict:  # what a schema change would register: renamed state and metric
        return {**raw, "state": "done", "metrics": {"top1_last": raw["metrics"]["top1"]}}

    monkeypatch.setitem(record_module.MIGRATIONS, 0, from_0)
    migrated = Record.from_dict(old)
    assert migrated.schema == record_module.SCHEMA and migrated.state == "done"
    assert migrated.metrics.top1_last == 50.0
    with pytest.raises(RecordError, match="newer than this kdbench reads"):
        migrate({**old, "schema": record_module.SCHEMA + 1})


def test_a_record_with_an_unknown_section_or_state_is_refused_by_name() -> None:
    base = {"schema": record_module.SCHEMA, "run_id": "r", "spec": {}, "state": "done"}
    with pytest.raises(RecordError, match="unknown key"):
        Record.from_dict({**base, "metricz": {}})
    with pytest.raises(RecordError, match="state 'finished'"):
        Record.from_dict({**base, "state": "finished"})
    with pytest.raises(RecordError, match="Stability"):
        Record.from_dict({**base, "stability": {"diverged_at": 3}})
