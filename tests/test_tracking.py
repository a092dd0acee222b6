"""Live tracking (kdbench.tracking): each backend, offline or in a file store, writes what a user opens later, per
epoch; the ``tracking:`` section is validated with key paths, never changes a run id, and a failing tracker never
fails a run. Every run here trains a tiny SYNTHETIC suite with the debug executor."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, tiny_suite, write_suite

from kdbench import store, tracking
from kdbench.cli import main
from kdbench.registry import Registry
from kdbench.suite import SuiteError, expand, validate


def _one_pair(**overrides: Any) -> dict:
    """The SYNTHETIC tiny suite cut to one teacher job and one KD run (3 epochs each)."""
    return tiny_suite(**{"methods": [{"name": "kd"}], "regimes": [{"name": "balanced"}], **overrides})


def _run_suite(tmp_path: Path, backend: str, **settings: Any) -> tuple[Path, Path]:
    """Run the one-pair suite with ``tracking: {backend, **settings}`` in a subprocess (as a user does); return
    the student's and the teacher's run folders."""
    suite = write_suite(tmp_path / "suite s" / "tiny.yaml", _one_pair(tracking={"backend": backend, **settings}))
    results = tmp_path / "res 'ults'"
    done = run_cli("kdbench", "run", str(suite), "--results", str(results), "--quiet", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning: tracking" not in done.stdout + done.stderr
    (student,) = (results / "tiny" / "runs").iterdir()
    (teacher,) = (results / "tiny" / "teachers").iterdir()
    return student, teacher


def _expected(run_dir: Path) -> list[dict[str, Any]]:
    lines = store.read_jsonl(run_dir / store.METRICS)
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    return lines


def test_tensorboard_event_files_hold_every_epoch(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    student, teacher = _run_suite(tmp_path, "tensorboard")
    for run_dir in (student, teacher):
        events = EventAccumulator(str(run_dir / "tensorboard"))
        events.Reload()
        lines = _expected(run_dir)
        for name in ("top1", "train_loss"):
            scalars = events.Scalars(name)
            assert [s.step for s in scalars] == [1, 2, 3]
            assert [s.value for s in scalars] == pytest.approx([line[name] for line in lines], rel=1e-6)
        record = store.load_record(run_dir)
        (final,) = events.Scalars("final/top1_best")
        assert final.value == pytest.approx(record.metrics.top1_best, rel=1e-6)


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline W&B run file (``run-<id>.wandb``): a 7-byte header, then LevelDB-log
    blocks of 32 KiB holding chunks (4-byte CRC, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _items(items: Any) -> dict[str, Any]:
    """W&B record items (history, config, summary) as a dict: the key is ``key`` or the joined ``nested_key``."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def test_wandb_offline_run_holds_every_epoch(tmp_path: Path) -> None:
    student, _ = _run_suite(tmp_path, "wandb", project="kdbench-test")
    (run_file,) = (student / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(run_file)
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    lines = _expected(student)
    assert [h["_step"] for h in history] == [1, 2, 3]
    for name in ("top1", "train_loss"):
        assert [h[name] for h in history] == pytest.approx([line[name] for line in lines], rel=1e-6)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "kdbench-test" and run.run_group == "tiny" and run.job_type == "student"
    config = _items(run.config.update)
    assert config["method"] == "kd" and config["seed"] == 0
    summaries = [_items(r.summary.update) for r in records if r.WhichOneof("record_type") == "summary"]
    assert any(s.get("state") == "done" for s in summaries)


def test_mlflow_file_store_holds_every_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    student, teacher = _run_suite(tmp_path, "mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for run_dir in (student, teacher):
        client = MlflowClient(tracking_uri=str(run_dir / "mlruns"))
        (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
        lines = _expected(run_dir)
        for name in ("top1", "train_loss"):
            history = client.get_metric_history(run.info.run_id, name)
            assert [m.step for m in history] == [1, 2, 3]
            assert [m.value for m in history] == pytest.approx([line[name] for line in lines], rel=1e-6)
        assert run.info.status == "FINISHED" and run.data.tags["run_id"] == run_dir.name
        assert run.data.params["method"] == ("kd" if run_dir == student else "vanilla")
        assert run.data.metrics["final/top1_best"] == pytest.approx(store.load_record(run_dir).metrics.top1_best)


@pytest.mark.parametrize("backend", ["wandb", "mlflow"])
def test_a_resumed_run_continues_its_tracker_run(tmp_path: Path, backend: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed after 2 epochs and resumed (a requeue) logs on into the same W&B / MLflow run."""
    from kdbench.spec import TrackingSettings

    monkeypatch.chdir(tmp_path)
    info = tracking.RunInfo(run_id="0123abcd4567", run_dir=tmp_path / "run", suite="tiny", name="kd balanced seed 0",
                            role="student", config={"method": "kd", "seed": 0})
    info.run_dir.mkdir()
    ids = []
    for epochs in ([1, 2], [3]):  # the first session dies without finish(); the second resumes at epoch 3
        tracker = tracking.tracker_registry.get(backend)(TrackingSettings(backend=backend))
        tracker.start(info)
        for epoch in epochs:
            tracker.log_epoch({"top1": 50.0 + epoch}, epoch)
        ids.append(tracker.run.id if backend == "wandb" else tracker.run_id)
        if epochs == [3]:
            tracker.finish({"state": "done", "top1_last": 53.0})
        elif backend == "wandb":
            tracker.run.finish(exit_code=1)  # the process died: wandb closes the offline run
    assert ids[0] == ids[1]
    if backend == "mlflow":
        history = tracker.client.get_metric_history(ids[0], "top1")
        assert [m.step for m in history] == [1, 2, 3]
        assert tracker.client.get_run(ids[0]).info.status == "FINISHED"


def test_tracking_changes_no_run_id_and_no_spec_while_off() -> None:
    plain = expand(validate(_one_pair(), check_files=False))
    tracked = expand(validate(_one_pair(tracking={"backend": "tensorboard", "dir": "/tmp/tb"}), check_files=False))
    off = expand(validate(_one_pair(tracking={"backend": "none"}), check_files=False))
    assert list(plain.specs()) == list(tracked.specs()) == list(off.specs())
    assert all("tracking" not in spec.to_dict() for spec in [*plain.specs().values(), *off.specs().values()])
    assert all(spec.to_dict()["tracking"] == {"backend": "tensorboard", "dir": "/tmp/tb"}
               for spec in tracked.specs().values())
    spec = next(iter(tracked.runs.values()))
    assert type(spec).from_dict(spec.to_dict()).to_dict() == spec.to_dict()


def test_turning_tracking_on_for_prepared_runs_rewrites_their_spec_under_the_same_id(tmp_path: Path) -> None:
    from kdbench.dispatch import prepare

    plain = expand(validate(_one_pair(), check_files=False))
    root = prepare(plain, tmp_path)
    tracked = expand(validate(_one_pair(tracking={"backend": "tensorboard"}), check_files=False))
    assert prepare(tracked, tmp_path) == root and sorted(tracked.runs) == sorted(plain.runs)
    for run_id in tracked.runs:
        assert store.read_json(root / "runs" / run_id / store.SPEC)["tracking"] == {"backend": "tensorboard"}
    prepare(plain, tmp_path)  # and off again
    assert all("tracking" not in store.read_json(root / "runs" / run_id / store.SPEC) for run_id in plain.runs)


@pytest.mark.parametrize(("section", "key", "words"), [
    ({"backend": "tb"}, "tracking.backend", "unknown tracking backend 'tb' (known: mlflow, none, tensorboard, wandb)"),
    ({"backend": "wandb", "projct": "x"}, "tracking.projct", "unknown key 'projct' (known: backend, dir, entity,"),
    ({"backend": "tensorboard", "mode": "online"}, "tracking.mode", "applies to backend wandb only"),
    ({"backend": "wandb", "mode": "cloud"}, "tracking.mode", "must be offline, online or disabled, got 'cloud'"),
    ({"backend": "mlflow", "entity": "me"}, "tracking.entity", "applies to backend wandb only"),
    ("tensorboard", "tracking", "expected a mapping, got 'tensorboard'"),
])
def test_tracking_section_errors_name_the_key(section: Any, key: str, words: str) -> None:
    with pytest.raises(SuiteError) as err:
        validate(_one_pair(tracking=section), check_files=False)
    assert err.value.key == key and words in err.value.message


def test_every_backend_a_suite_may_name_is_registered() -> None:
    assert tracking.tracker_registry.names() == sorted(tracking.TRACKING_BACKENDS)
    assert all(tracking.tracker_registry.get(name).requirement for name in tracking.TRACKING_BACKENDS
               if name != "none")


def test_a_backend_without_its_package_is_refused_before_anything_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tracking, "_installed", lambda module: module != "wandb")
    suite = write_suite(tmp_path / "tiny.yaml", _one_pair(tracking={"backend": "wandb"}))
    assert main(["run", str(suite), "--results", str(tmp_path / "results"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "tracking.backend: backend wandb needs the 'wandb' package, which is not installed: " \
           "pip install 'kdbench[track]'" in err
    assert not (tmp_path / "results").exists()
    with pytest.raises(SuiteError, match="mlflow-skinny"):
        monkeypatch.setattr(tracking, "_installed", lambda module: False)
        validate(_one_pair(tracking={"backend": "mlflow"}), check_files=False)


class _Failing:
    """A FABRICATED backend that fails (as a full disk would) at the call named by the suite's ``project``."""

    calls: list[str] = []  # noqa: RUF012 (the test reads what was called)

    def __init__(self, settings: tracking.TrackingSettings) -> None:
        self.fail_at = settings.project

    def _call(self, name: str) -> None:
        _Failing.calls.append(name)
        if name == self.fail_at:
            raise OSError(28, "No space left on device")

    def start(self, info: tracking.RunInfo) -> None:
        self._call("start")

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        self._call("log_epoch")

    def finish(self, summary: Mapping[str, Any]) -> None:
        self._call("finish")


@pytest.mark.parametrize("fail_at", ["start", "log_epoch", "finish"])
def test_a_failing_tracker_does_not_fail_the_run(tmp_path: Path, fail_at: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _Failing.calls.clear()
    failing = Registry("tracking backend")
    failing.add("tensorboard", _Failing)  # the suite names tensorboard; this run's tracker is the failing one
    monkeypatch.setattr(tracking, "tracker_registry", failing)
    suite = write_suite(tmp_path / "tiny.yaml", _one_pair(
        methods=[{"name": "vanilla"}], tracking={"backend": "tensorboard", "project": fail_at}))
    assert main(["run", str(suite), "--results", str(tmp_path / "results"), "--quiet"]) == 0
    out = capsys.readouterr().out
    (record,) = [store.load_record(p) for p in (tmp_path / "results" / "tiny" / "runs").iterdir()]
    assert record.state == "done" and record.metrics.epochs_completed == 3
    warnings = [line for line in out.splitlines() if "warning: tracking" in line]
    assert len(warnings) == 1, out
    assert f"tracking (tensorboard) switched off, {fail_at if fail_at != 'log_epoch' else 'logging step 1'} " \
           "failed: OSError: [Errno 28] No space left on device; the run goes on" in warnings[0]
    assert _Failing.calls == {"start": ["start"], "log_epoch": ["start", "log_epoch"],
                              "finish": ["start", "log_epoch", "log_epoch", "log_epoch", "finish"]}[fail_at]


def test_the_guard_finishes_an_interrupted_run_once() -> None:
    seen: list[Any] = []

    class Recorder:
        def start(self, info: tracking.RunInfo) -> None:
            seen.append(info.name)

        def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
            seen.append((dict(metrics), step))

        def finish(self, summary: Mapping[str, Any]) -> None:
            seen.append(dict(summary))

    guard = tracking.GuardedTracker(Recorder(), "recorder", seen.append)
    guard.start(tracking.RunInfo("abc", Path("/nowhere"), "tiny", "kd balanced seed 0", "student"))
    guard.epoch_line({"phase": "warm_start", "epoch": 1, "top1": 10.0, "lr": 0.1, "flag": True}, 1)
    guard.epoch_line({"phase": "main", "epoch": 1, "top1": 20, "train_loss": 1.5}, 2)
    guard.close()
    guard.close()
    assert seen == ["kd balanced seed 0", ({"warm_start/top1": 10.0, "warm_start/lr": 0.1}, 1),
                    ({"top1": 20.0, "train_loss": 1.5}, 2), {"state": "interrupted"}]
