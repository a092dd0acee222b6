"""Golden values and analytic checks for the feature methods AT, SP, RKD and PKT.

The golden numbers were computed once in float64 with numpy straight from each paper's formula (attention maps,
row-normalized Gram matrices, normalized distances and triplet angles with the Huber loss, conditional cosine
similarity distributions), independently of the implementations.
"""

from __future__ import annotations

import pytest
import torch

from kdbench.methods.at import at_loss
from kdbench.methods.pkt import pkt_loss
from kdbench.methods.rkd import rkd_terms
from kdbench.methods.sp import sp_loss

F64 = torch.float64
FS = torch.tensor([[[[0.0, 0.3], [-0.27, -0.89]], [[-0.45, -0.99], [0.06, 1.34]]],
                   [[[-0.49, -0.62], [0.49, 0.36]], [[0.11, -0.93], [-0.03, 0.7]]],
                   [[[-1.34, -0.46], [-1.9, -1.29]], [[-1.84, -0.24], [-1.27, 0.27]]]], dtype=F64)
FT = torch.tensor([[[[0.16, -0.19], [-2.52, -0.54]], [[-0.05, 0.11], [-1.53, -0.48]], [[-0.98, -0.81], [1.06, -0.81]]],
                   [[[-0.03, 0.88], [-0.58, -0.11]], [[0.11, 0.06], [-1.23, 0.08]], [[1.36, -1.55], [0.86, 0.12]]],
                   [[[-0.64, 2.0], [0.76, -1.2]], [[0.07, 0.58], [-0.19, 0.68]], [[-0.07, 0.67], [1.44, -0.68]]]],
                  dtype=F64)
ES = torch.tensor([[0.2, -0.46, 0.13], [-1.19, -0.58, -0.2], [0.9, 1.15, -1.32], [-0.79, 0.65, -1.99]], dtype=F64)
ET = torch.tensor([[-0.46, -0.1, 1.26, 0.69, -0.33], [-0.37, -0.25, 1.52, -0.43, -0.3],
                   [0.35, -0.12, -0.2, -1.11, -0.01], [-0.44, 1.17, 0.65, -0.02, 0.67]], dtype=F64)


def test_at_golden() -> None:
    assert at_loss([FS], [FT]).item() == pytest.approx(0.26126043775822555, rel=1e-10)


def test_sp_golden() -> None:
    assert sp_loss(FS, FT).item() == pytest.approx(0.060771158109922126, rel=1e-10)


def test_rkd_golden() -> None:
    distance, angle = rkd_terms(ES, ET)
    assert (distance.item(), angle.item()) == pytest.approx((0.016112986666746487, 0.03534912098961838), rel=1e-9)


def test_pkt_golden() -> None:
    assert pkt_loss(ES, ET).item() == pytest.approx(0.02997148661984752, rel=1e-9)


def test_zero_when_the_student_reproduces_the_teacher() -> None:
    assert at_loss([FT.clone()], [FT]).item() == pytest.approx(0.0, abs=1e-12)
    assert sp_loss(FT.clone(), FT).item() == pytest.approx(0.0, abs=1e-12)
    assert all(v.item() == pytest.approx(0.0, abs=1e-12) for v in rkd_terms(ET.clone(), ET))
    assert pkt_loss(ET.clone(), ET).item() == pytest.approx(0.0, abs=1e-12)


def test_the_invariances_the_papers_build_on() -> None:
    g = torch.Generator().manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=F64))
    # RKD: distances are normalized by their mean and angles ignore scale: any rotation and scaling of the
    # student's embedding keeps both terms
    distance = rkd_terms(ES, ET)[0]
    moved = rkd_terms(2.5 * (ET @ rotation)[:, :5], ET)
    assert all(v.item() == pytest.approx(0.0, abs=1e-10) for v in moved)
    assert rkd_terms(3.0 * ES, ET)[0].item() == pytest.approx(distance.item(), rel=1e-10)
    # PKT: cosine similarities ignore each embedding's length
    assert pkt_loss(ES * torch.tensor([[2.0], [0.5], [3.0], [1.0]], dtype=F64), ET).item() == \
        pytest.approx(pkt_loss(ES, ET).item(), rel=1e-10)
    # AT: attention maps are normalized, so scaling a stage output changes nothing; SP likewise for Gram rows
    assert at_loss([4.0 * FS], [FT]).item() == pytest.approx(at_loss([FS], [FT]).item(), rel=1e-10)
    assert sp_loss(4.0 * FS, FT).item() == pytest.approx(sp_loss(FS, FT).item(), rel=1e-10)


@pytest.mark.parametrize("loss", [
    lambda s, t, es, et: at_loss([s], [t]), lambda s, t, es, et: sp_loss(s, t),
    lambda s, t, es, et: sum(rkd_terms(es, et)), lambda s, t, es, et: pkt_loss(es, et)])
def test_gradients_reach_the_student_only(loss) -> None:
    s, t = FS.clone().requires_grad_(True), FT.clone().requires_grad_(True)
    es, et = ES.clone().requires_grad_(True), ET.clone().requires_grad_(True)
    loss(s, t, es, et).backward()
    student_grads = [g for g in (s.grad, es.grad) if g is not None]
    assert student_grads and all(g.abs().sum() > 0 for g in student_grads)
    assert t.grad is None and et.grad is None


def test_at_pools_the_larger_map_when_stage_sizes_differ() -> None:
    big = torch.randn(2, 3, 8, 8, dtype=F64)
    small = torch.nn.functional.adaptive_avg_pool2d(big, 4)
    assert at_loss([big], [small]).item() == pytest.approx(0.0, abs=1e-12)


def test_nst_golden_and_zero_at_equality() -> None:
    from kdbench.methods.nst import nst_loss

    assert nst_loss([FS], [FT]).item() == pytest.approx(1.0060346844232844, rel=1e-10)
    assert nst_loss([FT.clone()], [FT]).item() == pytest.approx(0.0, abs=1e-12)
    assert nst_loss([5.0 * FS], [FT]).item() == pytest.approx(nst_loss([FS], [FT]).item(), rel=1e-10)


@pytest.mark.parametrize(("student", "teacher"), [
    ("resnet20_cifar", "resnet56_cifar"),       # same stage size: 1x1 conv
    ("mobilenetv2_cifar", "vgg13_cifar"),      # student map 8x8 vs teacher 8x8
    ("shufflev1_cifar", "resnet32x4_cifar"),   # student 8x8, teacher 16x16: transposed conv
    ("resnet8x4_cifar", "shufflev2_cifar"),    # student 16x16, teacher 8x8: stride-2 conv
])
def test_fitnet_regressor_maps_the_hint_onto_the_teachers_stage(student: str, teacher: str) -> None:
    from kdbench.method import Batch, discover_methods
    from kdbench.models import create_network

    s_net = create_network(student, num_classes=10, in_chans=3)
    t_net = create_network(teacher, num_classes=10, in_chans=3).eval().requires_grad_(False)
    fitnet = discover_methods().get("fitnet")(s_net, t_net, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    s_out = s_net(x, taps=fitnet.needs.student_taps)
    t_out = t_net(x, taps=fitnet.needs.teacher_taps)
    hint = fitnet.regressor(s_out.taps["stage2"])
    assert hint.shape == t_out.taps["stage2"].shape
    terms = fitnet.losses(Batch(x, None, torch.arange(2)), s_out, t_out)
    expected = 100.0 * torch.nn.functional.mse_loss(hint, t_out.taps["stage2"])
    assert terms["hint"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_cc_golden_and_zero_at_equality() -> None:
    from kdbench.methods.cc import cc_loss

    # numpy float64: |ES - ET[:, :3]|, then the mean over the 3 consecutive pairs of row-wise dot products
    assert cc_loss(ES, ET[:, :3]).item() == pytest.approx(3.0699333333333336, rel=1e-12)
    assert cc_loss(ES.clone(), ES).item() == 0.0


S1 = torch.tensor([[[[0.03, 1.36], [1.22, -0.51]], [[-0.3, -0.53], [0.57, -0.06]], [[0.75, -1.85], [1.57, -0.1]]],
                   [[[0.68, -0.14], [-0.38, 0.46]], [[0.82, -0.2], [-0.15, 0.69]], [[-0.87, -1.51], [0.39, -0.67]]]],
                  dtype=F64)
T1 = torch.tensor([[[[-1.92, -0.81], [-0.47, -1.19]], [[-1.49, 0.04], [0.9, -0.23]], [[-0.74, 0.38], [0.72, -0.3]]],
                   [[[0.54, 1.04], [-0.21, -0.81]], [[0.35, 0.25], [1.1, -1.28]], [[-0.66, -0.84], [-1.73, 0.13]]]],
                  dtype=F64)
S2 = torch.tensor([[[[0.53, -0.74], [1.39, 0.82]], [[0.63, 0.4], [0.96, -1.33]], [[0.61, 0.6], [-1.77, 0.35]]],
                   [[[-0.25, 0.78], [-0.44, -0.02]], [[0.34, -0.88], [0.6, -0.1]], [[0.49, -0.52], [1.09, 0.61]]]],
                  dtype=F64)
T2 = torch.tensor([[[[-0.18, 0.63], [1.26, 1.79]], [[-1.57, 0.88], [0.47, -0.09]], [[-1.01, 1.26], [-1.26, 0.57]]],
                   [[[1.3, -1.6], [-0.3, -1.31]], [[0.24, 1.51], [2.02, -1.78]], [[-0.57, 0.7], [1.58, 0.42]]]],
                  dtype=F64)


def test_kdsvd_golden_zero_at_equality_and_sign_independence() -> None:
    from kdbench.methods.kdsvd import kdsvd_loss

    # numpy float64: per-image SVD of the (H*W) x C matrices, largest entry of each teacher vector made positive,
    # student candidates aligned by |cosine|, RBF over channel pairs of consecutive stages
    assert kdsvd_loss([S1, S2], [T1, T2]).item() == pytest.approx(0.018070916496694803, rel=1e-9)
    assert kdsvd_loss([T1.clone(), T2.clone()], [T1, T2]).item() == pytest.approx(0.0, abs=1e-12)
    # flipping the sign of a whole stage output flips its singular vectors only: the loss must not move
    assert kdsvd_loss([-S1, S2], [T1, -T2]).item() == pytest.approx(0.018070916496694803, rel=1e-9)


def test_kdsvd_refuses_pairs_with_unequal_stage_channels() -> None:
    from kdbench.method import discover_methods
    from kdbench.models import create_network

    kdsvd = discover_methods().get("kdsvd")
    student = create_network("resnet20_cifar", num_classes=10, in_chans=3)
    assert kdsvd.incompatibility(student, create_network("resnet56_cifar", num_classes=10, in_chans=3)) is None
    problem = kdsvd.incompatibility(student, create_network("wrn_40_2_cifar", num_classes=10, in_chans=3))
    assert problem and "stage1 has 16" in problem and "stage1 has 32" in problem
