"""How the SLURM watcher decides that a job has ended, without a cluster: a job being requeued passes through
states that look final for a moment in accounting (and submitit's own watcher then stops asking about it); the
controller's active state wins over them, and a job that really died is collected once its ended look has lasted
the settle time. States come from one sacct call and at most one squeue call per poll, whatever the job count."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from kdbench import dispatch, slurm


def fake_job(tmp_path: Path, job_id: str = "7_0") -> SimpleNamespace:
    """A stand-in for a submitit SLURM job: an id and the path of its result pickle (absent)."""
    return SimpleNamespace(job_id=job_id, paths=SimpleNamespace(result_pickle=tmp_path / f"{job_id}_result.pkl"))


def test_a_job_without_a_result_ends_after_looking_ended_for_the_settle_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = fake_job(tmp_path)
    clock = iter([100.0, 105.0, 116.0])
    monkeypatch.setattr(dispatch.time, "monotonic", lambda: next(clock))
    seen: dict[str, float] = {}
    assert not dispatch._ended("run", job, "FAILED", seen, settle_s=15.0)  # first seen ended at 100
    assert not dispatch._ended("run", job, "FAILED", seen, settle_s=15.0)  # 5 s later
    assert dispatch._ended("run", job, "FAILED", seen, settle_s=15.0)  # 16 s later


def test_an_active_state_in_between_restarts_the_settle_time(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    job = fake_job(tmp_path)
    clock = iter([100.0, 120.0, 125.0])
    monkeypatch.setattr(dispatch.time, "monotonic", lambda: next(clock))
    seen: dict[str, float] = {}
    assert not dispatch._ended("run", job, "FAILED", seen, settle_s=15.0)
    assert not dispatch._ended("run", job, "REQUEUED", seen, settle_s=15.0)  # back in the queue: forget
    assert seen == {}
    assert not dispatch._ended("run", job, "FAILED", seen, settle_s=15.0)  # 120: a fresh start
    assert dispatch._ended("run", job, "FAILED", seen, settle_s=0.0)


def test_a_written_result_ends_the_job_at_once(tmp_path: Path) -> None:
    job = fake_job(tmp_path)
    job.paths.result_pickle.write_bytes(b"")
    assert dispatch._ended("run", job, "RUNNING", {}, settle_s=1e9)


SACCT = "JobID|State\n7_0|COMPLETED\n7_0.batch|COMPLETED\n7_[1-2]|PENDING\n8|CANCELLED by 0\n11|FAILED\n"


def _fake_cluster(monkeypatch: pytest.MonkeyPatch, squeue: str) -> list[list[str]]:
    calls: list[list[str]] = []

    def run(command: list[str], **kwargs: object) -> SimpleNamespace:
        calls.append(command)
        if command[0] == "sacct":
            return SimpleNamespace(returncode=0, stdout=SACCT)
        return SimpleNamespace(returncode=0 if squeue else 1, stdout=squeue)

    monkeypatch.setattr(slurm.subprocess, "run", run)
    return calls


def test_states_come_from_one_sacct_call_and_unknown_jobs_from_one_squeue_call(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _fake_cluster(monkeypatch, squeue="9|RUNNING\n")
    jobs = [slurm.submitit.SlurmJob(folder=tmp_path, job_id=j) for j in ("7_0", "7_2", "8", "9", "10", "11")]
    states = slurm.current_states(jobs)
    assert states == {"7_0": "COMPLETED", "7_2": "PENDING", "8": "CANCELLED", "9": "RUNNING", "10": "UNKNOWN",
                      "11": "FAILED"}
    assert [c[0] for c in calls] == ["sacct", "squeue"] and calls[1][3] == "9,10"  # only the unknown ones


def test_confirmed_states_let_the_controllers_active_state_win_over_a_final_looking_one(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # 7_0 is being requeued (accounting says COMPLETED, the controller PENDING); 11 really failed (gone from the
    # queue); 12_[3-4] is a pending range the controller prints as one line
    calls = _fake_cluster(monkeypatch, squeue="7_0|PENDING\n9|RUNNING\n")
    jobs = [slurm.submitit.SlurmJob(folder=tmp_path, job_id=j) for j in ("7_0", "8", "9", "11")]
    states = slurm.current_states(jobs, confirm=True)
    assert states == {"7_0": "PENDING", "8": "CANCELLED", "9": "RUNNING", "11": "FAILED"}
    assert len(calls) == 2 and set(calls[1][3].split(",")) == {"7_0", "8", "9", "11"}
    assert slurm.is_active(jobs[0], states["7_0"]) and not slurm.is_active(jobs[3], states["11"])


def test_the_controllers_array_ranges_are_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cluster(monkeypatch, squeue="12_[3-4]|PENDING\n12_2|RUNNING\n")
    assert slurm.queue_states(["12_2", "12_3", "12_4", "12_5"]) == {"12_2": "RUNNING", "12_3": "PENDING",
                                                                   "12_4": "PENDING"}


def test_a_run_whose_former_job_ended_meanwhile_is_skipped_not_submitted_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between reading the queue (no record yet) and asking which former jobs are still active, a former job may
    end and write its record: the run is then finished, not to be submitted a second time."""
    from conftest import tiny_suite

    from kdbench import store
    from kdbench.store.record import Record
    from kdbench.suite import expand, validate

    suite = validate(tiny_suite(executor={"name": "slurm", "wait": False}))
    plan = expand(suite)

    def a_former_job_just_ended(run_dirs: dict[str, Path]) -> dict:
        for run_id, run_dir in run_dirs.items():
            store.write_record(run_dir, Record(run_id=run_id, spec=store.read_json(run_dir / store.SPEC),
                                               state="done"))
        return {}

    submitted: list[str] = []
    monkeypatch.setattr(slurm, "active_jobs", a_former_job_just_ended)
    monkeypatch.setattr(dispatch, "_submit_array", lambda s, r, kind, run_ids, *a, **k: submitted.extend(run_ids)
                        or {})
    summary = dispatch.dispatch(plan, tmp_path, suite.executor, progress=False)
    assert submitted == [] and summary.submitted == 0
    assert summary.skipped == len(plan.teachers) + len(plan.runs)


def test_a_job_that_raised_before_kdbench_ran_reports_what_was_raised_not_its_log_paths() -> None:
    """A job told of its time limit while still importing (a loaded node) raises submitit's UncompletedJobError
    outside kdbench's handler; submitit's FailedJobError message ends with the log paths, so the record must take
    the traceback's raised line instead ("timed-out too many times" is what the user needs)."""
    from kdbench.slurm import raised_line

    message = """Job (task=0) failed during processing with trace:
----------------------
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/submitit/core/job_environment.py", line 227, in checkpoint_and_try_requeue
    raise utils.UncompletedJobError(message)
submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many times.

----------------------
You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:
  - /r/hopeless/.submitit/391_0_log.err
  - /r/hopeless/.submitit/391_0_log.out"""
    assert raised_line(message) == ("submitit.core.utils.UncompletedJobError: Job not requeued because: "
                                    "timed-out too many times.")
    assert raised_line("ValueError: bad\n  during handling\nRuntimeError: worse") == "RuntimeError: worse"
    assert raised_line("no traceback here\nlast words") == "last words" and raised_line("") == ""
