"""A diverged run is recorded as diverged, not failed, even though the loop reads the step losses on the host only
every few steps: an error that bad weights cause in a later step (here KD-SVD's SVD of non-finite features) is
reported as the divergence (a loss not read yet, or the weights themselves)."""

from __future__ import annotations

from pathlib import Path

from conftest import records_by_id, tiny_suite

from kdbench.dispatch import dispatch
from kdbench.suite import expand, validate


def test_an_svd_error_after_the_weights_blew_up_is_recorded_as_the_divergence(tmp_path: Path) -> None:
    suite = validate(tiny_suite(pairs=[{"teacher": "kdb_cnn_small", "student": "kdb_cnn_small"}],
                                regimes=[{"name": "balanced"}],
                                methods=[{"name": "kdsvd", "train": {"lr": 1.0e6, "diverge_above": 1.0e30}}]))
    plan = expand(suite)
    dispatch(plan, tmp_path, suite.executor, progress=False)
    (record,) = [r for run_id, r in records_by_id(tmp_path).items() if run_id in plan.runs]
    assert record.state == "diverged", record.error
    assert record.stability.reason.startswith(("non-finite loss", "non-finite weights after step")), \
        record.stability.reason
