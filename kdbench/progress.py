"""Where a suite stands while it runs: each run's progress, per-state counts and an ETA (``kdbench status``).

Reads only a suite folder's files: ``spec.json`` (planned epochs), ``metrics.jsonl`` (epochs done, each with its
train and eval seconds) and ``result.json`` (state, wall time, the epochs of a method's extra stages). The run
states themselves (running, queued, ...) come from the caller, which knows the locks and the SLURM queue.

The ETA: a running run needs its remaining epochs times its own measured seconds per epoch; a run not started
needs the median wall time of the suite's done runs of its role (teacher or student), or, while none is done,
the median extrapolated total (planned epochs x seconds per epoch) of the running ones; the work is spread over
the runs running at once (and is never less than the longest running run's remainder).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench import store

WAITING_STATES = ("queued", "pending", "interrupted", "lost")
"""States of a run that is still to train (``lost``/``interrupted`` resume from their checkpoint)."""
ACTIVE_STATES = ("running", "queued")
"""States that mean the suite is still being worked on (``kdbench status --watch`` stops when none is left)."""
WATCH_IDLE_S = 30.0
"""``status --watch`` with runs left but none running or queued stops once the suite folder has been quiet this
long (:func:`last_activity`): a local dispatcher's next job takes its run's lock only after its process started."""


@dataclass(frozen=True)
class RunProgress:
    """What the files say of one run. ``epochs_done`` counts its ``metrics.jsonl`` lines over every phase;
    ``epochs_total`` is its spec's epochs plus a method's extra stage epochs (``stages_known`` False: it is in a
    stage whose length is not known yet, so the total is a lower bound); ``seconds_per_epoch`` is its own
    measured mean (train + eval); ``wall_seconds`` a done run's whole time."""

    run_id: str
    state: str
    role: str = "student"
    title: str = ""
    epochs_done: int = 0
    epochs_total: int | None = None
    seconds_per_epoch: float | None = None
    wall_seconds: float | None = None
    phase: str | None = None
    stages_known: bool = True

    @property
    def remaining_seconds(self) -> float | None:
        """Its remaining epochs times its own seconds per epoch (None until it has finished an epoch)."""
        if self.seconds_per_epoch is None or self.epochs_total is None:
            return None
        return max(0, self.epochs_total - self.epochs_done) * self.seconds_per_epoch

    @property
    def projected_seconds(self) -> float | None:
        """Its whole training time, extrapolated from its own seconds per epoch."""
        if self.seconds_per_epoch is None or self.epochs_total is None:
            return None
        return self.epochs_total * self.seconds_per_epoch


def _stage_key(spec: Mapping[str, Any]) -> str:
    """Runs whose method would run the same extra stages: same role, method entry and values."""
    return json.dumps([spec.get("role"), spec.get("label"), spec.get("method_params"), spec.get("with")],
                      sort_keys=True, default=str)


def _title(spec: Mapping[str, Any]) -> str:
    regime = spec.get("regime") or {}
    what = f"teacher {spec.get('model')}" if spec.get("role") == "teacher" else str(spec.get("label", "?"))
    return f"{what} {regime.get('label') or regime.get('name', '?')} seed {spec.get('seed', '?')}"


def _line_seconds(lines: list[dict[str, Any]]) -> float | None:
    """Mean train + eval seconds of the lines that state them."""
    times = [float(line.get("train_seconds") or 0) + float(line.get("eval_seconds") or 0) for line in lines
             if isinstance(line.get("train_seconds"), int | float)]
    return sum(times) / len(times) if times else None


def _stage_epochs_seen(lines: list[dict[str, Any]]) -> tuple[int, bool]:
    """Epochs of the extra stages a run's lines show, and whether they are all of them (it reached ``main``)."""
    seen: dict[str, int] = {}
    for line in lines:
        phase = str(line.get("phase", "main"))
        if phase != "main":
            seen[phase] = max(seen.get(phase, 0), int(line.get("epoch") or 0))
    in_stage = bool(lines) and lines[-1].get("phase", "main") != "main"
    return sum(seen.values()), not in_stage


def _done(run_dir: Path, record: store.Record) -> RunProgress:
    """A run with a record: its state, wall time and epochs (from its cost and metrics)."""
    lines = store.read_jsonl(run_dir / store.METRICS)
    wall = record.wall_seconds
    if record.resumes and lines:  # its last session's wall time is not the whole of it
        wall = max(wall or 0.0, sum(float(x.get("train_seconds") or 0) + float(x.get("eval_seconds") or 0)
                                    for x in lines))
    total = record.cost.get("total_epochs")
    return RunProgress(run_dir.name, record.state, str(record.spec.get("role", "student")), _title(record.spec),
                       epochs_done=len(lines), epochs_total=total if isinstance(total, int) else None,
                       seconds_per_epoch=_line_seconds(lines), wall_seconds=wall,
                       phase=lines[-1].get("phase") if lines else None)


def run_progress(run_dir: Path, state: str, stage_epochs: Mapping[str, int] | None = None) -> RunProgress:
    """One run's progress from its files. ``stage_epochs``: the extra stage epochs done runs of the same method
    entry ran (:func:`suite_progress` learns them), used before the run's own lines show them all."""
    run_dir = Path(run_dir)
    try:
        record = store.load_record(run_dir)
    except store.StoreReadError:
        record = None
    if record is not None:
        return _done(run_dir, record)
    try:
        spec = store.read_json(run_dir / store.SPEC)
    except store.StoreReadError:
        return RunProgress(run_dir.name, state)
    lines = store.read_jsonl(run_dir / store.METRICS)
    seen, complete = _stage_epochs_seen(lines)
    known = (stage_epochs or {}).get(_stage_key(spec))
    extra = known if known is not None else seen
    epochs = spec.get("epochs")
    return RunProgress(run_dir.name, state, str(spec.get("role", "student")), _title(spec),
                       epochs_done=len(lines),
                       epochs_total=epochs + extra if isinstance(epochs, int) else None,
                       seconds_per_epoch=_line_seconds(lines), phase=lines[-1].get("phase") if lines else None,
                       stages_known=known is not None or complete)


def suite_progress(states: Mapping[Path, str]) -> list[RunProgress]:
    """Every run's progress (run folder -> its state). Done runs first teach the extra stage epochs of their
    method entry, so that a running run of the same entry has its full total from its first epoch."""
    stage_epochs: dict[str, int] = {}
    for run_dir, state in states.items():
        if state != "done":
            continue
        try:
            record = store.load_record(run_dir)
        except store.StoreReadError:
            continue
        extra = record.cost.get("extra_epochs") if record is not None else None
        if isinstance(extra, dict):
            stage_epochs[_stage_key(record.spec)] = sum(v for v in extra.values() if isinstance(v, int))
    return [run_progress(run_dir, state, stage_epochs) for run_dir, state in states.items()]


def last_activity(folder: Path) -> float:
    """The latest modification time (epoch seconds) of what a working suite touches: the dispatcher's job files
    (``.submitit/``), and each run's lock, metrics and record."""
    folder = Path(folder)
    paths = [*folder.glob(".submitit/*"), *folder.glob("*/*/.lock"), *folder.glob(f"*/*/{store.METRICS}"),
             *folder.glob(f"*/*/{store.RESULT}")]
    times = [0.0]
    for path in paths:
        try:
            times.append(path.stat().st_mtime)
        except OSError:  # removed meanwhile
            continue
    return max(times)


def count_states(runs: Iterable[RunProgress]) -> dict[str, int]:
    """How many runs are in each state."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.state] = counts.get(run.state, 0) + 1
    return counts


def duration(seconds: float) -> str:
    """``3725`` -> ``1h 02m``; ``750`` -> ``12m 30s``; ``42`` -> ``42s``."""
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


@dataclass(frozen=True)
class Eta:
    """Time left for a suite (None: unknown) and how it was estimated, in words."""

    seconds: float | None
    how: str

    def line(self) -> str:
        """``ETA ~1h 05m (estimate: ...)`` or ``ETA unknown (...)``."""
        if self.seconds is None:
            return f"ETA unknown ({self.how})"
        minutes = math.ceil(self.seconds / 60)
        return f"ETA ~{minutes // 60}h {minutes % 60:02d}m (estimate: {self.how})"


def _per_run_estimate(runs: list[RunProgress], role: str) -> tuple[float, str] | None:
    """What one run of ``role`` not yet started should take, and whence: the median wall time of done runs of
    its role, else of the running ones' extrapolated totals, else the same over every role."""
    for pool, scope in (([r for r in runs if r.role == role], f"{role} "), (runs, "")):
        walls = [r.wall_seconds for r in pool if r.state == "done" and r.wall_seconds]
        if walls:
            return statistics.median(walls), f"the median wall time of {len(walls)} done {scope}run(s)"
        projected = [r.projected_seconds for r in pool if r.state == "running" and r.projected_seconds]
        if projected:
            return (statistics.median(projected),
                    f"the median extrapolated total of {len(projected)} running {scope}run(s), as none is done")
    return None


def estimate_eta(runs: list[RunProgress]) -> Eta | None:
    """The suite's ETA (None when nothing is running or left to run). See the module's docstring."""
    running = [r for r in runs if r.state == "running"]
    todo = [r for r in runs if r.state in WAITING_STATES]
    if not running and not todo:
        return None
    parts: list[float] = []
    words: list[str] = []
    measured = [r for r in running if r.remaining_seconds is not None]
    if measured:
        left = sum(r.epochs_total - r.epochs_done for r in measured)
        lower = sum(not r.stages_known for r in measured)
        words.append(f"{len(measured)} running with {left} epoch(s) left at their own s/epoch"
                     + (f" ({lower} in a method stage of unknown length: a lower bound)" if lower else ""))
        parts += [r.remaining_seconds for r in measured]
    resumable = [r for r in todo if r.remaining_seconds is not None and r.epochs_done]
    if resumable:
        words.append(f"{len(resumable)} to resume with "
                     f"{sum(r.epochs_total - r.epochs_done for r in resumable)} epoch(s) left")
        parts += [r.remaining_seconds for r in resumable]
    counted = {r.run_id for r in [*measured, *resumable]}
    fresh = [r for r in [*running, *todo] if r.run_id not in counted]
    for role in sorted({r.role for r in fresh}):
        group = [r for r in fresh if r.role == role]
        estimate = _per_run_estimate(runs, role)
        if estimate is None:
            return Eta(None, "no run has finished an epoch yet")
        each, whence = estimate
        words.append(f"{len(group)} {role} run(s) without a measured epoch x {duration(each)} ({whence})")
        parts += [each] * len(group)
    parallel = max(1, len(running))
    longest = max((r.remaining_seconds for r in measured), default=0.0)
    seconds = max(longest, sum(parts) / parallel)
    words.append(f"{duration(sum(parts))} of work over {parallel} run(s) at once"
                 + ("" if running else " (none is running now)"))
    return Eta(seconds, "; ".join(words))
