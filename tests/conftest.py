"""Shared fixtures: tiny SYNTHETIC suites (fast, for tests only) and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def tiny_suite(**overrides: object) -> dict:
    """A suite over the SYNTHETIC data set: 2 regimes, vanilla/kd/mse, 1 seed, 3 epochs. Seconds to run."""
    suite = {
        "name": "tiny",
        "dataset": {"name": "synthetic", "num_classes": 4, "num_train": 96, "num_test": 48},
        "regimes": [{"name": "balanced"}, {"name": "unlabeled"}],
        "pairs": [{"teacher": "kdb_cnn_small", "student": "kdb_cnn_nano"}],
        "methods": [{"name": "vanilla"}, {"name": "kd"}, {"name": "mse"}],
        "seeds": [0],
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.05},
        "teacher": {"train": {"epochs": 3, "batch_size": 32}},
        "executor": {"name": "debug", "checkpoint_every_s": 0},  # every epoch: the kill/resume tests need it
    }
    suite.update(overrides)
    return suite


def write_suite(path: Path, suite: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def write_fabricated_runs(suite: Path, records: list[dict], epochs: int = 3) -> None:
    """Write FABRICATED records (and a short per-epoch metrics file each) under ``suite/runs/<run_id>/``."""
    from kdbench import store

    for record in records:
        folder = suite / "runs" / record["run_id"]
        store.atomic_write_json(folder / store.RESULT, record)
        store.atomic_write_jsonl(folder / store.METRICS, [{"epoch": e, "phase": "main", "top1": 50.0 + e}
                                                          for e in range(1, epochs + 1)])


TIMING_KEYS = ("train_seconds", "eval_seconds")
"""Per-epoch metric keys that are timings: they differ between two runs of the same numbers."""


def records_by_id(root: Path) -> dict:
    """Every record under ``root`` (typed), by run id."""
    from kdbench import store

    return {path.parent.name: store.load_record(path.parent) for path in sorted(Path(root).rglob(store.RESULT))}


def metric_lines(root: Path, run_id: str) -> list[dict]:
    """The per-epoch lines of one run under ``root``, timings left out."""
    from kdbench import store

    (path,) = Path(root).rglob(f"{run_id}/{store.METRICS}")
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in store.read_jsonl(path)]


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    """A tiny synthetic suite written into a folder whose name has a space and a quote."""
    return write_suite(tmp_path / "my 'suites'" / "tiny.yaml", tiny_suite())


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` the way a user would; returns the completed process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=env, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """A real single-node SLURM cluster for the session: used as is when it answers, else started with
    ``tests/slurm/cluster.sh`` (needs root and apt) and stopped at the end. Without root the SLURM tests skip,
    unless ``KDBENCH_REQUIRE_SLURM=1`` (CI) turns that into a failure."""
    script = ROOT / "tests" / "slurm" / "cluster.sh"
    if subprocess.run([str(script), "status"], capture_output=True, timeout=60).returncode == 0:
        yield
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        message = "a SLURM test cluster needs root and apt-get to start (tests/slurm/cluster.sh start)"
        if os.environ.get("KDBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    started = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        pytest.fail(f"could not start the SLURM test cluster:\n{started.stdout}\n{started.stderr}")
    try:
        yield
    finally:
        subprocess.run([str(script), "stop"], capture_output=True, timeout=300)
