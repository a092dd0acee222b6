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


def test_the_step_log_reads_totals_and_sums_as_a_per_step_check_would() -> None:
    """Per-parameter norms and stacked terms are reduced when the log is read, many steps at once: the peak and
    the count of non-finite norms, the spikes, the sums and the first bad step are those of reading every step."""
    import math
    from types import SimpleNamespace

    import torch

    from kdbench.engine.loop import SpikeCounter, _StepLog

    torch.manual_seed(0)
    ts = SimpleNamespace(spikes=SpikeCounter(warmup=2))
    log = _StepLog(ts, SimpleNamespace(recipe=SimpleNamespace(diverge_above=1e4)))
    grads = [[torch.randn(3, 2), torch.randn(4)] for _ in range(6)]
    grads[2][1][0] = float("inf")
    terms = [torch.rand(2) for _ in range(6)]
    terms[4] = torch.tensor([30.0, 1.0])  # a spike
    for step, (g, t) in enumerate(zip(grads, terms, strict=True)):
        whole = torch.linalg.vector_norm(torch.cat([x.flatten() for x in g]))
        norm = list(torch._foreach_norm(g)) if step % 3 else whole  # per parameter, or the total (clipping)
        log.add(t.sum(), t, norm)
        if step == 3:
            assert log.check() is None
    assert log.check() is None and log.checked == 6
    expected = [float(torch.linalg.vector_norm(torch.cat([x.flatten() for x in g]).double())) for g in grads]
    assert log.nonfinite_grads == 1
    assert math.isclose(log.grad_norm_max, max(n for n in expected if math.isfinite(n)), rel_tol=1e-6)
    assert torch.allclose(log.term_sums, torch.stack(terms).sum(0)) and math.isclose(
        float(log.loss_sum), float(torch.stack(terms).sum()), rel_tol=1e-6)
    assert log.spikes == 1
    log.add(torch.tensor(float("nan")), torch.tensor([float("nan")] * 2), list(torch._foreach_norm(grads[0])))
    log.add(torch.tensor(1e9), torch.tensor([1e9, 0.0]), list(torch._foreach_norm(grads[0])))
    assert log.check() == "non-finite loss nan at step 7"
