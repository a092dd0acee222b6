"""SLURM dispatch against a real single-node SLURM cluster (slurmctld, slurmd, slurmdbd + MariaDB).

The ``slurm_cluster`` fixture (conftest) starts the cluster with ``tests/slurm/cluster.sh`` when it is not up and
stops it after the session. Runs use the real digits data; a time-limit test waits for SLURM's real limit once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, run_cli, write_suite

from kdbench import store
from kdbench.slurm import read_job_ref

pytestmark = pytest.mark.usefixtures("slurm_cluster")

SMOKE_SHORT = ["seeds=[0]", "train.epochs=1", "teacher.train.epochs=1", "methods[3].warm_start_epochs=1", "tune=null"]
TUNED_SHORT = ["seeds=[0]", "train.epochs=1", "teacher.train.epochs=1", "regimes=[{name: balanced}]",
               "methods=[{name: vanilla}, {name: kd}]", "tune.methods={}", "tune.epochs=1"]


def vanilla_suite(name: str, epochs: int, seeds: tuple[int, ...] = (0,), **executor: Any) -> dict[str, Any]:
    """Vanilla training of kdb_cnn_base on digits in small batches: about 0.3 s an epoch on one core."""
    return {"name": name, "dataset": {"name": "digits"}, "regimes": [{"name": "balanced"}],
            "pairs": [{"teacher": "kdb_cnn_small", "student": "kdb_cnn_base"}], "methods": [{"name": "vanilla"}],
            "seeds": list(seeds), "train": {"epochs": epochs, "batch_size": 16, "lr": 0.02},
            "executor": {"name": "slurm", "cpus_per_task": 1, "poll_s": 1, "checkpoint_every_s": 0, **executor}}


def records(suite_dir: Path) -> dict[str, dict[str, Any]]:
    """Every record of a suite folder, by run id."""
    return {found.record["run_id"]: found.record for found in store.scan_results(suite_dir)}


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def only_run(suite_dir: Path) -> Path:
    (run_dir,) = sorted((suite_dir / "runs").iterdir())
    return run_dir


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def test_smoke_through_sbatch_arrays_equals_local_run_and_resubmits_only_what_is_missing(tmp_path: Path) -> None:
    on_slurm = run_cli("kdbench", "run", "smoke", "--executor", "slurm", "--results", str(tmp_path / "slurm"),
                       "--quiet", *SMOKE_SHORT, timeout=900)
    assert on_slurm.returncode == 0, on_slurm.stdout + on_slurm.stderr
    local = run_cli("kdbench", "run", "smoke", "--executor", "local", "--workers", "2", "--results",
                    str(tmp_path / "local"), "--quiet", *SMOKE_SHORT, timeout=900)
    assert local.returncode == 0, local.stdout + local.stderr
    slurm_dir, local_dir = tmp_path / "slurm" / "smoke", tmp_path / "local" / "smoke"
    got, expected = records(slurm_dir), records(local_dir)
    assert set(got) == set(expected) and len(got) == 13  # 2 teachers + 11 runs (vanilla refused in unlabeled)
    for run_id, record in got.items():
        assert record["state"] == "done"
        assert record["metrics"] == expected[run_id]["metrics"], run_id
        assert record["env"]["slurm_job_id"], "the record names the SLURM job that produced it"
    # every job was an element of a job array; students wait on their teacher's job
    refs = {path.name: read_job_ref(path) for kind in ("teachers", "runs") for path in (slurm_dir / kind).iterdir()}
    assert all("_" in ref["job_id"] for ref in refs.values())
    scripts = "\n".join(p.read_text() for p in (slurm_dir / ".submitit").glob("*_submission.sh"))
    assert scripts.count("--dependency=afterok:") == 2 and "--array=" in scripts
    report = run_cli("kdbench.report", str(slurm_dir), "--format", "csv")
    local_report = run_cli("kdbench.report", str(local_dir), "--format", "csv")
    assert _accuracy_rows(report.stdout) == _accuracy_rows(local_report.stdout)

    again = run_cli("kdbench", "run", "smoke", "--executor", "slurm", "--results", str(tmp_path / "slurm"),
                    "--quiet", *SMOKE_SHORT)
    assert again.returncode == 0 and "0 submitted" in again.stdout and "13 already finished" in again.stdout

    # half finished: two runs lost their records; only they are submitted, and a second submission attaches
    lost = sorted((slurm_dir / "runs").iterdir())[:2]
    for run_dir in lost:
        (run_dir / store.RESULT).unlink()
        (run_dir / store.CHECKPOINT).unlink()
    first = run_cli("kdbench", "run", "smoke", "--executor", "slurm", "--no-wait", "--results",
                    str(tmp_path / "slurm"), "--quiet", *SMOKE_SHORT)
    assert "2 submitted, 0 attached" in first.stdout, first.stdout + first.stderr
    second = run_cli("kdbench", "run", "smoke", "--executor", "slurm", "--results", str(tmp_path / "slurm"),
                     "--quiet", *SMOKE_SHORT, timeout=600)
    # never submitted twice: attached to the queued jobs, or (on an idle cluster) they already finished
    assert "0 submitted, 2 attached" in second.stdout or (
        "0 submitted, 0 attached" in second.stdout and "13 already finished" in second.stdout), \
        second.stdout + second.stderr
    assert all(records(slurm_dir)[p.name]["state"] == "done" for p in lost)
    assert {p.name: records(slurm_dir)[p.name]["metrics"] for p in lost} == \
        {p.name: expected[p.name]["metrics"] for p in lost}


def test_a_tuned_suite_runs_its_trials_then_its_final_runs_through_sbatch(tmp_path: Path) -> None:
    """The tuning stage on SLURM: trial arrays after the teacher, selection, then the final runs' arrays."""
    done = run_cli("kdbench", "run", "smoke", "--executor", "slurm", "--results", str(tmp_path), "--quiet",
                   *TUNED_SHORT, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tuning stage: 6 trial run(s) in 2 cell(s)" in done.stdout and "final stage: 2 run(s)" in done.stdout
    found = records(tmp_path / "smoke")
    finals = [r for r in found.values() if r["spec"]["role"] == "student" and "tuned" in r["spec"]]
    trials = [r for r in found.values() if r["spec"].get("stage") == "tune"]
    assert len(finals) == 2 and len(trials) == 6 and all(r["state"] == "done" for r in found.values())
    assert all(r["env"]["slurm_job_id"] for r in found.values())
    for final in finals:
        assert final["spec"]["recipe"]["lr"] == final["spec"]["tuned"]["chosen"]["lr"]
    report = run_cli("kdbench.report", str(tmp_path / "smoke"))
    assert "Tuning digits: the same budget for every method" in report.stdout


def _accuracy_rows(csv_text: str) -> list[str]:
    # the accuracy table (first csv block); cost columns are timings and differ between machines by nature
    block = csv_text.split("\n\n")[0]
    return [line for line in block.splitlines() if line.strip()]


def test_preempted_run_requeues_resumes_from_checkpoint_and_matches_uninterrupted(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "preempt.yaml", vanilla_suite("preempt", epochs=40))
    submitted = run_cli("kdbench", "run", str(suite), "--no-wait", "--results", str(tmp_path / "r"), "--quiet")
    assert submitted.returncode == 0, submitted.stderr
    run_dir = only_run(tmp_path / "r" / "preempt")
    job_id = read_job_ref(run_dir)["job_id"]
    wait_until(lambda: len(store.read_jsonl(run_dir / store.METRICS)) >= 3, 180, "3 epochs")
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)  # what preemption by REQUEUE does
    collected = run_cli("kdbench", "run", str(suite), "--results", str(tmp_path / "r"), "--quiet", timeout=600)
    assert "0 submitted, 1 attached" in collected.stdout, collected.stdout + collected.stderr
    record = store.load_result(run_dir)
    assert record["state"] == "done"
    assert record["resumes"] and record["resumes"][0]["epoch"] >= 3, record["resumes"]

    uninterrupted = run_cli("kdbench", "run", str(suite), "--executor", "debug", "--results",
                            str(tmp_path / "u"), "--quiet", timeout=600)
    assert uninterrupted.returncode == 0
    reference = store.load_result(only_run(tmp_path / "u" / "preempt"))
    assert reference["resumes"] == []
    assert record["metrics"] == reference["metrics"]


def seconds_per_epoch(tmp_path: Path) -> float:
    """This machine's training time for one epoch of ``vanilla_suite`` on one thread (median of 6 epochs)."""
    suite = vanilla_suite("calibrate", epochs=6)
    suite["executor"] = {"name": "debug", "threads_per_worker": 1}
    out = run_cli("kdbench", "run", str(write_suite(tmp_path / "calibrate.yaml", suite)), "--results",
                  str(tmp_path / "calibrate"), "--quiet")
    assert out.returncode == 0, out.stdout + out.stderr
    seconds = sorted(row["train_seconds"] for row in store.read_jsonl(only_run(tmp_path / "calibrate" / "calibrate")
                                                                      / store.METRICS))
    return seconds[len(seconds) // 2]


def test_time_limit_requeues_until_done_and_bounded_retries_end_failed(tmp_path: Path) -> None:
    # one minute of SLURM time, told 40 s before the limit: SLURM checks limits every 30 s, so a job is signalled
    # 20-50 s after it starts. The epoch count is sized to this machine: 60 s of pure training (a job adds start-up,
    # evaluation and checkpoints), so it cannot finish in one job; the generous requeue bound keeps a busy
    # machine (slower epochs, more requeues) from failing the test. The hopeless run has 20 times that work and no
    # requeue: it must end failed on its first time limit, however fast the machine.
    epochs = min(1000, max(80, round(60 / seconds_per_epoch(tmp_path))))
    patient = write_suite(tmp_path / "patient.yaml", vanilla_suite(
        "patient", epochs=epochs, timeout_min=1, signal_delay_s=40, max_requeues=15))
    hopeless = write_suite(tmp_path / "hopeless.yaml", vanilla_suite(
        "hopeless", epochs=20 * epochs, timeout_min=1, signal_delay_s=40, max_requeues=0))
    for suite in (patient, hopeless):
        out = run_cli("kdbench", "run", str(suite), "--no-wait", "--results", str(tmp_path / "r"), "--quiet")
        assert out.returncode == 0, out.stderr
    done = run_cli("kdbench", "run", str(patient), "--results", str(tmp_path / "r"), "--quiet", timeout=900)
    record = store.load_result(only_run(tmp_path / "r" / "patient"))
    assert done.returncode == 0 and record["state"] == "done", done.stdout + done.stderr
    assert len(record["resumes"]) >= 1, f"{epochs} epochs finished in one job"

    failed = run_cli("kdbench", "run", str(hopeless), "--results", str(tmp_path / "r"), "--quiet", timeout=600)
    record = store.load_result(only_run(tmp_path / "r" / "hopeless"))
    assert failed.returncode == 1 and record["state"] == "failed", failed.stdout + failed.stderr
    assert "timed-out too many times" in record["error"], record["error"]


def test_cancelled_job_is_recorded_failed_with_its_slurm_state(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "cancel.yaml", vanilla_suite("cancel", epochs=400))
    watcher = subprocess.Popen([sys.executable, "-m", "kdbench", "run", str(suite), "--results",
                                str(tmp_path / "r"), "--quiet"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: (tmp_path / "r" / "cancel" / "runs").exists()
                   and read_job_ref(only_run(tmp_path / "r" / "cancel")) is not None, 60, "the submission")
        run_dir = only_run(tmp_path / "r" / "cancel")
        job_id = read_job_ref(run_dir)["job_id"]
        wait_until(lambda: squeue_state(job_id) == "RUNNING", 120, f"job {job_id} to run")
        subprocess.run(["scancel", job_id], check=True, timeout=30)
        output, _ = watcher.communicate(timeout=180)
    finally:
        watcher.kill()
    assert watcher.returncode == 1, output
    record = store.load_result(run_dir)
    assert record["state"] == "failed" and record["job"]["job_id"] == job_id
    assert record["job"]["state"] == "CANCELLED" and "CANCELLED" in record["error"]
    status = run_cli("kdbench", "status", str(tmp_path / "r" / "cancel"))
    assert f"job {job_id} (CANCELLED)" in status.stdout, status.stdout


def test_job_over_its_memory_limit_is_failed_with_state_and_reason(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "oom.yaml", vanilla_suite("oom", epochs=20, mem_gb=0.1))  # torch needs more
    out = run_cli("kdbench", "run", str(suite), "--results", str(tmp_path / "r"), "--quiet", timeout=300)
    assert out.returncode == 1
    record = store.load_result(only_run(tmp_path / "r" / "oom"))
    assert record["state"] == "failed" and "out of memory" in record["error"]
    assert record["job"]["state"] in ("FAILED", "OUT_OF_MEMORY") and "memory limit" in record["log_tail"]


def test_job_that_raises_is_failed_with_traceback_and_its_students_are_cancelled(tmp_path: Path) -> None:
    root = tmp_path / "broken-fashion"
    root.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (root / stem).write_bytes(b"this is not an IDX file")
    suite = vanilla_suite("raises", epochs=2)
    suite.update(dataset={"name": "fashion_mnist", "root": str(root)}, methods=[{"name": "kd"}, {"name": "mse"}])
    out = run_cli("kdbench", "run", str(write_suite(tmp_path / "raises.yaml", suite)), "--results",
                  str(tmp_path / "r"), "--quiet", timeout=600)
    assert out.returncode == 1
    found = records(tmp_path / "r" / "raises")
    teacher = next(r for r in found.values() if r["spec"]["role"] == "teacher")
    assert teacher["state"] == "failed" and "not an unsigned-byte IDX file" in teacher["error"]
    assert "Traceback" in teacher["traceback"] and "read_idx" in teacher["traceback"]
    students = [r for r in found.values() if r["spec"]["role"] == "student"]
    assert len(students) == 2
    for record in students:  # never started: their dependency on the failed teacher can not be met
        assert record["state"] == "failed" and "ended in state 'failed'" in record["error"]
        assert record["job"]["state"] == "CANCELLED"


def test_restarting_slurm_daemons_during_a_suite_loses_no_run(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "restart.yaml", vanilla_suite("restart", epochs=40, seeds=(0, 1, 2)))
    watcher = subprocess.Popen([sys.executable, "-m", "kdbench", "run", str(suite), "--results",
                                str(tmp_path / "r"), "--quiet"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        runs = tmp_path / "r" / "restart" / "runs"
        wait_until(lambda: runs.exists() and any(store.read_jsonl(p / store.METRICS) for p in runs.iterdir()),
                   180, "a run to train")
        restart = subprocess.run([str(ROOT / "tests" / "slurm" / "cluster.sh"), "restart-controller"],
                                 capture_output=True, text=True, timeout=180)
        assert restart.returncode == 0, restart.stderr
        output, _ = watcher.communicate(timeout=600)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, output
    found = records(tmp_path / "r" / "restart")
    assert len(found) == 3 and all(r["state"] == "done" for r in found.values()), output


def test_teacher_overrides_and_sbatch_options_reach_the_submission_script(tmp_path: Path) -> None:
    suite = vanilla_suite("options", epochs=1, timeout_min=7, mem_gb=4, sbatch={"comment": "kdbench-test"},
                          teacher={"timeout_min": 9, "cpus_per_task": 2})
    suite["methods"] = [{"name": "kd"}]
    suite["teacher"] = {"train": {"epochs": 1}}
    out = run_cli("kdbench", "run", str(write_suite(tmp_path / "options.yaml", suite)), "--results",
                  str(tmp_path / "r"), "--quiet", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    scripts = {p.name: p.read_text() for p in (tmp_path / "r" / "options" / ".submitit").glob("*_submission.sh")}
    teacher_script = next(s for s in scripts.values() if "kdb-options-teacher" in s)
    student_script = next(s for s in scripts.values() if "kdb-options-student" in s)
    assert "--time=9" in teacher_script and "--cpus-per-task=2" in teacher_script
    assert "--time=7" in student_script and "--cpus-per-task=1" in student_script
    assert "--mem=4096M" in student_script and "--comment=kdbench-test" in student_script
    assert json.loads(json.dumps(records(tmp_path / "r" / "options")))  # records are plain JSON


def test_status_lists_queued_jobs_with_their_ids(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "queued.yaml", vanilla_suite("queued", epochs=200, sbatch={"hold": True}))
    out = run_cli("kdbench", "run", str(suite), "--no-wait", "--results", str(tmp_path / "r"), "--quiet")
    assert out.returncode == 0 and "1 submitted" in out.stdout, out.stdout + out.stderr
    run_dir = only_run(tmp_path / "r" / "queued")
    job_id = read_job_ref(run_dir)["job_id"]
    try:
        status = run_cli("kdbench", "status", str(tmp_path / "r" / "queued"))
        assert "1 queued" in status.stdout and f"job {job_id} (PENDING)" in status.stdout, status.stdout
    finally:
        subprocess.run(["scancel", job_id], timeout=30)


def test_refused_submission_is_one_clear_error_and_starts_nothing(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "refused.yaml", vanilla_suite("refused", epochs=1, partition="no-such-partition"))
    out = run_cli("kdbench", "run", str(suite), "--results", str(tmp_path / "r"), "--quiet")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "error: sbatch refused the student job array" in out.stderr and "Traceback" not in out.stderr
    assert "partition" in out.stderr.lower()
    assert not list((tmp_path / "r").rglob(store.RESULT))


def test_packed_runs_share_one_job_and_give_the_records_of_unpacked_runs(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "packed.yaml", vanilla_suite("packed", epochs=3, seeds=(0, 1), cpus_per_task=2,
                                                                runs_per_gpu=2))
    out = run_cli("kdbench", "run", str(suite), "--results", str(tmp_path / "r"), "--quiet", timeout=600)
    # vanilla needs no teacher: two runs, one pack, one job
    assert out.returncode == 0 and "submitted 1 job(s) for 2 run(s)" in out.stdout, out.stdout + out.stderr
    packed = records(tmp_path / "r" / "packed")
    runs = [p for p in (tmp_path / "r" / "packed" / "runs").iterdir()]
    assert len(runs) == 2 and len({read_job_ref(p)["job_id"] for p in runs}) == 1  # both runs: one job
    alone = run_cli("kdbench", "run", str(suite), "--executor", "debug", "--results", str(tmp_path / "u"), "--quiet",
                    timeout=600)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    for run_id, record in records(tmp_path / "u" / "packed").items():
        assert packed[run_id]["state"] == record["state"] == "done"
        assert packed[run_id]["metrics"] == record["metrics"]
