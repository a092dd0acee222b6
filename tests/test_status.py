"""``kdbench status``: per-state counts, each running run's progress and the suite's ETA, computed from
FABRICATED suite folders (suite.json, spec.json, metrics.jsonl, result.json written by hand: no training)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from kdbench import progress, store
from kdbench.cli import main


def _spec(role: str = "student", label: str = "kd", epochs: int = 10, **extra: Any) -> dict[str, Any]:
    return {"role": role, "label": label, "method": label, "model": "kdb_cnn_nano", "seed": 0, "epochs": epochs,
            "regime": {"name": "balanced", "params": {}}, "method_params": extra.pop("method_params", {}), **extra}


def _lines(n: int, seconds: float = 5.0, phase: str = "main", start: int = 1) -> list[dict[str, Any]]:
    """``n`` FABRICATED metrics lines of ``seconds`` train + 1 s eval each."""
    return [{"phase": phase, "epoch": e, "top1": 50.0, "train_loss": 1.0, "train_seconds": seconds,
             "eval_seconds": 1.0} for e in range(start, start + n)]


class FabricatedSuite:
    """A FABRICATED suite folder: runs are added with their spec, metrics lines and (optionally) a record."""

    def __init__(self, root: Path, name: str = "fab") -> None:
        self.folder = root / name
        self.ids: dict[str, list[str]] = {"teachers": [], "runs": []}

    def add(self, run_id: str, spec: dict[str, Any], lines: list[dict[str, Any]] = (),
            record: dict[str, Any] | None = None) -> Path:
        kind = "teachers" if spec["role"] == "teacher" else "runs"
        self.ids[kind].append(run_id)
        run_dir = self.folder / kind / run_id
        store.atomic_write_json(run_dir / store.SPEC, spec)
        if lines:
            store.atomic_write_jsonl(run_dir / store.METRICS, list(lines))
        if record is not None:
            store.atomic_write_json(run_dir / store.RESULT, {"schema": 1, "run_id": run_id, "spec": spec,
                                                             "metrics": {}, **record})
        store.atomic_write_json(self.folder / store.SUITE, {"suite": {}, **self.ids})
        return run_dir


def _done(wall: float, epochs: int = 10, extra: dict[str, int] | None = None) -> dict[str, Any]:
    cost = {"epochs": epochs, "extra_epochs": extra or {}, "total_epochs": epochs + sum((extra or {}).values())}
    return {"state": "done", "wall_seconds": wall, "cost": cost}


def _states(suite: FabricatedSuite, states: dict[str, str]) -> dict[Path, str]:
    return {suite.folder / ("teachers" if run_id.startswith("t") else "runs") / run_id: state
            for run_id, state in states.items()}


def _fabricate(tmp_path: Path) -> tuple[FabricatedSuite, dict[Path, str]]:
    """A done teacher (100 s), two done students (60 s, 80 s), a student 4/10 epochs in at 6 s/epoch, one
    running without an epoch yet, a failed one and three pending."""
    suite = FabricatedSuite(tmp_path)
    suite.add("t1", _spec("teacher", "vanilla"), _lines(10), _done(100.0))
    suite.add("s1", _spec(), _lines(10), _done(60.0))
    suite.add("s2", _spec(), _lines(10), _done(80.0))
    suite.add("s3", _spec(), _lines(4))
    suite.add("s4", _spec())
    suite.add("s5", _spec(), _lines(2), {"state": "failed", "error": "RuntimeError: boom"})
    for run_id in ("s6", "s7", "s8"):
        suite.add(run_id, _spec())
    return suite, _states(suite, {"t1": "done", "s1": "done", "s2": "done", "s3": "running", "s4": "running",
                                  "s5": "failed", "s6": "pending", "s7": "pending", "s8": "queued"})


def test_counts_and_eta_from_fabricated_files(tmp_path: Path) -> None:
    _, states = _fabricate(tmp_path)
    runs = progress.suite_progress(states)
    assert progress.count_states(runs) == {"done": 3, "running": 2, "failed": 1, "pending": 2, "queued": 1}
    running = {r.run_id: r for r in runs if r.state == "running"}
    assert (running["s3"].epochs_done, running["s3"].epochs_total, running["s3"].seconds_per_epoch) == (4, 10, 6.0)
    assert running["s3"].remaining_seconds == 36.0 and running["s4"].remaining_seconds is None
    eta = progress.estimate_eta(runs)
    # s3: 6 epochs x 6 s = 36 s; s4 (no epoch yet) and s6, s7, s8: the median of the done students, 70 s each;
    # 36 + 4 x 70 = 316 s over 2 running at once = 158 s -> rounded up to 3 minutes
    assert eta.seconds == pytest.approx(158.0)
    assert eta.line().startswith("ETA ~0h 03m (estimate: 1 running with 6 epoch(s) left at their own s/epoch; "
                                 "4 student run(s) without a measured epoch x 1m 10s (the median wall time of 2 "
                                 "done student run(s)); 5m 16s of work over 2 run(s) at once)")


def test_eta_is_never_shorter_than_the_longest_running_run(tmp_path: Path) -> None:
    suite = FabricatedSuite(tmp_path)
    suite.add("s1", _spec(epochs=100), _lines(10, seconds=59.0))
    suite.add("s2", _spec(epochs=100), _lines(99, seconds=59.0))
    eta = progress.estimate_eta(progress.suite_progress(_states(suite, {"s1": "running", "s2": "running"})))
    assert eta.seconds == 90 * 60.0 and eta.line().startswith("ETA ~1h 30m")


def test_eta_before_any_run_is_done_extrapolates_the_running_ones(tmp_path: Path) -> None:
    suite = FabricatedSuite(tmp_path)
    suite.add("t1", _spec("teacher", "vanilla", epochs=20), _lines(5, seconds=2.0))  # 3 s/epoch: 60 s in all
    suite.add("s1", _spec())
    suite.add("s2", _spec())
    eta = progress.estimate_eta(progress.suite_progress(_states(suite, {"t1": "running", "s1": "pending",
                                                                        "s2": "pending"})))
    assert eta.seconds == 45.0 + 2 * 60.0
    assert "2 student run(s) without a measured epoch x 1m 00s (the median extrapolated total of 1 running " \
           "run(s), as none is done)" in eta.how


def test_eta_unknown_until_an_epoch_is_done(tmp_path: Path) -> None:
    suite = FabricatedSuite(tmp_path)
    suite.add("s1", _spec())
    suite.add("s2", _spec())
    suite.add("s3", _spec(), _lines(3), {"state": "failed", "error": "x"})  # a failed run's time is no guide
    eta = progress.estimate_eta(progress.suite_progress(_states(suite, {"s1": "running", "s2": "pending",
                                                                        "s3": "failed"})))
    assert eta.seconds is None and eta.line() == "ETA unknown (no run has finished an epoch yet)"
    assert progress.estimate_eta(progress.suite_progress(_states(suite, {"s3": "failed"}))) is None


def test_a_methods_extra_stages_count_in_the_total(tmp_path: Path) -> None:
    """A GenDD-like entry with a 2-epoch warm start: a done run of the same entry teaches its stage length; a
    run still in its stage without such a sibling has a lower-bound total, said so."""
    suite = FabricatedSuite(tmp_path)
    gendd = {"label": "gendd", "method_params": {"warm_start_epochs": 2}}
    suite.add("s1", _spec(**gendd), [*_lines(2, phase="warm_start"), *_lines(10)], _done(50.0, extra={"warm_start": 2}))
    suite.add("s2", _spec(**gendd), _lines(1, phase="warm_start"))
    suite.add("s3", _spec(label="other", method_params={"warm_start_epochs": 3}), _lines(1, phase="warm_start"))
    suite.add("s4", _spec(label="other", method_params={"warm_start_epochs": 3}),
              [*_lines(3, phase="warm_start"), *_lines(1)])
    runs = {r.run_id: r for r in progress.suite_progress(_states(suite, {"s1": "done", "s2": "running",
                                                                         "s3": "running", "s4": "running"}))}
    assert (runs["s2"].epochs_total, runs["s2"].stages_known) == (12, True)
    assert (runs["s3"].epochs_total, runs["s3"].stages_known) == (11, False)
    assert (runs["s4"].epochs_total, runs["s4"].stages_known, runs["s4"].epochs_done) == (13, True, 4)
    assert "(1 in a method stage of unknown length: a lower bound)" in progress.estimate_eta(list(runs.values())).how


def test_duration_words() -> None:
    assert [progress.duration(s) for s in (0, 42, 750, 3725, 90000)] == ["0s", "42s", "12m 30s", "1h 02m",
                                                                       "25h 00m"]


@contextlib.contextmanager
def _running(run_dir: Path):
    """Hold the run's lock, as a training process does (``kdbench status`` then sees it running)."""
    with store.run_lock(run_dir):
        yield


def test_status_command_prints_counts_eta_and_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite, _ = _fabricate(tmp_path)
    runs = suite.folder / "runs"
    for run_id in ("s3", "s4"):
        (runs / run_id / ".lock").touch()
    (runs / "s8" / store.CHECKPOINT).write_bytes(b"FABRICATED")  # interrupted: a checkpoint, no lock, no record
    with _running(runs / "s3"), _running(runs / "s4"):
        assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fab: 9 jobs: 3 done, 1 failed, 1 interrupted, 2 pending, 2 running" in out
    assert "  ETA ~0h 03m (estimate: " in out
    assert "  running  s3: kd balanced seed 0, epoch 4/10, 6 s/epoch, ~36s left" in out
    assert "  running  s4: kd balanced seed 0, epoch 0/10" in out
    assert "  failed   s5: RuntimeError: boom" in out


def test_status_watch_stops_when_nothing_runs_and_on_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    suite, _ = _fabricate(tmp_path)
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the second wait is a Ctrl-C
        slept.append(seconds)
        if len(slept) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("kdbench.cli.time.sleep", sleep)
    # runs are pending, none running, but the folder was just written: a dispatcher may be starting a job
    assert main(["status", str(suite.folder), "--watch", "60"]) == 0
    out = capsys.readouterr().out
    assert out.count("fab: 9 jobs") == 2 and "stopped watching (the runs are not affected)" in out
    assert all(1.0 <= s <= progress.WATCH_IDLE_S for s in slept)
    monkeypatch.setattr(progress, "WATCH_IDLE_S", 0.0)  # quiet for long enough: stop
    assert main(["status", str(suite.folder), "--watch", "60"]) == 0
    out = capsys.readouterr().out
    assert out.count("fab: 9 jobs") == 1 and "nothing is running or queued: stopped watching" in out

    slept.clear()
    with _running(suite.folder / "runs" / "s3"):
        assert main(["status", str(suite.folder), "--watch", "30"]) == 0
    out = capsys.readouterr().out
    assert slept == [30.0, 30.0] and "1 running" in out and "stopped watching (the runs are not affected)" in out
    assert main(["status", str(suite.folder), "--watch", "0"]) == 2


def test_status_watch_stops_at_once_when_every_run_has_ended(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    suite = FabricatedSuite(tmp_path)
    suite.add("s1", _spec(), _lines(10), _done(60.0))
    suite.add("s2", _spec(), _lines(2), {"state": "failed", "error": "x"})
    assert main(["status", str(suite.folder), "--watch", "600"]) == 0
    out = capsys.readouterr().out
    assert "fab: 2 jobs: 1 done, 1 failed" in out and "ETA" not in out and "stopped watching" in out
