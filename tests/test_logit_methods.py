"""Golden values and analytic checks for DKD, DIST, IKL-KD and logit standardization.

The golden numbers were computed once in float64 with numpy straight from each paper's formula (softmax, KL,
Pearson correlation, pairwise logit differences), independently of the implementations, and are changed only
deliberately.
"""

from __future__ import annotations

import pytest
import torch

from kdbench.methods.dist import dist_terms
from kdbench.methods.dkd import dkd_terms
from kdbench.methods.ikl import ikl_terms
from kdbench.methods.kd import kd_loss
from kdbench.methods.logit_utils import standardize

ZS = torch.tensor([[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.0, 1.5]], dtype=torch.float64)
ZT = torch.tensor([[2.0, 0.0, 1.0, -0.5], [-0.3, 0.8, 0.4, 2.2]], dtype=torch.float64)
Y = torch.tensor([2, 3])
ZS3 = torch.cat([ZS, torch.tensor([[0.5, 1.5, -0.2, 0.0]], dtype=torch.float64)])
ZT3 = torch.cat([ZT, torch.tensor([[1.0, 0.3, 0.1, -1.2]], dtype=torch.float64)])
W = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)

GOLDEN_DKD = {1.0: (0.1522052110744751, 0.19988193382275612), 4.0: (0.09378331520126103, 0.28448878110857423)}
# DIST's Pearson correlation adds eps = 1e-8 to the norm product, as the authors' code does (included here)
GOLDEN_DIST = {1.0: (0.5501273444493291, 0.07685154399722582), 4.0: (6.938743583654512, 1.2122488940964562)}
GOLDEN_IKL = {1.0: (0.24911875, 1.236163247131627), 4.0: (0.24911875, 1.3758992622379518)}
GOLDEN_LS_KD = {1.0: 0.22135452360905072, 4.0: 0.2534455163597888}


def _random(seed: int, shape: tuple[int, int] = (6, 5)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(*shape, generator=g, dtype=torch.float64)
    zt = torch.randn(*shape, generator=g, dtype=torch.float64)
    return zs, zt, torch.randint(0, shape[1], (shape[0],), generator=g)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_golden(temperature: float) -> None:
    tckd, nckd = dkd_terms(ZS, ZT, Y, temperature)
    assert (tckd.item(), nckd.item()) == pytest.approx(GOLDEN_DKD[temperature], rel=1e-10)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_decomposes_kd_per_image(temperature: float) -> None:
    """The paper's identity: KD = TCKD + (1 - p_t[target]) * NCKD, for each image."""
    zs, zt, y = _random(0)
    for b in range(len(y)):
        tckd, nckd = dkd_terms(zs[b:b + 1], zt[b:b + 1], y[b:b + 1], temperature)
        p_t = torch.softmax(zt[b] / temperature, dim=0)[y[b]]
        kd = kd_loss(zs[b:b + 1], zt[b:b + 1], temperature)
        assert kd.item() == pytest.approx((tckd + (1 - p_t) * nckd).item(), rel=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dist_golden(temperature: float) -> None:
    inter, intra = dist_terms(ZS3, ZT3, temperature)
    assert (inter.item(), intra.item()) == pytest.approx(GOLDEN_DIST[temperature], rel=1e-10)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_ikl_golden(temperature: float) -> None:
    wmse, sce = ikl_terms(ZS, ZT, W, temperature)
    assert (wmse.item(), sce.item()) == pytest.approx(GOLDEN_IKL[temperature], rel=1e-10)


def test_ikl_wmse_sees_only_logit_gaps_and_sce_is_kd_plus_teacher_entropy() -> None:
    zs, zt, _ = _random(1)
    w = torch.softmax(zt, dim=1)
    wmse, sce = ikl_terms(zs, zt, w, 2.0)
    shifted, _ = ikl_terms(zs + torch.randn(6, 1, dtype=torch.float64), zt, w, 2.0)
    assert shifted.item() == pytest.approx(wmse.item(), rel=1e-10)  # invariant to a per-image logit shift
    p_t = torch.softmax(zt / 2.0, dim=1)
    entropy = -(p_t * p_t.log()).sum(1).mean()
    assert (sce - entropy).item() == pytest.approx(kd_loss(zs, zt, 2.0).item() / 4.0, rel=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_logit_standardization_golden_and_invariance(temperature: float) -> None:
    assert kd_loss(standardize(ZS), standardize(ZT), temperature).item() == \
        pytest.approx(GOLDEN_LS_KD[temperature], rel=1e-6)
    zs, zt, _ = _random(2)
    base = kd_loss(standardize(zs), standardize(zt), temperature)
    scaled = kd_loss(standardize(3.0 * zs + 1.5), standardize(zt), temperature)  # the invariance LS is built on
    assert scaled.item() == pytest.approx(base.item(), rel=1e-5)


@pytest.mark.parametrize(("terms", "tolerance"), [
    (lambda zs, zt, y: dkd_terms(zs, zt, y, 4.0), 1e-9),
    (lambda zs, zt, y: dist_terms(zs, zt, 1.0), 1e-6),  # 1 - n/(n + eps): DIST's eps keeps it a hair above 0
    (lambda zs, zt, y: (ikl_terms(zs, zt, torch.softmax(zt, dim=1), 4.0)[0],), 1e-9),
])
def test_zero_when_student_equals_teacher(terms, tolerance: float) -> None:
    _, zt, y = _random(3)
    for value in terms(zt.clone(), zt, y):
        assert value.item() == pytest.approx(0.0, abs=tolerance)


@pytest.mark.parametrize("terms", [
    lambda zs, zt, y: sum(dkd_terms(zs, zt, y, 4.0)),
    lambda zs, zt, y: sum(dist_terms(zs, zt, 4.0)),
    lambda zs, zt, y: sum(ikl_terms(zs, zt, torch.softmax(zt, dim=1), 4.0)),
    lambda zs, zt, y: kd_loss(standardize(zs), standardize(zt), 4.0),
])
def test_gradients_reach_the_student_only(terms) -> None:
    zs, zt, y = _random(4)
    zs.requires_grad_(True)
    zt.requires_grad_(True)
    terms(zs, zt, y).backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is None


def _method(name: str, **params: object):
    from kdbench.method import discover_methods
    from kdbench.models import create_network

    student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1)
    teacher = create_network("kdb_cnn_small", num_classes=4, in_chans=1)
    return discover_methods().get(name)(student, teacher, num_classes=4, **params)


def test_dkd_warms_its_term_up_linearly_over_the_first_epochs() -> None:
    dkd = _method("dkd", warmup_epochs=4)
    factors = []
    for epoch in range(6):
        dkd.on_epoch_start(epoch, 6)
        factors.append(dkd.warmup_factor())
    assert factors == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]  # mdistiller: min(epoch / warmup, 1), epochs from 1


def test_ikl_class_prior_is_last_epochs_mean_teacher_distribution_per_class() -> None:
    from kdbench.method import Batch
    from kdbench.models import Outputs

    ikl = _method("ikl", T2=1.0).train()
    assert torch.allclose(ikl.prior, torch.full((4, 4), 0.25))  # uniform during the first epoch
    zt = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2, 2])
    out = Outputs(logits=torch.zeros(3, 4, requires_grad=True), feature=torch.zeros(3, 1))
    batch = Batch(x=torch.zeros(3, 1, 8, 8), y=y, index=torch.arange(3))
    ikl.losses(batch, out, Outputs(logits=zt, feature=out.feature))
    ikl.on_epoch_start(1, 2)
    probs = torch.softmax(zt, dim=1)
    assert torch.allclose(ikl.prior[0], probs[0]) and torch.allclose(ikl.prior[2], probs[1:].mean(0))
    assert torch.allclose(ikl.prior[1], torch.full((4,), 0.25))  # a class not seen keeps its prior
