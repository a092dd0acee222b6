"""bf16 autocast and channels-last: off by default on CPUs, on by default on GPUs, forced on here for a CPU run."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import tiny_suite

from kdbench import store
from kdbench.dispatch import dispatch
from kdbench.engine import Precision
from kdbench.suite import expand, validate


def test_auto_means_on_for_gpus_only() -> None:
    assert Precision.resolve({"amp": "auto", "channels_last": "auto"}, torch.device("cpu")) == Precision(False, False)
    assert Precision.resolve({"amp": "auto", "channels_last": "auto"}, torch.device("cuda")) == Precision(True, True)
    assert Precision.resolve({"amp": "off", "channels_last": "on"}, torch.device("cuda")) == Precision(False, True)
    assert Precision.resolve(None, torch.device("cpu")) == Precision(False, False)


SMALL_GENDD = {"name": "gendd", "width": 64, "mul": 2, "sample_steps": 4, "num_samples": 2, "warm_start_epochs": 1}


def test_a_run_trains_under_bf16_autocast_and_channels_last_and_records_it(tmp_path: Path) -> None:
    methods = [{"name": "kd"}, SMALL_GENDD]
    suite = validate(tiny_suite(regimes=[{"name": "balanced"}], methods=methods,
                                executor={"name": "debug", "amp": "on", "channels_last": "on"}))
    plan = expand(suite)
    default = expand(validate(tiny_suite(regimes=[{"name": "balanced"}], methods=methods)))
    assert plan.runs.keys() == default.runs.keys()  # precision is recorded, not part of the run id
    summary = dispatch(plan, tmp_path, suite.executor, progress=False)
    assert summary.counts() == {"done": 3}
    for run_dir in (tmp_path / "tiny" / "runs").iterdir():
        record = store.load_result(run_dir)
        assert record["precision"] == {"amp_bf16": True, "channels_last": True}
        assert 0.0 <= record["metrics"]["top1_last"] <= 100.0
