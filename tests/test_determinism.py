"""Determinism you can rely on (issue 19): one seed and one world size give bit-identical records on CPU; 1 and 2
data-parallel processes agree on the first epoch's loss (the global batch and the lr do not change with the world
size); every record says what computed its floats (CPU model, instruction sets, BLAS, oneDNN, GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import metric_lines, records_by_id, tiny_suite

from kdbench.dispatch import dispatch
from kdbench.engine import set_deterministic
from kdbench.suite import expand, validate


def test_two_runs_with_one_seed_give_bit_identical_records_on_cpu(tmp_path: Path) -> None:
    suite = validate(tiny_suite(regimes=[{"name": "balanced"}], methods=[{"name": "kd"}, {"name": "mse"}]))
    for name in ("first", "second"):
        dispatch(expand(suite), tmp_path / name, suite.executor, progress=False)
    first, second = records_by_id(tmp_path / "first"), records_by_id(tmp_path / "second")
    assert first.keys() == second.keys() and len(first) == 3
    for run_id, one in first.items():
        two = second[run_id]
        assert one.state == two.state == "done"
        assert one.metrics == two.metrics  # exact floats, not approx
        assert one.stability == two.stability
        assert metric_lines(tmp_path / "first", run_id) == metric_lines(tmp_path / "second", run_id)
        for key in ("cpu", "cpu_flags", "cpu_capability", "blas", "onednn", "deterministic"):
            assert key in one.env, key
        assert one.env.deterministic is False


def _first_epoch_losses(tmp_path: Path, processes: int) -> dict[str, float]:
    suite = validate(tiny_suite(
        regimes=[{"name": "balanced"}], methods=[{"name": "kd"}],
        pairs=[{"teacher": "kdb_mlp_base", "student": "kdb_mlp_tiny"}],  # no BatchNorm: per-shard statistics
        train={"epochs": 1, "batch_size": 32, "lr": 0.05}, teacher={"train": {"epochs": 1, "batch_size": 32}},
        executor={"name": "local", "workers": 1, "processes_per_run": processes}))
    plan = expand(suite)
    summary = dispatch(plan, tmp_path, suite.executor, progress=False)
    assert summary.counts() == {"done": 2}, summary.states
    return {run_id: metric_lines(tmp_path, run_id)[0]["train_loss"] for run_id in plan.specs()}


def test_one_and_two_processes_agree_on_the_first_epochs_loss(tmp_path: Path) -> None:
    one = _first_epoch_losses(tmp_path / "one", 1)
    two = _first_epoch_losses(tmp_path / "two", 2)
    assert one.keys() == two.keys()  # same specs, same run ids: the world size is not part of what a run is
    for run_id in one:  # the teacher, then the student distilling from its 2-process teacher
        assert two[run_id] == pytest.approx(one[run_id], rel=1e-5), run_id


def test_deterministic_mode_is_switched_and_recorded() -> None:
    import torch

    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    finally:
        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
    suite = validate(tiny_suite(executor={"name": "debug", "deterministic": True}))
    specs = expand(suite).runs.values()
    assert all(spec.runtime.deterministic for spec in specs)
    assert all(spec.to_dict()["runtime"]["deterministic"] is True for spec in specs)
    plain = expand(validate(tiny_suite()))
    assert set(plain.runs) == set(expand(suite).runs)  # how it is computed is recorded, not part of the run id
    assert all("deterministic" not in spec.to_dict()["runtime"] for spec in plain.runs.values())
