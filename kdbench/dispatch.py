"""Dispatch a suite's plan as submitit jobs: teachers first, then the student runs that need them.

Each job is a :class:`~kdbench.tasks.RunTask` over a run directory, or a :class:`~kdbench.tasks.PackTask` over
``executor.runs_per_gpu`` of them trained side by side, so output paths come from run ids, never job ids, and
re-dispatching a suite only runs what has no finished record. ``local`` runs ``workers`` jobs at once
(submitit's local executor starts every job it is given, so concurrency is limited here); ``debug`` runs
each job in this process; ``slurm`` submits the teachers as one job array and each teacher's students as an
array that depends on it (``afterok``; none when the teacher finished earlier), attaching to jobs an earlier
submission left queued instead of submitting them twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from tqdm import tqdm

from kdbench import slurm, store
from kdbench.config import jsonable
from kdbench.store.record import Environment, Record
from kdbench.suite import ExecutorSettings, Plan, spec_id
from kdbench.tasks import make_task


class SubmissionError(RuntimeError):
    """The cluster refused a submission (bad partition/account/option, or no sbatch): nothing of it started."""


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
    specs = plan.specs()
    for run_id, path in run_dirs(root, plan).items():
        for line in check_run_files(path):
            say(f"{path}: {line}")
        spec = specs[run_id].to_dict()
        # written when missing, and again when only what the id leaves out changed (runtime, tracking) for a run
        # that has not started: it computes and tracks as the suite now says. A run that has a checkpoint or a
        # record keeps the spec it started with (no mixed precision within one record)
        if not (path / store.SPEC).exists() or (not (path / store.CHECKPOINT).exists()
                                                 and not (path / store.RESULT).exists()
                                                 and store.read_json(path / store.SPEC) != jsonable(spec)):
            store.atomic_write_json(path / store.SPEC, spec)
    return root


def check_run_files(run_dir: Path) -> list[str]:
    """Set aside (never delete) what in a run folder cannot be trusted, and say so, one line each: a
    ``spec.json`` that is unreadable or no longer hashes to the folder's run id (it is written anew), and a
    ``result.json`` that is unreadable, invalid, or records another spec (the run is then redone)."""
    lines = []
    spec_path = run_dir / store.SPEC
    if spec_path.exists():
        try:
            problem = None if spec_id(store.read_json(spec_path)) == run_dir.name else \
                f"its content no longer hashes to run id {run_dir.name}"
        except store.StoreReadError as err:
            problem = err.problem
        if problem:
            moved = store.move_aside(spec_path)
            lines.append(f"{store.SPEC} {problem}: moved aside to {moved.name} and written anew")
    line = store.set_aside_invalid_result(run_dir)
    if line:
        lines.append(f"{store.RESULT} {line}")
    elif (record := store.load_record(run_dir)) is not None and spec_id(record.spec) != run_dir.name:
        moved = store.move_aside(run_dir / store.RESULT)
        lines.append(f"{store.RESULT} records a spec that does not hash to run id {run_dir.name}: moved aside to "
                     f"{moved.name}; the run is redone")
    return lines


def say(message: str) -> None:
    """One line to the user, above any progress bar."""
    tqdm.write(message)


@dataclass
class DispatchSummary:
    """What a dispatch did: runs skipped because finished, the final state of each run it saw end, and the
    SLURM jobs it left queued (``wait: false``, or its watch bound ran out)."""

    skipped: int = 0
    states: dict[str, str] = field(default_factory=dict)
    submitted: int = 0
    attached: int = 0
    queued: dict[str, str] = field(default_factory=dict)  # run id -> job id

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for state in self.states.values():
            out[state] = out.get(state, 0) + 1
        if self.queued:
            out["queued"] = len(self.queued)
        return out


def make_executor(settings: ExecutorSettings, folder: Path) -> submitit.AutoExecutor:
    """A submitit executor for the local and debug executors (cluster always named explicitly)."""
    executor = submitit.AutoExecutor(folder=str(folder), cluster=settings.name)
    executor.update_parameters(timeout_min=int(settings.timeout_min))
    return executor


def _failed_record(run_dir: Path, reason: str, log_tail: str = "", job: dict[str, Any] | None = None) -> None:
    from kdbench.envinfo import environment

    try:
        spec = store.read_json(run_dir / store.SPEC)
    except store.StoreReadError as err:
        spec, reason = {}, f"{reason} ({err})"
    store.write_record(run_dir, Record(
        run_id=run_dir.name, spec=spec, state="failed", error=reason, log_tail=log_tail[-4000:], job=job or {},
        env=Environment(environment("cpu")), finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")))


def _describe(record: Record | None) -> str:
    if record is None:
        return "no record"
    try:
        spec = record.run_spec()
        what = f"{spec.role:7} {spec.model:14} {spec.label:10} {spec.regime.name:10} seed {spec.seed}"
    except (KeyError, TypeError, ValueError):  # a failed record whose spec.json could not be read
        what = "(no readable spec)"
    top1 = record.metrics.top1_last
    score = f"top1 {top1:6.2f}" if isinstance(top1, int | float) else (record.error or "")[:80]
    return f"{record.state:8} {what}  {score}"


class _Collector:
    """Turns ended jobs into records: the run's own ``result.json``, or a ``failed`` one naming why, the job
    id, its SLURM state and the last lines of its log. Keeps the progress bar and the summary."""

    def __init__(self, plan: Plan, dirs: dict[str, Path], summary: DispatchSummary, total: int, progress: bool):
        self.plan, self.dirs, self.summary = plan, dirs, summary
        self.bar = tqdm(total=total, desc=plan.suite.name, unit="run", disable=not progress, dynamic_ncols=True)

    def teacher_problem(self, run_id: str) -> str | None:
        """Why a student cannot run: its teacher has no ``done`` record (None when it has one, or needs none)."""
        spec = self.plan.runs.get(run_id)
        teacher_id = spec.teacher_id if spec is not None else None
        if not teacher_id:
            return None
        try:
            teacher = store.load_record(self.dirs[teacher_id])
            state = teacher.state if teacher is not None else None
        except store.StoreReadError as err:
            return f"teacher {teacher_id} has an invalid record ({err})"
        return None if state == "done" else f"teacher {teacher_id} ended in state '{state}'"

    def finish(self, run_id: str, job: submitit.Job | None, reason: str | None = None) -> None:
        run_dir = self.dirs[run_id]
        try:
            record = store.load_record(run_dir)
        except store.StoreReadError as err:
            store.move_aside(run_dir / store.RESULT)
            record, reason = None, reason or f"the job left an invalid record ({err.problem})"
        if record is not None and record.finished:  # its own ending stands (a pack the watchdog cancelled)
            reason = None
        if reason or record is None:
            job_info = {}
            if job is not None:
                job_info = {"job_id": str(job.job_id), "state": slurm.slurm_state(job)}
            tail = slurm.log_tail(job) if job else ""
            ending = ""
            detail = reason or self.teacher_problem(run_id)
            if not detail:
                ending, why = slurm.job_ending(job, tail)
                detail = f"{ending}: job {job.job_id if job else '?'} ended without a record; {why}"
            _failed_record(run_dir, detail, tail, {**job_info, **({"ending": ending} if ending else {})})
            record = store.load_record(run_dir)
        self.summary.states[run_id] = record.state
        self.bar.update(1)
        self.bar.write(_describe(record))

    def close(self) -> None:
        self.bar.close()


def dispatch(plan: Plan, results_root: Path, settings: ExecutorSettings, progress: bool = True) -> DispatchSummary:
    """Run every unfinished teacher job and student run of ``plan``; students start once their teacher is done.

    ``local``/``debug`` run here and return when all ended; ``slurm`` submits job arrays and (with ``wait``)
    watches them until they end or ``max_wait_hours`` passes.
    """
    root = prepare(plan, results_root)
    dirs = run_dirs(root, plan)
    summary = DispatchSummary()
    queue = []
    for run_id in [*plan.teachers, *plan.runs]:
        if store.is_finished(dirs[run_id]):
            summary.skipped += 1
        else:
            queue.append(run_id)
    collector = _Collector(plan, dirs, summary, len(queue), progress)
    try:
        if settings.name == "slurm":
            _dispatch_slurm(plan, root, settings, queue, collector)
        else:
            _dispatch_local(plan, root, settings, queue, collector)
    finally:
        collector.close()
    return summary


def _dispatch_local(plan: Plan, root: Path, settings: ExecutorSettings, queue: list[str],
                    collector: _Collector) -> None:
    """``workers`` jobs at once, each one run or a pack of ``runs_per_gpu`` ready runs (their teacher done)."""
    workers = 1 if settings.name == "debug" else (settings.workers or os.cpu_count() or 1)
    executor = make_executor(settings, root / ".submitit")
    watchdog_s = settings.timeout_min * 60 + 300
    running: list[tuple[submitit.Job, list[str], float]] = []
    try:
        while queue or running:
            progressed = False
            while len(running) < workers:
                pack = _ready_pack(plan, queue, {r for _, ids, _ in running for r in ids}, collector,
                                   settings.runs_per_gpu)
                if not pack:
                    break
                job = executor.submit(make_task([collector.dirs[run_id] for run_id in pack],
                                                settings.threads_per_worker, processes=settings.processes()))
                running.append((job, pack, time.monotonic()))
                progressed = True
                if settings.name == "debug":
                    _wait_debug(job)
            for entry in list(running):
                job, pack, started = entry
                reason = None
                if not job.done():
                    if time.monotonic() - started <= watchdog_s:
                        continue
                    job.cancel(check=False)
                    reason = f"job {job.job_id} exceeded {watchdog_s}s and was cancelled"
                running.remove(entry)
                for run_id in pack:
                    collector.finish(run_id, job, reason)
                progressed = True
            if not progressed:
                time.sleep(0.25)
    finally:
        if running:  # interrupted (Ctrl-C, SIGTERM, SIGHUP): stop what we started; checkpoints stay
            stop_jobs({collector.dirs[run_id]: job for job, pack, _ in running for run_id in pack})


def _ready_pack(plan: Plan, queue: list[str], running: set[str], collector: _Collector, size: int) -> list[str]:
    """Up to ``size`` queued runs that can start now (removed from ``queue``): their teacher, if any, has a done
    record. A run whose teacher ended otherwise is finished as failed on the way, naming why."""
    pack: list[str] = []
    for run_id in list(queue):
        if len(pack) >= size:
            break
        teacher_id = plan.runs[run_id].teacher_id if run_id in plan.runs else None
        if teacher_id:
            if teacher_id in queue or teacher_id in running or teacher_id in pack:
                continue
            problem = collector.teacher_problem(run_id)
            if problem:
                queue.remove(run_id)
                collector.finish(run_id, None, problem)
                continue
        queue.remove(run_id)
        pack.append(run_id)
    return pack


def stop_jobs(jobs: dict[Path, submitit.Job], grace_s: float = 30.0) -> None:
    """Stop local jobs (by run folder; a pack's job is named by each of its runs) and wait until no worker holds
    its run's lock any more, so none keeps training: SIGINT to each job (the worker stops; its last epoch
    checkpoint stays); a job that does not end within 5 s is killed, which its worker answers as SIGINT too
    (:func:`kdbench.tasks.stop_with_parent`). Further signals are ignored meanwhile, so a second Ctrl-C cannot cut
    the clean-up short."""
    unique = list({id(job): job for job in jobs.values()}.values())
    with ignored_signals():
        for job in unique:
            process = getattr(job, "_process", None)  # submitit's local job keeps its controller process here
            workers = _child_pids(process.pid) if process is not None else []
            for pid in workers:  # the worker itself: its controller would print a KeyboardInterrupt traceback
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)
            if not workers:
                job.cancel(check=False)
        _wait(lambda: all(job.done() for job in unique), 5.0)
        for job in unique:
            process = getattr(job, "_process", None)
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        _wait(lambda: not any(store.is_locked(run_dir) for run_dir in jobs), grace_s)


def _child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (read from /proc; empty where there is none)."""
    children = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and fields[1] == str(pid):
                children.append(int(entry))
    return children


def _wait(condition: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


class RunInterrupted(KeyboardInterrupt):
    """``kdbench run`` received SIGTERM or SIGHUP: handled like Ctrl-C (workers stopped, checkpoints kept)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within the block SIGTERM and SIGHUP raise :class:`RunInterrupted` (SIGINT raises KeyboardInterrupt as
    always), so every ``finally`` runs; the former handlers come back after it."""
    def handler(signum: int, frame: Any) -> None:
        raise RunInterrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    former = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in former.items():
            signal.signal(sig, previous)


@contextlib.contextmanager
def ignored_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP are ignored within the block (clean-up that must finish)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    former = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in former.items():
            signal.signal(sig, previous)


def _submit_array(settings: ExecutorSettings, root: Path, kind: str, run_ids: list[str], dirs: dict[str, Path],
                  dependency: str | None = None) -> dict[str, submitit.Job]:
    """Submit ``run_ids`` as one job array and remember each run's job id in its folder."""
    if not run_ids:
        return {}
    folder = root / ".submitit"
    executor = slurm.slurm_executor(settings, folder, kind, dependency, job_name=f"kdb-{root.name}")
    resources = settings.for_kind(kind)
    # teachers are never packed: a job fails when one of its runs fails (so SLURM cancels what depends on it),
    # and students depend on their teacher's job
    size = resources.runs_per_gpu if kind == "student" else 1
    packs = [run_ids[start:start + size] for start in range(0, len(run_ids), size)]
    try:
        with executor.batch():
            jobs = [executor.submit(make_task([dirs[run_id] for run_id in pack],
                                              max(1, resources.cpus_per_task // (resources.processes() * len(pack))),
                                              fail_job=True))
                    for pack in packs]
    except (submitit.core.utils.FailedJobError, OSError) as err:  # sbatch missing or refusing the options
        raise SubmissionError(f"sbatch refused the {kind} job array ({len(run_ids)} runs): "
                              f"{str(err).strip() or type(err).__name__}") from None
    by_run = {run_id: job for pack, job in zip(packs, jobs, strict=True) for run_id in pack}
    for run_id, job in by_run.items():
        slurm.write_job_ref(dirs[run_id], job, "slurm", folder)
    return by_run


def _dispatch_slurm(plan: Plan, root: Path, settings: ExecutorSettings, queue: list[str],
                    collector: _Collector) -> None:
    dirs, summary = collector.dirs, collector.summary
    jobs = slurm.active_jobs({run_id: dirs[run_id] for run_id in queue})  # still queued from a former submission
    summary.attached = len(jobs)
    # a job of a former submission may have ended since the queue was read: its run is finished, not to redo
    ended = [run_id for run_id in queue if run_id not in jobs and store.is_finished(dirs[run_id])]
    for run_id in ended:
        queue.remove(run_id)
    summary.skipped += len(ended)
    if ended and collector.bar.total is not None:
        collector.bar.total -= len(ended)
    fresh = _submit_array(settings, root, "teacher", [t for t in plan.teachers if t in queue and t not in jobs],
                          dirs)
    jobs.update(fresh)
    by_teacher: dict[str | None, list[str]] = {}
    for run_id in plan.runs:
        if run_id in queue and run_id not in jobs:
            by_teacher.setdefault(plan.runs[run_id].teacher_id, []).append(run_id)
    students: dict[str, submitit.Job] = {}
    for teacher_id, run_ids in by_teacher.items():
        dependency = None
        if teacher_id in jobs:
            dependency = f"afterok:{jobs[teacher_id].job_id}"
        elif teacher_id is not None and (problem := collector.teacher_problem(run_ids[0])):
            for run_id in run_ids:
                collector.finish(run_id, None, problem)
            continue
        students.update(_submit_array(settings, root, "student", run_ids, dirs, dependency))
    jobs.update(students)
    summary.submitted = len(fresh) + len(students)  # runs
    submitted_jobs = {str(job.job_id) for job in [*fresh.values(), *students.values()]}  # a pack is one job
    arrays = sorted({job_id.split("_")[0] for job_id in submitted_jobs})
    runs = f" for {summary.submitted} run(s)" if len(submitted_jobs) != summary.submitted else ""
    collector.bar.write(f"slurm: submitted {len(submitted_jobs)} job(s){runs} (arrays {', '.join(arrays) or '-'}), "
                        f"attached to {summary.attached} still queued")
    if settings.wait:
        _watch(jobs, settings, collector)
    summary.queued = {run_id: str(job.job_id) for run_id, job in jobs.items()}
    if summary.queued:
        collector.bar.write(f"slurm: {len(summary.queued)} job(s) still queued or running; "
                            f"collect later with: python -m kdbench status {root}")


def _watch(jobs: dict[str, submitit.Job], settings: ExecutorSettings, collector: _Collector) -> None:
    """Collect jobs as they end, polling sacct every ``poll_s``; gives up watching after ``max_wait_hours``
    (the jobs keep running on the cluster). Ctrl-C (or SIGTERM/SIGHUP) stops watching, never the jobs: the
    interruption goes up to the command line, which says so."""
    deadline = time.monotonic() + settings.max_wait_hours * 3600
    last_poll = float("-inf")
    looked_ended: dict[str, float] = {}  # run id -> when its job first looked ended without a result
    states: dict[str, str] = {}
    while jobs and time.monotonic() < deadline:
        if time.monotonic() - last_poll >= settings.poll_s:
            states = slurm.current_states(jobs.values(), confirm=True)  # one sacct, at most one squeue call
            last_poll = time.monotonic()
        for run_id, job in list(jobs.items()):
            state = states.get(str(job.job_id), "UNKNOWN")
            if _ended(run_id, job, state, looked_ended, settle_s=max(SETTLE_S, 2 * settings.poll_s)):
                del jobs[run_id]
                collector.finish(run_id, job)
        time.sleep(min(settings.poll_s, 1.0))


SETTLE_S = 15.0
"""How long a job must look ended without having written its result before it is collected as dead: a job
being requeued (time limit, preemption) passes through states that look final for a moment."""


def _ended(run_id: str, job: submitit.Job, state: str, looked_ended: dict[str, float], settle_s: float) -> bool:
    """Whether ``job`` ended: its result is written, or its (confirmed) state has looked final for ``settle_s``."""
    if job.paths.result_pickle.exists():
        return True
    if slurm.is_active(job, state):
        looked_ended.pop(run_id, None)
        return False
    now = time.monotonic()
    return now - looked_ended.setdefault(run_id, now) >= settle_s


def _wait_debug(job: submitit.Job) -> None:
    # a failure is recorded by finish() from the run's own failed record or the job's exception
    with contextlib.suppress(Exception):
        job.result()
