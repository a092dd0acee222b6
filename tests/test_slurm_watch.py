"""How the SLURM watcher decides that a job has ended, without a cluster: a job being requeued passes through
states that look final for a moment (and submitit's own watcher then stops asking about it); such a job must
not be collected as dead while the controller still holds it, and a job that really died is collected once its
ended look has lasted the settle time."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from kdbench import dispatch, slurm


def fake_job(tmp_path: Path, job_id: str = "7_0") -> SimpleNamespace:
    """A stand-in for a submitit SLURM job: an id and the path of its result pickle (absent)."""
    return SimpleNamespace(job_id=job_id, paths=SimpleNamespace(result_pickle=tmp_path / f"{job_id}_result.pkl"))


def test_a_final_looking_state_is_not_an_end_while_the_controller_still_runs_the_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = fake_job(tmp_path)
    monkeypatch.setattr(slurm, "queue_state", lambda job_id: "PENDING")  # requeued: waiting to start again
    seen: dict[str, float] = {}
    assert not dispatch._ended("run", job, "COMPLETED", seen, settle_s=0.0)
    assert not dispatch._ended("run", job, "RUNNING", seen, settle_s=0.0)
    assert seen == {}


def test_a_job_gone_from_the_controller_without_a_result_ends_after_the_settle_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = fake_job(tmp_path)
    monkeypatch.setattr(slurm, "queue_state", lambda job_id: None)
    clock = iter([100.0, 105.0, 116.0])
    monkeypatch.setattr(dispatch.time, "monotonic", lambda: next(clock))
    seen: dict[str, float] = {}
    assert not dispatch._ended("run", job, "FAILED", seen, settle_s=15.0)  # first seen ended at 100
    assert not dispatch._ended("run", job, "FAILED", seen, settle_s=15.0)  # 5 s later
    assert dispatch._ended("run", job, "FAILED", seen, settle_s=15.0)  # 16 s later


def test_an_active_state_in_between_restarts_the_settle_time(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    job = fake_job(tmp_path)
    monkeypatch.setattr(slurm, "queue_state", lambda job_id: None)
    clock = iter([100.0, 120.0, 125.0])
    monkeypatch.setattr(dispatch.time, "monotonic", lambda: next(clock))
    seen: dict[str, float] = {}
    assert not dispatch._ended("run", job, "FAILED", seen, settle_s=15.0)
    assert not dispatch._ended("run", job, "REQUEUED", seen, settle_s=15.0)  # back in the queue: forget
    assert not dispatch._ended("run", job, "FAILED", seen, settle_s=15.0)  # 120: a fresh start
    assert dispatch._ended("run", job, "FAILED", seen, settle_s=0.0)


def test_a_written_result_ends_the_job_at_once(tmp_path: Path) -> None:
    job = fake_job(tmp_path)
    job.paths.result_pickle.write_bytes(b"")
    assert dispatch._ended("run", job, "RUNNING", {}, settle_s=1e9)


def test_states_come_from_sacct_afresh_and_unknown_asks_the_controller(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    sacct = "JobID|State\n7_0|COMPLETED\n7_0.batch|COMPLETED\n7_[1-2]|PENDING\n8|CANCELLED by 0\n"
    calls: list[list[str]] = []

    def run(command: list[str], **kwargs: object) -> SimpleNamespace:
        calls.append(command)
        return SimpleNamespace(returncode=0, stdout=sacct)

    monkeypatch.setattr(slurm.subprocess, "run", run)
    monkeypatch.setattr(slurm, "queue_state", lambda job_id: "RUNNING" if job_id == "9" else None)
    jobs = [slurm.submitit.SlurmJob(folder=tmp_path, job_id=job_id) for job_id in ("7_0", "7_2", "8", "9", "10")]
    states = slurm.current_states(jobs)
    assert states == {"7_0": "COMPLETED", "7_2": "PENDING", "8": "CANCELLED", "9": "RUNNING", "10": "UNKNOWN"}
    assert len(calls) == 1 and calls[0][:2] == ["sacct", "-o"]
