"""Result layout, the record schema, atomic writes, run-directory locks and scanning of records.

``results/<suite>/runs/<run_id>/`` holds ``spec.json`` (the resolved spec), ``metrics.jsonl`` (one line per
epoch), ``checkpoint.pt`` (the resume point) and ``result.json`` (written last, atomically). Teachers live in
``results/<suite>/teachers/<teacher_id>/`` with the same files plus ``weights.pt``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.store.record import FINISHED_STATES, RUN_STATES, SCHEMA, Record, RecordError, migrate  # noqa: F401 (the store API)

RESULT = "result.json"
SPEC = "spec.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.pt"
SUITE = "suite.json"


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks): how teacher weights and checkpoints are identified."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (non-finite floats become null)."""
    atomic_write_bytes(path, (json.dumps(_finite(obj), indent=2, sort_keys=True) + "\n").encode())


def atomic_write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Atomically (re)write a JSON-lines file, one object per line."""
    atomic_write_bytes(path, "".join(json.dumps(_finite(r), sort_keys=True) + "\n" for r in rows).encode())


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line in a single ``write`` (``O_APPEND``). Not fsynced and not rewritten: a reader sees
    whole lines, or a torn last line of a killed writer that :func:`read_jsonl` stops at. For files that are a
    view of something durable (``metrics.jsonl`` is rewritten from the checkpoint's history on resume)."""
    data = (json.dumps(_finite(row), sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(f"{path}: short write (disk full?)")
    finally:
        os.close(fd)


class StoreReadError(ValueError):
    """A file kdbench wrote and reads back (record, spec, suite.json, job reference) is unreadable or invalid.
    ``str()`` is one line naming the file and what is wrong with it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = Path(path), problem


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def read_json(path: Path, expect: type | None = dict) -> Any:
    """Read a JSON file kdbench wrote: any failure (missing, bytes, encoding, syntax, NaN/Infinity, a value of
    another type than ``expect``) is one :class:`StoreReadError` naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise StoreReadError(path, f"cannot be read ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StoreReadError(path, f"not UTF-8 text (byte {err.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        what = "empty" if not text.strip() else f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        raise StoreReadError(path, what + (": truncated?" if text.strip() else "")) from None
    except (ValueError, RecursionError) as err:
        raise StoreReadError(path, f"not valid JSON ({err})") from None
    if expect is not None and not isinstance(value, expect):
        raise StoreReadError(path, f"holds a JSON {type(value).__name__}, expected an object")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def record_problems(record: dict[str, Any]) -> list[str]:
    """What is wrong with a ``result.json``'s content, one phrase each (empty: a valid record). The structure
    (schema, run id, state, spec, metrics) and every metric value: a number, a list of numbers, or null."""
    problems = []
    try:
        record = migrate(record)
    except RecordError as err:
        problems.append(str(err))
    if not isinstance(record.get("run_id"), str):
        problems.append("no run_id")
    if record.get("state") not in RUN_STATES:
        problems.append(f"state {record.get('state')!r} is none of {', '.join(RUN_STATES)}")
    if not isinstance(record.get("spec"), dict):
        problems.append("no spec mapping")
    for section in ("metrics", "cost", "stability"):
        if not isinstance(record.get(section, {}) or {}, dict):
            problems.append(f"'{section}' is not a mapping")
    metrics = record.get("metrics") or {}
    for key, value in sorted(metrics.items() if isinstance(metrics, dict) else []):
        if value is None or _is_number(value):
            continue
        if isinstance(value, list) and all(v is None or _is_number(v) for v in value):
            continue
        problems.append(f"metrics.{key} = {value!r} is not a number")
    return problems


def read_record(path: Path) -> dict[str, Any]:
    """A ``result.json``, checked by :func:`record_problems`: raises :class:`StoreReadError` naming the file and
    every problem."""
    record = read_json(path)
    problems = record_problems(record)
    if problems:
        raise StoreReadError(path, "; ".join(problems))
    return record


def write_record(run_dir: Path, record: Record) -> None:
    """Atomically write a run's ``result.json`` from its typed record (the one writer of records)."""
    atomic_write_json(Path(run_dir) / RESULT, record.to_dict())


def typed_record(raw: dict[str, Any], path: Path) -> Record:
    """A checked record's JSON object as a :class:`Record`; raises :class:`StoreReadError` naming ``path``."""
    try:
        return Record.from_dict(raw)
    except RecordError as err:
        raise StoreReadError(path, str(err)) from None


def load_record(run_dir: Path) -> Record | None:
    """The run's ``result.json`` as a typed :class:`Record`, or None when it has none yet; an invalid record
    raises :class:`StoreReadError`."""
    path = Path(run_dir) / RESULT
    return typed_record(read_record(path), path) if path.exists() else None


def move_aside(path: Path, tag: str = "corrupt") -> Path:
    """Rename a bad file to ``<name>.<tag>-<time>`` beside it (never deleted) and return the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.{tag}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
    os.replace(path, target)
    return target


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file; reading stops at the first line that is not a JSON object (a torn last line of a
    killed writer, or garbage)."""
    rows: list[dict[str, Any]] = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            break
        if not isinstance(row, dict):
            break
        rows.append(row)
    return rows


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock for longer than we were willing to wait."""


@contextlib.contextmanager
def run_lock(run_dir: Path, timeout_s: float = 0.0) -> Iterator[None]:
    """Exclusive lock on a run directory, so two processes never train the same run at once.

    Waits at most ``timeout_s`` seconds for a holder to finish, then raises :class:`RunLockedError`.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunLockedError(f"{run_dir} is being run by another process") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_locked(run_dir: Path) -> bool:
    """True while some process holds the run's lock (i.e. the run is executing)."""
    lock = run_dir / ".lock"
    if not lock.exists():
        return False
    with open(lock) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def load_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``result.json`` (checked by :func:`read_record`), or None when it has none yet. An invalid
    record raises :class:`StoreReadError`."""
    path = Path(run_dir) / RESULT
    return read_record(path) if path.exists() else None


def result_or_empty(run_dir: Path) -> dict[str, Any]:
    """The run's ``result.json`` as it is, for reading optional sections (diagnostics, extra evaluations), or
    ``{}`` when it is absent or unreadable (the report lists those from :func:`scan_results`)."""
    try:
        return read_json(Path(run_dir) / RESULT)
    except StoreReadError:
        return {}


def is_finished(run_dir: Path) -> bool:
    """True when the run has a valid result in a final state that is not retried (done or diverged)."""
    try:
        record = load_record(run_dir)
    except StoreReadError:
        return False
    return record is not None and record.finished


def set_aside_invalid_result(run_dir: Path) -> str | None:
    """If the run's ``result.json`` is unreadable or invalid, move it aside (it is kept) and return one line
    saying so; the run is then not finished and is redone. None when the record is valid or absent."""
    path = Path(run_dir) / RESULT
    if not path.exists():
        return None
    try:
        read_record(path)
        return None
    except StoreReadError as err:
        moved = move_aside(path)
        return f"{err.problem}: moved aside to {moved.name}; the run is redone"


@dataclass
class ScannedRecord:
    """One ``result.json`` found by :func:`scan_results`: its path and content, or why it is unreadable."""

    path: Path
    record: dict[str, Any] | None
    problem: str | None = None
    dropped: list[str] = field(default_factory=list)  # invalid values left out of ``record``, one phrase each


def scan_results(root: Path) -> list[ScannedRecord]:
    """Every ``result.json`` below ``root``; unreadable or invalid ones come back with a problem, records whose
    structure is valid but whose metric values are not come back with those values dropped and named in
    ``dropped``."""
    found = []
    for path in sorted(Path(root).rglob(RESULT)):
        if any(part.startswith(".") for part in path.relative_to(root).parts[:-1]):
            continue  # submitit's folders and temporary files
        try:
            record = read_json(path)
        except StoreReadError as err:
            found.append(ScannedRecord(path, None, err.problem))
            continue
        problems = record_problems(record)
        structural = [p for p in problems if not p.startswith("metrics.")]
        if structural:
            found.append(ScannedRecord(path, None, "; ".join(structural)))
            continue
        dropped = [p for p in problems if p.startswith("metrics.")]
        if dropped:
            bad = {p.split(" = ", 1)[0].removeprefix("metrics.") for p in dropped}
            record = {**record, "metrics": {k: v for k, v in record["metrics"].items() if k not in bad}}
        found.append(ScannedRecord(path, record, dropped=dropped))
    return found
