"""A diverged run is recorded as diverged, not failed, even though the loop reads the step losses on the host only
every few steps: an error that bad weights cause in a later step (here KD-SVD's SVD of non-finite features) is
reported as the divergence (a loss not read yet, or the weights themselves)."""

from __future__ import annotations

from pathlib import Path

import pytest
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

    import torch

    from kdbench.engine.steplog import SpikeCounter, StepLog

    torch.manual_seed(0)
    log = StepLog(SpikeCounter(warmup=2), bound=1e4)
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


def test_held_gradients_give_the_norms_of_each_step_in_order() -> None:
    """Gradients held for norms taken later (hold 3, eight steps, a computed norm in between, and one step missing
    a gradient, which takes the general path) give the norm each step had, in order, across the hold limit."""
    import math

    import torch

    from kdbench.engine.steplog import SpikeCounter, StepLog

    torch.manual_seed(1)
    log = StepLog(SpikeCounter(), bound=1e4, hold=3)
    grads = [[torch.randn(3, 2) * (step + 1), torch.randn(5)] for step in range(8)]
    grads[6] = grads[6][1:]  # a parameter without a gradient at this step
    expected = [float(torch.linalg.vector_norm(torch.cat([x.flatten() for x in g]).double())) for g in grads]
    for step, g in enumerate(grads):
        if step == 4:  # a step whose norm is given: the held ones before it keep their place
            log.add(torch.tensor(1.0), [torch.tensor(1.0)], norm=torch.tensor(expected[4]))
        else:
            log.add(torch.tensor(1.0), [torch.tensor(1.0)], grads=g)
        assert len(log.held) < 3
    log._take_held_norms()
    assert log._step_norms() == pytest.approx(expected, rel=1e-6)
    assert log.check() is None and not log.held and log.checked == 8
    assert math.isclose(log.grad_norm_max, max(expected), rel_tol=1e-6)


def test_held_channels_last_gradients_give_their_norms() -> None:
    """Gradients of a channels-last convolution (non-contiguous when stacked) are held and their norms taken."""
    import torch

    from kdbench.engine.steplog import SpikeCounter, StepLog

    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    log, expected = StepLog(SpikeCounter(), bound=1e4, hold=2), []
    for seed in range(3):
        torch.manual_seed(seed)
        conv.zero_grad(set_to_none=True)
        conv(torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)).square().sum().backward()
        grads = [p.grad for p in conv.parameters()]
        assert not grads[0].is_contiguous()
        expected.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))
        log.add(torch.tensor(1.0), [torch.tensor(1.0)], grads=grads)
    log._take_held_norms()
    assert log._step_norms() == pytest.approx(expected, rel=1e-6)


def test_gradients_are_held_only_under_optimizers_that_leave_them_alone() -> None:
    """torch's multi-tensor SGD with Nesterov momentum and no weight decay adds its momentum into the gradients
    themselves: nothing is held then (nor for an unknown optimizer); AdamW and other SGD settings hold."""
    import torch

    from kdbench.engine.steplog import SYNC_EVERY, steps_to_hold

    params = [torch.nn.Parameter(torch.zeros(4))]

    def held(optimizer: torch.optim.Optimizer) -> int:
        return steps_to_hold(optimizer, params, True, None, False)

    sgd = torch.optim.SGD
    assert held(sgd(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0, foreach=True)) == 0
    assert held(sgd([{"params": params, "weight_decay": 0.0}], lr=0.1, momentum=0.9, nesterov=True,
                    weight_decay=5e-4)) == 0  # a group without weight decay is enough
    assert held(sgd(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)) == SYNC_EVERY
    assert held(sgd(params, lr=0.1, momentum=0.9, weight_decay=0.0)) == SYNC_EVERY
    assert held(torch.optim.AdamW(params, foreach=True)) == SYNC_EVERY
    assert held(torch.optim.RMSprop(params)) == 0
    assert steps_to_hold(torch.optim.AdamW(params), params, True, 1.0, False) == 0  # clipping: norms at once
    assert steps_to_hold(torch.optim.AdamW(params), params, True, None, True) == 0  # a method's step hooks


def test_an_epoch_with_held_gradient_norms_equals_one_taking_them_every_step(monkeypatch) -> None:
    """The loop holds a small model's gradients and takes their norms together; through multi-tensor SGD (Nesterov,
    weight decay) and AdamW steps, which leave gradients alone, the epoch's grad-norm peak equals (to float32
    rounding) and every other number is that of taking each step's norm at once (none held); multi-tensor SGD with
    Nesterov and no weight decay, which writes into its gradients, holds none."""
    import dataclasses
    import tempfile

    import torch

    from kdbench.bench.overhead import RECIPE, _digits_kd
    from kdbench.engine import loop, steplog
    from kdbench.engine.recipe import as_train_config, build_scheduler

    def epoch(settings: dict, hold_bytes: int) -> tuple[dict, int]:
        monkeypatch.setattr(steplog, "HOLD_BYTES", hold_bytes)
        splits, regime, student, teacher, method = _digits_kd(3)
        recipe = as_train_config({**RECIPE, "lr": 0.02})
        optimizer_class = torch.optim.AdamW if settings.get("adamw") else torch.optim.SGD
        options = {k: v for k, v in settings.items() if k != "adamw"}
        optimizer = optimizer_class(student.parameters(), lr=0.02, foreach=True, **options)
        with tempfile.TemporaryDirectory() as folder:
            ts = loop.TrainState(student=student, teacher=teacher, method=method, train=splits.train, regime=regime,
                                 test=splits.test, recipe=recipe, eval_batch_size=512, seed=3,
                                 device=torch.device("cpu"), run_dir=Path(folder), log=lambda m: None)
            phase = loop.phases_of(method, recipe)[-1]
            held = steplog.steps_to_hold(optimizer, list(student.parameters()), True, None, False)
            metrics, diverged = loop._train_epoch(ts, dataclasses.replace(phase, recipe=recipe), optimizer,
                                                  build_scheduler(optimizer, recipe, 22), 0, 22)
        assert diverged is None
        return metrics, held

    default = steplog.HOLD_BYTES
    cases = [({"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}, steplog.SYNC_EVERY),
             ({"adamw": True, "weight_decay": 5e-2}, steplog.SYNC_EVERY),
             ({"momentum": 0.9, "nesterov": True, "weight_decay": 0.0}, 0)]  # writes into its gradients: none held
    for settings, expect_held in cases:
        (held_metrics, held), (each_metrics, none) = epoch(settings, default), epoch(settings, 0)
        assert held == expect_held and none == 0, settings
        peak = held_metrics.pop("grad_norm_max")  # reduced in another order: equal to float32 rounding
        assert peak == pytest.approx(each_metrics.pop("grad_norm_max"), rel=1e-6) and peak > 0, settings
        assert held_metrics == each_metrics, settings
