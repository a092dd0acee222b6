"""Packed runs (``executor.runs_per_gpu``): N runs trained side by side in one job, one process each, give the very
records they give alone; the dry-run's device-hours count jobs, not runs; a pack of data-parallel runs is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import metric_lines, records_by_id, run_cli, tiny_suite, write_suite

from kdbench.dispatch import dispatch
from kdbench.suite import SuiteError, expand, validate
from kdbench.tasks import PackTask, RunTask, make_task


def test_two_runs_per_job_give_the_records_of_one_run_per_job(tmp_path: Path) -> None:
    suite = validate(tiny_suite(methods=[{"name": "kd"}, {"name": "mse"}],
                                executor={"name": "local", "workers": 1}))
    alone = dispatch(expand(suite), tmp_path / "alone", suite.executor, progress=False)
    packed_settings = dataclasses.replace(suite.executor, runs_per_gpu=2)
    packed = dispatch(expand(suite), tmp_path / "packed", packed_settings, progress=False)
    assert alone.counts() == packed.counts() == {"done": 5}  # 1 teacher + 2 methods x 2 regimes
    one, two = records_by_id(tmp_path / "alone"), records_by_id(tmp_path / "packed")
    assert one.keys() == two.keys()
    for run_id, record in one.items():
        assert two[run_id].state == record.state == "done"
        assert two[run_id].metrics == record.metrics  # exact floats
        assert two[run_id].stability == record.stability
        assert metric_lines(tmp_path / "packed", run_id) == metric_lines(tmp_path / "alone", run_id)
    # a packed job is one submitit job for two runs: fewer job folders than runs
    jobs = [p for p in (tmp_path / "packed" / "tiny" / ".submitit").iterdir() if p.is_dir()]
    assert len(jobs) < len(two)


def test_a_job_for_one_run_is_a_run_task_and_for_several_a_pack(tmp_path: Path) -> None:
    assert isinstance(make_task([tmp_path / "a"], threads=1), RunTask)
    pack = make_task([tmp_path / "a", tmp_path / "b"], threads=2, fail_job=True)
    assert isinstance(pack, PackTask) and pack.run_dirs == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert pack.threads == 2 and pack.fail_job


def test_packing_data_parallel_runs_is_refused_naming_the_key() -> None:
    with pytest.raises(SuiteError, match=r"executor\.runs_per_gpu"):
        validate(tiny_suite(executor={"name": "slurm", "runs_per_gpu": 2, "gpus_per_run": 2}))
    with pytest.raises(SuiteError, match=r"executor\.runs_per_gpu"):
        validate(tiny_suite(executor={"name": "local", "runs_per_gpu": 0}))


def test_the_dry_run_counts_device_hours_per_packed_job(tmp_path: Path) -> None:
    def gpu_hours(runs_per_gpu: int) -> str:
        suite = tiny_suite(executor={"name": "slurm", "gpus_per_run": 1, "hours_per_run": 1.0,
                                     "runs_per_gpu": runs_per_gpu})
        out = run_cli("kdbench", "run", str(write_suite(tmp_path / f"p{runs_per_gpu}.yaml", suite)), "--dry-run",
                      "--results", str(tmp_path / "r"))
        assert out.returncode == 0, out.stderr
        return next(line for line in out.stdout.splitlines() if line.startswith("estimated GPU-hours"))

    alone, packed = gpu_hours(1), gpu_hours(4)
    # tiny: 1 teacher + 5 runs (vanilla refused without labels), one hour each alone; four per job: the teacher's
    # job and two jobs for the five runs
    assert alone.startswith("estimated GPU-hours: 6 (1 teachers + 5 students")
    assert packed.startswith("estimated GPU-hours: 3 (1 teachers + 2 students")
    assert "students packed 4 per job" in packed
