"""Golden values and analytic checks for the KD and MSE losses.

The golden numbers were computed once in float64 with numpy straight from the formulas (softmax, KL, CE,
mean squared error), independently of the implementation, and are changed only deliberately.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdbench.methods.kd import kd_loss
from kdbench.methods.mse import mse_loss

ZS = torch.tensor([[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.0, 1.5]], dtype=torch.float64)
ZT = torch.tensor([[2.0, 0.0, 1.0, -0.5], [-0.3, 0.8, 0.4, 2.2]], dtype=torch.float64)
Y = torch.tensor([2, 3])

GOLDEN_KD = {1.0: 0.255132646037519, 4.0: 0.2906828010175418}  # T^2 * mean_b sum_c p_t log(p_t/p_s)
GOLDEN_CE = 0.480482576660651
GOLDEN_MSE = 0.76                                                # mean over the 8 entries of (zs - zt)^2


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_golden(temperature: float) -> None:
    assert kd_loss(ZS, ZT, temperature).item() == pytest.approx(GOLDEN_KD[temperature], rel=1e-12)


def test_ce_golden_matches_torch() -> None:
    assert F.cross_entropy(ZS, Y).item() == pytest.approx(GOLDEN_CE, rel=1e-12)


def test_mse_golden() -> None:
    assert mse_loss(ZS, ZT).item() == pytest.approx(GOLDEN_MSE, rel=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kd_zero_when_student_equals_teacher(temperature: float) -> None:
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert kd_loss(logits, logits.clone(), temperature).item() == pytest.approx(0.0, abs=1e-6)
    assert mse_loss(logits, logits.clone()).item() == 0.0


def test_kd_positive_and_shift_invariant() -> None:
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    loss = kd_loss(zs, zt, 2.0)
    assert loss.item() > 0
    assert kd_loss(zs + 3.0, zt - 1.0, 2.0).item() == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize("loss_fn", [lambda s, t: kd_loss(s, t, 4.0), mse_loss])
def test_gradients_reach_student_only(loss_fn) -> None:
    student = ZS.clone().requires_grad_(True)
    teacher = ZT.clone().requires_grad_(True)
    loss_fn(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kd_gradient_matches_closed_form() -> None:
    """d/dz_s of T^2 KL(p_t || p_s) averaged over the batch is T (p_s - p_t) / B."""
    T = 4.0
    student = ZS.clone().requires_grad_(True)
    kd_loss(student, ZT, T).backward()
    expected = T * (torch.softmax(ZS / T, 1) - torch.softmax(ZT / T, 1)) / ZS.shape[0]
    assert torch.allclose(student.grad, expected, atol=1e-12)
