"""Dispatch a suite's plan as submitit jobs: teachers first, then the student runs that need them.

Each job is a :class:`RunTask` over a run directory, so output paths come from run ids, never job ids, and
re-dispatching a suite only runs what has no finished record. ``local`` runs ``workers`` processes at once
(submitit's local executor starts every job it is given, so concurrency is limited here); ``debug`` runs
each job in this process.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from tqdm import tqdm

from kdbench import store
from kdbench.suite import ExecutorSettings, Plan


class RunTask(submitit.helpers.Checkpointable):
    """The callable a job runs: execute (or resume) one run directory. Keeps no state but the path, so a
    requeued job resumes from the run's own checkpoint."""

    def __init__(self, run_dir: str, threads: int = 1) -> None:
        self.run_dir = str(run_dir)
        self.threads = threads

    def __call__(self) -> dict[str, Any]:
        import torch

        from kdbench.runner import execute

        torch.set_num_threads(self.threads)
        record = execute(Path(self.run_dir))
        return {"run_id": record["run_id"], "state": record["state"]}


def suite_dir(results_root: Path, plan: Plan) -> Path:
    """``<results>/<suite name>``."""
    return Path(results_root) / plan.suite.name


def run_dirs(root: Path, plan: Plan) -> dict[str, Path]:
    """Folder of every teacher job and student run of a plan, by id."""
    dirs = {tid: root / "teachers" / tid for tid in plan.teachers}
    dirs.update({rid: root / "runs" / rid for rid in plan.runs})
    return dirs


def prepare(plan: Plan, results_root: Path) -> Path:
    """Write ``suite.json`` and every run's ``spec.json`` (atomically); return the suite's folder."""
    root = suite_dir(results_root, plan)
    store.atomic_write_json(root / store.SUITE, {
        "suite": plan.suite.to_dict(), "teachers": sorted(plan.teachers), "runs": sorted(plan.runs),
        "refused": plan.refused, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    specs = {**plan.teachers, **plan.runs}
    for run_id, path in run_dirs(root, plan).items():
        if not (path / store.SPEC).exists():
            store.atomic_write_json(path / store.SPEC, specs[run_id])
    return root


@dataclass
class DispatchSummary:
    """What a dispatch did: runs skipped because finished, and the final state of each run it started."""

    skipped: int = 0
    states: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for state in self.states.values():
            out[state] = out.get(state, 0) + 1
        return out


def make_executor(settings: ExecutorSettings, folder: Path) -> submitit.AutoExecutor:
    """A submitit executor for the suite's settings (cluster always named explicitly)."""
    executor = submitit.AutoExecutor(folder=str(folder), cluster=settings.name)
    executor.update_parameters(timeout_min=int(settings.timeout_min))
    return executor


def _failed_record(run_dir: Path, reason: str, log_tail: str = "") -> None:
    from kdbench.envinfo import environment

    spec = store.read_json(run_dir / store.SPEC)
    store.atomic_write_json(run_dir / store.RESULT, {
        "schema": store.SCHEMA, "run_id": run_dir.name, "spec": spec, "state": "failed", "error": reason,
        "log_tail": log_tail[-4000:], "metrics": {}, "cost": {}, "env": environment("cpu"),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _job_log_tail(job: submitit.Job) -> str:
    try:
        return "\n".join(((job.stderr() or "") + (job.stdout() or "")).splitlines()[-30:])
    except Exception:  # logs are a courtesy: a missing file must not hide the real failure
        return ""


def _describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "no record"
    spec, metrics = record.get("spec", {}), record.get("metrics") or {}
    what = f"{spec.get('role', '?'):7} {spec.get('model', '?'):14} {spec.get('label', '?'):10} " \
           f"{spec.get('regime', {}).get('name', '?'):10} seed {spec.get('seed', '?')}"
    top1 = metrics.get("top1_last")
    score = f"top1 {top1:6.2f}" if isinstance(top1, int | float) else record.get("error", "")[:80]
    return f"{record.get('state', '?'):8} {what}  {score}"


def dispatch(plan: Plan, results_root: Path, settings: ExecutorSettings, progress: bool = True) -> DispatchSummary:
    """Run every unfinished teacher job and student run of ``plan``; students start once their teacher is done."""
    root = prepare(plan, results_root)
    dirs = run_dirs(root, plan)
    summary = DispatchSummary()
    queue = []
    for run_id in [*plan.teachers, *plan.runs]:
        if store.is_finished(dirs[run_id]):
            summary.skipped += 1
        else:
            queue.append(run_id)
    workers = 1 if settings.name == "debug" else (settings.workers or os.cpu_count() or 1)
    executor = make_executor(settings, root / ".submitit")
    watchdog_s = settings.timeout_min * 60 + 300
    running: dict[str, tuple[submitit.Job, float]] = {}
    bar = tqdm(total=len(queue), desc=f"{plan.suite.name}", unit="run", disable=not progress, dynamic_ncols=True)

    def finish(run_id: str, job: submitit.Job | None, reason: str | None = None) -> None:
        record = store.load_result(dirs[run_id]) if (dirs[run_id] / store.RESULT).exists() else None
        if reason or record is None:
            detail = reason or f"job {job.job_id if job else '?'} ended without a record: {_job_error(job)}"
            _failed_record(dirs[run_id], detail, _job_log_tail(job) if job else "")
            record = store.load_result(dirs[run_id])
        summary.states[run_id] = record["state"]
        bar.update(1)
        bar.write(_describe(record))

    try:
        while queue or running:
            progressed = False
            for run_id in list(queue):
                if len(running) >= workers:
                    break
                teacher_id = plan.runs.get(run_id, {}).get("teacher_id")
                if teacher_id:
                    if teacher_id in queue or teacher_id in running:
                        continue
                    teacher_state = (store.load_result(dirs[teacher_id]) or {}).get("state")
                    if teacher_state != "done":
                        queue.remove(run_id)
                        finish(run_id, None, f"teacher {teacher_id} ended in state '{teacher_state}'")
                        progressed = True
                        continue
                queue.remove(run_id)
                job = executor.submit(RunTask(str(dirs[run_id]), settings.threads_per_worker))
                running[run_id] = (job, time.monotonic())
                progressed = True
                if settings.name == "debug":
                    _wait_debug(job)
            for run_id, (job, started) in list(running.items()):
                if job.done():
                    del running[run_id]
                    finish(run_id, job)
                    progressed = True
                elif time.monotonic() - started > watchdog_s:
                    job.cancel(check=False)
                    del running[run_id]
                    finish(run_id, job, f"job {job.job_id} exceeded {watchdog_s}s and was cancelled")
                    progressed = True
            if not progressed:
                time.sleep(0.25)
    finally:
        bar.close()
        for job, _ in running.values():  # interrupted (Ctrl-C): stop what we started; checkpoints stay
            job.cancel(check=False)
    return summary


def _wait_debug(job: submitit.Job) -> None:
    # a failure is recorded by finish() from the run's own failed record or the job's exception
    with contextlib.suppress(Exception):
        job.result()


def _job_error(job: submitit.Job | None) -> str:
    if job is None:
        return "not started"
    try:
        error = job.exception()
    except Exception as err:  # submitit raises when the job vanished without a result pickle
        return f"{type(err).__name__}: {err}"
    return f"{type(error).__name__}: {error}" if error else f"state {job.state}"
