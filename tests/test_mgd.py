"""Golden values and analytic checks for MGD (masked generative distillation).

The golden numbers were computed once in float64 with numpy straight from the formula
``sum (G(M * A(f_s)) - f_t)^2 / N`` (explicit loops for the 1x1 alignment and the two zero-padded 3x3
convolutions of the generator, ReLU between them), independently of the implementation, and are changed only
deliberately. The inputs and weights are closed-form (sines and cosines of a ramp), so numpy rebuilds them exactly.
The implementation was also compared once with the authors' own ``MGDLoss`` (yzd-v/MGD, outside this repository).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdbench.method import Batch
from kdbench.methods.mgd import MGD, draw_mask, generation_block, mgd_loss
from kdbench.models import Outputs, create_network

F64 = torch.float64


def _ramp(n: int, step: float, fn=torch.sin) -> torch.Tensor:
    return fn(torch.arange(n, dtype=F64) * step)


FS = _ramp(36, 0.37).reshape(2, 2, 3, 3)                   # student: N=2, C_s=2, 3x3
FT = (_ramp(54, 0.23, torch.cos) * 1.5).reshape(2, 3, 3, 3)  # teacher: C_t=3
MASK_CHANNEL = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=F64).reshape(2, 3, 1, 1)
MASK_SPATIAL = torch.tensor([[1, 1, 0, 1, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0, 1, 0, 1]], dtype=F64).reshape(2, 1, 3, 3)
GOLDEN = {"channel": 30.714932596587712, "spatial": 29.37929684287315, "none": 29.517201220766808}


def _modules() -> tuple[nn.Conv2d, nn.Sequential]:
    align = nn.Conv2d(2, 3, 1).double()
    generation = generation_block(3).double()
    with torch.no_grad():
        align.weight.copy_((_ramp(6, 0.5, torch.cos) * 0.5).reshape(3, 2, 1, 1))
        align.bias.copy_(torch.tensor([0.1, -0.2, 0.05], dtype=F64))
        generation[0].weight.copy_((_ramp(81, 0.13) * 0.3).reshape(3, 3, 3, 3))
        generation[0].bias.copy_(torch.tensor([0.02, -0.01, 0.03], dtype=F64))
        generation[2].weight.copy_((_ramp(81, 0.29, torch.cos) * 0.3).reshape(3, 3, 3, 3))
        generation[2].bias.copy_(torch.tensor([-0.04, 0.0, 0.01], dtype=F64))
    return align, generation


@pytest.mark.parametrize(("name", "mask"), [("channel", MASK_CHANNEL), ("spatial", MASK_SPATIAL),
                                            ("none", torch.ones(1, 1, 1, 1, dtype=F64))])
def test_mgd_golden(name: str, mask: torch.Tensor) -> None:
    align, generation = _modules()
    assert mgd_loss(FS, FT, generation, align, mask=mask).item() == pytest.approx(GOLDEN[name], rel=1e-10)


def test_mask_ratio_zero_draws_no_mask() -> None:
    align, generation = _modules()
    for mode in ("channel", "spatial"):
        loss = mgd_loss(FS, FT, generation, align, mask_ratio=0.0, mask_mode=mode)
        assert loss.item() == pytest.approx(GOLDEN["none"], rel=1e-10)


def test_reduces_to_sum_mse_over_batch_with_identity_generator() -> None:
    student = _ramp(54, 0.41).reshape(2, 3, 3, 3)
    plain = ((student - FT) ** 2).sum().item() / 2
    assert mgd_loss(student, FT, nn.Identity(), mask_ratio=0.0).item() == pytest.approx(plain, rel=1e-12)
    # the generator's own convolutions set to identity (centre tap 1): zero padding and ReLU change nothing
    # for a positive map
    generation = generation_block(3).double()
    with torch.no_grad():
        for conv in (generation[0], generation[2]):
            conv.weight.zero_()
            conv.weight[:, :, 1, 1] = torch.eye(3, dtype=F64)
            conv.bias.zero_()
    positive = student.abs() + 0.1
    expected = ((positive - FT) ** 2).sum().item() / 2
    assert mgd_loss(positive, FT, generation, mask_ratio=0.0).item() == pytest.approx(expected, rel=1e-12)


def test_weighted_method_loss_is_weight_times_plain_feature_loss() -> None:
    student = create_network("kdb_cnn_small", num_classes=4, in_chans=1)
    teacher = create_network("kdb_cnn_small", num_classes=4, in_chans=1)
    method = MGD(student, teacher, num_classes=4, weight=0.5, mask_ratio=0.0).double()
    assert method.align is None  # equal widths: no alignment, as in the authors' MGDLoss
    method.generation = nn.Identity()
    fs, ft = _ramp(2 * 64 * 4, 0.3).reshape(2, 64, 2, 2), _ramp(2 * 64 * 4, 0.7).reshape(2, 64, 2, 2)
    s = Outputs(logits=torch.zeros(2, 4, dtype=F64), feature=torch.zeros(2, 64, dtype=F64), taps={"stage2": fs})
    t = Outputs(logits=torch.zeros(2, 4, dtype=F64), feature=torch.zeros(2, 64, dtype=F64), taps={"stage2": ft})
    terms = method.losses(Batch(torch.zeros(2, 1, 8, 8), None, torch.arange(2)), s, t)
    assert set(terms) == {"mgd"}  # no labels: no CE term
    assert terms["mgd"].item() == pytest.approx(0.5 * ((fs - ft) ** 2).sum().item() / 2, rel=1e-12)


def test_zero_when_the_generator_reproduces_the_teacher() -> None:
    align, generation = _modules()
    target = generation(align(FS) * MASK_CHANNEL).detach()
    assert mgd_loss(FS, target, generation, align, mask=MASK_CHANNEL).item() == pytest.approx(0.0, abs=1e-12)


def test_masked_entries_carry_nothing() -> None:
    """What the mask zeroes cannot change the loss: spatial masks hide positions of every channel."""
    generation = generation_block(2).double()
    changed = FS.clone()
    changed[MASK_SPATIAL.expand_as(FS) == 0] += 5.0
    assert mgd_loss(changed, FS, generation, mask=MASK_SPATIAL).item() == \
        pytest.approx(mgd_loss(FS, FS, generation, mask=MASK_SPATIAL).item(), rel=1e-12)
    assert mgd_loss(changed, FS, generation, mask=torch.ones(1, dtype=F64)).item() != \
        pytest.approx(mgd_loss(FS, FS, generation, mask=torch.ones(1, dtype=F64)).item(), rel=1e-6)


@pytest.mark.parametrize("ratio", [0.15, 0.5, 0.65])
def test_mask_ratio_semantics(ratio: float) -> None:
    rng = torch.Generator().manual_seed(0)
    channel = draw_mask((64, 512, 7, 7), ratio, "channel", rng=rng)
    spatial = draw_mask((64, 512, 32, 32), ratio, "spatial", rng=rng)
    assert channel.shape == (64, 512, 1, 1) and spatial.shape == (64, 1, 32, 32)  # shared across H*W / across C
    assert set(channel.unique().tolist()) == {0.0, 1.0}
    assert (channel == 0).double().mean().item() == pytest.approx(ratio, abs=0.01)
    assert (spatial == 0).double().mean().item() == pytest.approx(ratio, abs=0.01)


def test_mask_extremes_and_reproducibility() -> None:
    assert draw_mask((4, 8, 3, 3), 0.0, "channel").min().item() == 1.0
    assert draw_mask((4, 8, 3, 3), 0.0, "spatial").min().item() == 1.0
    assert draw_mask((4, 8, 3, 3), 1.0, "channel").max().item() == 0.0
    a = draw_mask((4, 8, 3, 3), 0.5, rng=torch.Generator().manual_seed(3), dtype=F64)
    b = draw_mask((4, 8, 3, 3), 0.5, rng=torch.Generator().manual_seed(3), dtype=F64)
    assert torch.equal(a, b) and a.dtype == F64
    align, generation = _modules()
    losses = [mgd_loss(FS, FT, generation, align, mask_ratio=0.5, rng=torch.Generator().manual_seed(7)).item()
              for _ in range(2)]
    assert losses[0] == losses[1]
    with pytest.raises(ValueError, match="mask mode"):
        draw_mask((1, 1, 1, 1), 0.5, "pixel")


def test_gradients_reach_student_align_and_generator_not_teacher() -> None:
    align, generation = _modules()
    s, t = FS.clone().requires_grad_(True), FT.clone().requires_grad_(True)
    mgd_loss(s, t, generation, align, mask=MASK_CHANNEL).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (*align.parameters(), *generation.parameters()))


def test_method_taps_align_and_terms() -> None:
    torch.manual_seed(0)
    student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1)
    teacher = create_network("kdb_cnn_small", num_classes=4, in_chans=1)
    method = MGD(student, teacher, num_classes=4)
    assert method.needs.student_taps == ("stage2",) and method.needs.teacher_taps == ("stage2",)
    assert isinstance(method.align, nn.Conv2d) and (method.align.in_channels, method.align.out_channels) == (8, 64)
    assert method.align.kernel_size == (1, 1) and method.align.bias is not None
    assert [type(m) for m in method.generation] == [nn.Conv2d, nn.ReLU, nn.Conv2d]
    assert (method.weight, method.mask_ratio, method.mask_mode, method.ce) == (7e-5, 0.15, "channel", 1.0)
    x = torch.randn(4, 1, 8, 8)
    s, t = student(x, taps=method.needs.student_taps), teacher(x, taps=method.needs.teacher_taps)
    assert set(method.losses(Batch(x, torch.tensor([0, 1, 2, 3]), torch.arange(4)), s, t)) == {"mgd", "ce"}
    earlier = MGD(student, teacher, num_classes=4, stage=1)
    assert earlier.needs.student_taps == ("stage1",) and earlier.align.out_channels == 32


def test_unequal_spatial_sizes_are_pooled_to_the_smaller() -> None:
    student = create_network("kdb_cnn_small", num_classes=4, in_chans=1)
    method = MGD(student, create_network("kdb_cnn_small", num_classes=4, in_chans=1), num_classes=4,
                 weight=1.0, mask_ratio=0.0).double()
    method.generation = nn.Identity()
    big, small = _ramp(64 * 16, 0.3).reshape(1, 64, 4, 4), _ramp(64 * 4, 0.7).reshape(1, 64, 2, 2)
    pooled = nn.functional.avg_pool2d(big, 2)
    batch = Batch(torch.zeros(1, 1, 8, 8), None, torch.arange(1))
    zeros = (torch.zeros(1, 4, dtype=F64), torch.zeros(1, 64, dtype=F64))
    for fs, ft, expected in ((big, small, pooled - small), (small, big, small - pooled)):
        s, t = Outputs(*zeros, taps={"stage2": fs}), Outputs(*zeros, taps={"stage2": ft})
        assert method.losses(batch, s, t)["mgd"].item() == pytest.approx((expected ** 2).sum().item(), rel=1e-12)
    with pytest.raises(ValueError, match="equal spatial size"):
        mgd_loss(big, small, nn.Identity())


def test_invalid_settings_are_refused() -> None:
    student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1)
    teacher = create_network("kdb_cnn_small", num_classes=4, in_chans=1)
    with pytest.raises(ValueError, match="mask_mode must be"):
        MGD(student, teacher, num_classes=4, mask_mode="pixel")
    with pytest.raises(ValueError, match="mask_ratio"):
        MGD(student, teacher, num_classes=4, mask_ratio=1.5)
    with pytest.raises(ValueError, match="stage 3 does not exist"):
        MGD(student, teacher, num_classes=4, stage=3)
