"""SLURM jobs of a suite: submitting job arrays through submitit, remembering job ids per run, reading states.

Each run directory that was submitted holds ``job.json`` (cluster, job id, submitit folder, time), written
atomically at submission. That file is how a later ``kdbench run`` attaches to jobs still queued instead of
submitting them twice, and how ``kdbench status`` shows job ids, SLURM states and log tails without the process
that submitted them.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import SlurmInfoWatcher

from kdbench import store
from kdbench.suite import ExecutorSettings

JOB = "job.json"

ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "PREEMPTED",
                           "SUSPENDED", "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "STAGE_OUT", "SIGNALING",
                           "READY", "UNKNOWN"})
"""States of a job that may still run (UNKNOWN: sacct did not answer yet, e.g. right after submission)."""


def slurm_executor(settings: ExecutorSettings, folder: Path, kind: str, dependency: str | None = None,
                   job_name: str = "kdbench") -> submitit.SlurmExecutor:
    """A submitit SLURM executor for ``kind`` (``teacher`` or ``student``) jobs, with the suite's resources."""
    resources = settings.for_kind(kind)
    executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=resources.max_requeues)
    params: dict[str, Any] = {
        "job_name": f"{job_name}-{kind}",
        "time": int(resources.timeout_min),
        "cpus_per_task": max(1, resources.cpus_per_task // resources.processes()),
        "ntasks_per_node": resources.processes(),  # one task per GPU; the tasks form one process group
        "array_parallelism": resources.array_parallelism,
        "signal_delay_s": resources.signal_delay_s,
        "stderr_to_stdout": False,
        "additional_parameters": dict(resources.sbatch),
    }
    optional = {"partition": resources.partition, "account": resources.account, "qos": resources.qos,
                "constraint": resources.constraint, "gpus_per_node": resources.gpus_per_run or None}
    params.update({k: v for k, v in optional.items() if v is not None})
    if resources.mem_gb:  # as --mem=<MiB>M: submitit's own conversion writes "GB", which sbatch 22.05 rejects
        params["additional_parameters"].setdefault("mem", f"{round(resources.mem_gb * 1024)}M")
    if dependency:
        params["dependency"] = dependency
        # a dependency that can never be met (teacher failed) cancels the dependant instead of leaving it pending
        params["additional_parameters"].setdefault("kill_on_invalid_dep", "yes")
    executor.update_parameters(**params)
    return executor


def write_job_ref(run_dir: Path, job: submitit.Job, cluster: str, folder: Path) -> None:
    """Remember which job runs ``run_dir`` (atomically)."""
    store.atomic_write_json(Path(run_dir) / JOB, {"cluster": cluster, "job_id": str(job.job_id),
                                                  "folder": str(folder),
                                                  "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def read_job_ref(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``job.json``, or None when it was never submitted to a cluster (or the file is unreadable)."""
    try:
        return store.read_json(Path(run_dir) / JOB)
    except (OSError, ValueError):
        return None


def job_of(ref: dict[str, Any]) -> submitit.Job:
    """A submitit job handle from a ``job.json`` record."""
    cls = submitit.SlurmJob if ref.get("cluster") == "slurm" else submitit.LocalJob
    return cls(folder=ref["folder"], job_id=ref["job_id"])


def current_states(jobs: Iterable[submitit.Job], confirm: bool = False) -> dict[str, str]:
    """Each job's SLURM state now, as one word (``CANCELLED by 0`` -> ``CANCELLED``), by job id: one ``sacct``
    call for all of them, and one ``squeue`` call for those it cannot place.

    Asked afresh every time: submitit's own watcher stops asking about a job once it has seen it in a state it
    takes for final, and a job being requeued passes through such states for a moment, so its cached state can
    stick. Right after submission the accounting database may not know a job yet; the controller does, so it is
    asked then (UNKNOWN only when neither knows). With ``confirm``, a state that looks final is confirmed with the
    controller too: accounting lags it while a job is requeued, so the controller's active state wins."""
    jobs = list(jobs)
    states = {str(job.job_id): (job.state or "UNKNOWN") for job in jobs if not isinstance(job, submitit.SlurmJob)}
    slurm_ids = [str(job.job_id) for job in jobs if isinstance(job, submitit.SlurmJob)]
    info = _sacct(slurm_ids) if slurm_ids else {}
    states.update({job_id: info.get(job_id, {}).get("State") or "UNKNOWN" for job_id in slurm_ids})
    words = {job_id: (state.split() or ["UNKNOWN"])[0].upper() for job_id, state in states.items()}
    ask = [job_id for job_id in slurm_ids
           if words[job_id] == "UNKNOWN" or (confirm and words[job_id] not in ACTIVE_STATES)]
    queued = queue_states(ask) if ask else {}
    for job_id in ask:
        if job_id in queued and (words[job_id] == "UNKNOWN" or queued[job_id] in ACTIVE_STATES):
            words[job_id] = queued[job_id]
    return words


def _sacct(job_ids: list[str]) -> dict[str, dict[str, str]]:
    command = ["sacct", "-o", "JobID,State", "--parsable2"]
    for base in sorted({job_id.split("_")[0] for job_id in job_ids}):
        command += ["-j", base]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    # submitit's parser: it expands array ranges (``12_[3-5]``) into one entry per element
    return SlurmInfoWatcher().read_info(out.stdout) if out.returncode == 0 else {}


def slurm_state(job: submitit.Job) -> str:
    """The job's SLURM state now (see :func:`current_states`)."""
    return current_states([job])[str(job.job_id)]


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """The controller's states of the given jobs still in its queue (one ``squeue`` call; jobs it no longer
    holds are left out)."""
    try:
        out = subprocess.run(["squeue", "--noheader", "--jobs", ",".join(job_ids), "--format", "%i|%T"],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    # squeue exits 1 when it holds none of them, and prints those it holds otherwise; pending array ranges
    # (``12_[3-5]``) are expanded by submitit's parser
    info = SlurmInfoWatcher().read_info("JobID|State\n" + out.stdout)
    return {job_id: info[job_id]["State"].split()[0].upper() for job_id in job_ids
            if info.get(job_id, {}).get("State")}


def is_active(job: submitit.Job, state: str | None = None) -> bool:
    """True while the job may still run (queued, running, being requeued): no result written yet, and its
    ``state`` (asked now, confirmed with the controller, when not given; see :func:`current_states`) active."""
    if job.paths.result_pickle.exists():
        return False
    if state is None:
        state = current_states([job], confirm=True)[str(job.job_id)]
    return state in ACTIVE_STATES


def active_jobs(run_dirs: dict[str, Path]) -> dict[str, submitit.Job]:
    """Of the given runs without a finished record, those whose recorded SLURM job is still queued or running."""
    refs = {run_id: read_job_ref(path) for run_id, path in run_dirs.items() if not store.is_finished(path)}
    jobs = {run_id: job_of(ref) for run_id, ref in refs.items() if ref and ref.get("cluster") == "slurm"}
    states = current_states(jobs.values(), confirm=True)  # one sacct and at most one squeue call for all
    return {run_id: job for run_id, job in jobs.items() if is_active(job, states[str(job.job_id)])}


def log_tail(job: submitit.Job, lines: int = 30) -> str:
    """The last lines of the job's stderr and stdout (empty when the files are gone)."""
    try:
        text = (job.stderr() or "") + (job.stdout() or "")
    except Exception:  # logs are a courtesy: a missing file must not hide the real failure
        return ""
    return "\n".join(text.splitlines()[-lines:])


def ran_out_of_memory(log: str) -> bool:
    """True when a job log shows SLURM's (or the kernel's) memory-limit kill."""
    text = log.lower()
    return any(sign in text for sign in ("exceeded memory limit", "exceeded job memory limit", "oom-kill",
                                         "out of memory", "out_of_memory"))


ENDINGS = {"CANCELLED": "cancelled", "TIMEOUT": "timed out", "PREEMPTED": "preempted",
           "OUT_OF_MEMORY": "out of memory", "NODE_FAIL": "node failure", "DEADLINE": "timed out",
           "BOOT_FAIL": "node failure", "INTERRUPTED": "interrupted"}
"""How a job that left no record ended, in words, by the executor's state (SLURM's, or submitit-local's)."""


def job_ending(job: submitit.Job | None, log: str = "") -> tuple[str, str]:
    """``(ending, detail)`` of a job that left no record: ending is one of killed, cancelled, timed out,
    preempted, out of memory, node failure, interrupted, or failed (its exception); detail explains it."""
    if job is None:
        return "failed", "not started"
    if job.paths.result_pickle.exists():
        return "failed", job_error(job)
    if ran_out_of_memory(log):
        return "out of memory", "the log shows the memory-limit kill"
    state = slurm_state(job)
    if state in ENDINGS:
        return ENDINGS[state], f"job state {state}"
    if "KeyboardInterrupt" in log:
        return "interrupted", "the worker was interrupted (SIGINT) before it finished; its checkpoint is kept"
    return "killed", (f"the worker process died without a result or a traceback (SIGKILL, or the kernel's "
                      f"out-of-memory killer; job state {state}); its checkpoint is kept")


def job_error(job: submitit.Job | None) -> str:
    """Why a job ended without a record: its exception (the remote traceback's last line) or its SLURM state."""
    if job is None:
        return "not started"
    if not job.paths.result_pickle.exists():  # killed, cancelled, out of memory, node failure: only SLURM knows
        return f"job state {slurm_state(job)}"
    try:
        error = job.exception()
    except Exception as err:  # an unreadable result pickle
        return f"{type(err).__name__}: {err}".splitlines()[0]
    if error:
        return f"{type(error).__name__}: {raised_line(str(error))}"
    return f"state {job.state}"


_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)\b")


def raised_line(message: str) -> str:
    """The line of a remote traceback that names what was raised (its last ``SomeError: ...`` line); submitit's
    FailedJobError ends with the log paths, which say nothing of why. The message's last line when none is found."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    raised = [line for line in lines if _RAISED.match(line)]
    return raised[-1] if raised else (lines[-1] if lines else "")
