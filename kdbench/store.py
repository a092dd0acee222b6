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
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = 1
"""Version of ``result.json``. Bump it when a field changes meaning; the report lists older records."""

STATES = ("done", "diverged", "failed")
FINISHED_STATES = ("done", "diverged")  # a failed run is retried when its suite is run again

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


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file; a torn last line (killed writer) is ignored."""
    rows = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
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
    """The run's ``result.json``, or None when it has none yet."""
    path = Path(run_dir) / RESULT
    return read_json(path) if path.exists() else None


def is_finished(run_dir: Path) -> bool:
    """True when the run has a readable result in a final state that is not retried (done or diverged)."""
    try:
        result = load_result(run_dir)
    except (OSError, json.JSONDecodeError):
        return False
    return bool(result) and result.get("state") in FINISHED_STATES


@dataclass
class ScannedRecord:
    """One ``result.json`` found by :func:`scan_results`: its path and content, or why it is unreadable."""

    path: Path
    record: dict[str, Any] | None
    problem: str | None = None


def scan_results(root: Path) -> list[ScannedRecord]:
    """Every ``result.json`` below ``root``; unreadable or foreign-schema ones come back with a problem."""
    found = []
    for path in sorted(Path(root).rglob(RESULT)):
        if any(part.startswith(".") for part in path.relative_to(root).parts[:-1]):
            continue  # submitit's folders and temporary files
        try:
            record = read_json(path)
        except (OSError, json.JSONDecodeError) as err:
            found.append(ScannedRecord(path, None, f"unreadable: {err}"))
            continue
        if not isinstance(record, dict) or record.get("schema") != SCHEMA:
            version = record.get("schema") if isinstance(record, dict) else None
            found.append(ScannedRecord(path, None, f"schema {version!r}, expected {SCHEMA}"))
            continue
        found.append(ScannedRecord(path, record))
    return found
