"""What a job runs: one run directory (:class:`RunTask`), or several side by side on one device (:class:`PackTask`).

Both keep no state but paths and thread counts, so a requeued job resumes every run from the run's own checkpoint
and skips runs that already have a finished record (:func:`kdbench.runner.execute` is idempotent).

Packing (``executor.runs_per_gpu``): a CIFAR-size run uses a fraction of a modern GPU, so one job may hold one
GPU and train N runs in N processes that share it. Every packed run is the very run it would be alone (same
spec, seed and code path, in its own process), so its record is the same.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from pathlib import Path
from typing import Any

import submitit

from kdbench import store
from kdbench.store.record import Record


class RunFailedError(RuntimeError):
    """A run ended with a ``failed`` record (its record holds the traceback)."""


class PackedRunDiedError(RuntimeError):
    """A packed run's process ended without writing a record (killed, out of memory)."""


class RunTask(submitit.helpers.Checkpointable):
    """The callable a job runs: execute (or resume) one run directory. Keeps no state but the path, so a
    requeued job resumes from the run's own checkpoint. With several SLURM tasks (one per GPU) every task joins
    one process group; locally, ``processes`` > 1 spawns that many gloo/NCCL processes."""

    def __init__(self, run_dir: str, threads: int = 1, fail_job: bool = False, processes: int = 1) -> None:
        self.run_dir = str(run_dir)
        self.threads = threads
        self.fail_job = fail_job  # SLURM: a failed run fails its job, so runs that depend on it are cancelled
        self.processes = processes

    def __call__(self) -> dict[str, Any]:
        import torch

        from kdbench import distributed
        from kdbench.runner import execute

        torch.set_num_threads(self.threads)
        stop_with_parent()
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # submitit started one task per GPU
            submitit.helpers.TorchDistributedEnvironment().export()
            distributed.init_from_env()
            try:
                record = execute(Path(self.run_dir))
            finally:
                distributed.shutdown()
        elif self.processes > 1:
            distributed.launch_local(_execute_rank, (self.run_dir, self.threads), self.processes)
            record = store.load_record(Path(self.run_dir)) or Record(run_id=Path(self.run_dir).name, spec={},
                                                                      state="failed", error="no record")
        else:
            record = execute(Path(self.run_dir))
        if record.state == "failed" and self.fail_job:
            raise RunFailedError(f"run {record.run_id} failed: {record.error or ''}")
        return {"run_id": record.run_id, "state": record.state}


class PackTask(submitit.helpers.Checkpointable):
    """The callable of a job that trains several runs side by side, one process each, on the job's device(s)
    (``executor.runs_per_gpu``). Returns when every run has ended; a run whose process died without a record
    raises :class:`PackedRunDiedError` naming it (the other runs' records stand), and with ``fail_job`` a failed
    run fails the job (as :class:`RunTask` does), so SLURM cancels what depends on it."""

    def __init__(self, run_dirs: list[str], threads: int = 1, fail_job: bool = False) -> None:
        self.run_dirs = [str(run_dir) for run_dir in run_dirs]
        self.threads = threads
        self.fail_job = fail_job

    def __call__(self) -> dict[str, Any]:
        stop_with_parent()
        context = multiprocessing.get_context("spawn")  # no CUDA state, locks or threads inherited
        processes = [context.Process(target=_execute_packed, args=(run_dir, self.threads),
                                     name=f"kdbench-{Path(run_dir).name}") for run_dir in self.run_dirs]
        try:
            for process in processes:
                process.start()
            for process in processes:
                process.join()
        except KeyboardInterrupt:  # Ctrl-C or a stop: every packed run stops between two writes, then we go
            _stop(processes)
            raise
        states, died = {}, []
        for run_dir, process in zip(self.run_dirs, processes, strict=True):
            record = _record_or_none(Path(run_dir))
            states[Path(run_dir).name] = record.state if record else None
            if record is None:
                died.append(f"run {Path(run_dir).name}: its process {_exit_words(process.exitcode)} without a record")
        if died:
            raise PackedRunDiedError("; ".join(died))
        failed = [run_id for run_id, state in states.items() if state == "failed"]
        if failed and self.fail_job:
            raise RunFailedError(f"packed run(s) failed: {', '.join(failed)}")
        return {"run_ids": list(states), "states": states}


def make_task(run_dirs: list[Path], threads: int, fail_job: bool = False,
              processes: int = 1) -> RunTask | PackTask:
    """The task of one job: a :class:`RunTask` for one run, a :class:`PackTask` for several."""
    if len(run_dirs) == 1:
        return RunTask(str(run_dirs[0]), threads, fail_job=fail_job, processes=processes)
    return PackTask([str(run_dir) for run_dir in run_dirs], threads, fail_job=fail_job)


def stop_with_parent() -> None:
    """In a job's worker: Ctrl-C (SIGINT) stops it even where the shell started kdbench with SIGINT ignored
    (``cmd &``, nohup), and on Linux the worker gets SIGINT when the process that started it dies, so no
    worker trains on as an orphan. Either way it stops between two writes; its last checkpoint stays."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGINT), 0, 0, 0)


def _execute_rank(run_dir: str, threads: int) -> None:
    import torch

    from kdbench.runner import execute

    torch.set_num_threads(threads)
    execute(Path(run_dir))


def _execute_packed(run_dir: str, threads: int) -> None:
    import torch

    from kdbench.runner import execute

    torch.set_num_threads(threads)
    stop_with_parent()
    # SLURM signals every process of the job before its time limit (SIGUSR2, whose default action kills): the
    # pack's own process requeues the job, and its children stop between two writes when it goes (SIGINT)
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    with contextlib.suppress(KeyboardInterrupt):  # stopped: the checkpoint stays, the pack reports it
        execute(Path(run_dir))


def _stop(processes: list[multiprocessing.process.BaseProcess], grace_s: float = 20.0) -> None:
    for process in processes:
        if process.is_alive() and process.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)
    for process in processes:
        process.join(grace_s)
        if process.is_alive():
            process.kill()
            process.join()


def _record_or_none(run_dir: Path) -> Record | None:
    try:
        return store.load_record(run_dir)
    except store.StoreReadError:
        return None


def _exit_words(code: int | None) -> str:
    if code is None:
        return "did not end"
    if code < 0:
        return f"was ended by {signal.Signals(-code).name}"
    return f"exited with code {code}"
