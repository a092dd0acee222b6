"""Shared fixtures: tiny SYNTHETIC suites (fast, for tests only) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
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
        "executor": {"name": "debug"},
    }
    suite.update(overrides)
    return suite


def write_suite(path: Path, suite: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    """A tiny synthetic suite written into a folder whose name has a space and a quote."""
    return write_suite(tmp_path / "my 'suites'" / "tiny.yaml", tiny_suite())


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` the way a user would; returns the completed process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=env, timeout=timeout)
