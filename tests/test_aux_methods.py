"""Golden values and analytic checks for the methods with auxiliary modules and stages: CRD, VID, AB, FT, FSP,
OFD and ReviewKD, plus CRD's memory bank and the data path's negative sampling.

The golden numbers were computed once in float64 with numpy (and the standard library's NormalDist for OFD's
margins) straight from each paper's or anchor's formula, with explicit loops and masks, independently of the
implementations.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdbench.data.negatives import NegativeSampler
from kdbench.method import Batch
from kdbench.methods.ab import AB, ab_boundary_loss, ab_loss
from kdbench.methods.crd import CRD, ContrastMemory, nce_loss
from kdbench.methods.fsp import FSP, fsp_loss
from kdbench.methods.ft import factor_loss
from kdbench.methods.ofd import OFD, margin_from_bn, partial_l2
from kdbench.methods.reviewkd import ReviewKD, hcl_loss
from kdbench.methods.vid import vid_nll
from kdbench.models import create_network

F64 = torch.float64
A = torch.tensor([[[[0.0, 0.3], [-0.27, -0.89]], [[-0.45, -0.99], [0.06, 1.34]], [[-0.49, -0.62], [0.49, 0.36]]],
                  [[[0.11, -0.93], [-0.03, 0.7]], [[-1.34, -0.46], [-1.9, -1.29]], [[-1.84, -0.24], [-1.27, 0.27]]]],
                 dtype=F64)
B = torch.tensor([[[[0.16, -0.19], [-2.52, -0.54]], [[-0.05, 0.11], [-1.53, -0.48]], [[-0.98, -0.81], [1.06, -0.81]]],
                  [[[-0.03, 0.88], [-0.58, -0.11]], [[0.11, 0.06], [-1.23, 0.08]], [[1.36, -1.55], [0.86, 0.12]]]],
                 dtype=F64)
C = torch.tensor([[[[-0.64, 2.0, 0.76, -1.2], [0.07, 0.58, -0.19, 0.68], [-0.07, 0.67, 1.44, -0.68],
                    [0.2, -0.46, 0.13, -1.19]],
                   [[-0.58, -0.2, 0.9, 1.15], [-1.32, -0.79, 0.65, -1.99], [-0.46, -0.1, 1.26, 0.69],
                    [-0.33, -0.37, -0.25, 1.52]]],
                  [[[-0.43, -0.3, 0.35, -0.12], [-0.2, -1.11, -0.01, -0.44], [1.17, 0.65, -0.02, 0.67],
                    [-0.34, 1.05, -0.01, 0.58]],
                   [[-1.29, 0.35, -1.69, -2.04], [-0.3, -0.9, 0.16, 2.24], [-0.83, -0.62, 0.21, 0.49],
                    [-0.18, -0.21, 0.7, 0.52]]]], dtype=F64)
SCORES = torch.tensor([[1.87, 0.02, 1.51, 1.62, 0.28], [0.84, 1.63, 0.04, 1.26, 1.59],
                       [1.03, 1.45, 0.46, 0.41, 0.73]], dtype=F64)
LOG_SCALE = torch.tensor([0.85, -1.75, 0.76], dtype=F64)
BN_WEIGHT, BN_BIAS = torch.tensor([-0.85, 0.78, 0.13], dtype=F64), torch.tensor([-1.54, 1.25, 1.44], dtype=F64)


# ---------------------------------------------------------------- golden values
def test_crd_nce_golden() -> None:
    assert nce_loss(SCORES, num_data=50).item() == pytest.approx(8.764423532307529, rel=1e-10)


def test_vid_golden() -> None:
    assert vid_nll(A, B, LOG_SCALE, 1e-5).item() == pytest.approx(1.8012016286392656, rel=1e-10)


def test_ofd_margin_and_partial_l2_golden() -> None:
    margin = margin_from_bn(BN_WEIGHT, BN_BIAS)
    assert margin.tolist() == pytest.approx([-1.6080805122695307, -0.33053779080701085, -0.39], rel=1e-6)
    # a zero BN weight (timm zero-initialises the last BN of each block) is a constant response: the limit
    assert margin_from_bn(torch.zeros(2), torch.tensor([-0.4, 0.7])).tolist() == pytest.approx([-0.4, 0.0])
    expected_margin = torch.tensor([-1.6080805122695307, -0.33053779080701085, -0.39], dtype=F64)
    assert partial_l2(A, B, expected_margin).item() == pytest.approx(15.211387866939143, rel=1e-10)


def test_ab_golden() -> None:
    assert ab_boundary_loss(A, B).item() == pytest.approx(52.57919999999999, rel=1e-10)
    assert ab_loss([A, 0.5 * A], [B, -B]).item() == pytest.approx(0.07444034999999999, rel=1e-10)


def test_fsp_golden() -> None:
    teacher_bottom = torch.round(C.flip(1) * 0.8, decimals=2)
    assert fsp_loss([C, A], [teacher_bottom, B]).item() == pytest.approx(0.06312807458658855, rel=1e-10)


def test_ft_factor_golden() -> None:
    assert factor_loss(A, C).item() == pytest.approx(0.18092775710547745, rel=1e-10)


def test_reviewkd_hcl_golden() -> None:
    big_s = torch.sin(torch.arange(256, dtype=F64) * 0.37).reshape(2, 2, 8, 8)
    big_t = torch.cos(torch.arange(256, dtype=F64) * 0.23).reshape(2, 2, 8, 8)
    assert hcl_loss([big_s, A], [big_t, B]).item() == pytest.approx(1.8148616366430277, rel=1e-10)


# ---------------------------------------------------------------- analytic checks
def test_losses_vanish_when_the_student_matches_the_teacher() -> None:
    margin = margin_from_bn(BN_WEIGHT, BN_BIAS).double()
    assert partial_l2(B, B, margin).item() == 0.0
    assert fsp_loss([C, A], [C, A]).item() == 0.0
    assert factor_loss(A, A).item() == pytest.approx(0.0, abs=1e-15)
    assert hcl_loss([A], [A]).item() == 0.0
    # AB: zero once every response is beyond the margin on the teacher's side of the boundary
    assert ab_boundary_loss(torch.where(B > 0, 1.5, -1.5), B).item() == 0.0


def test_ofd_ignores_student_responses_below_the_margin_where_the_teacher_is_inactive() -> None:
    margin = torch.full((3,), -0.5, dtype=F64)
    teacher = torch.full_like(A, -2.0)  # every teacher response below its margin
    assert partial_l2(torch.full_like(A, -0.7), teacher, margin).item() == 0.0
    assert partial_l2(torch.full_like(A, -0.3), teacher, margin).item() == pytest.approx(0.04 * A[0].numel())


def test_ft_factor_is_invariant_to_scaling_and_vid_is_minimised_at_the_target() -> None:
    assert factor_loss(3.0 * A, A).item() == pytest.approx(0.0, abs=1e-12)
    mean = B.clone().requires_grad_(True)
    vid_nll(mean, B, LOG_SCALE, 1e-5).backward()
    assert mean.grad.abs().max().item() == 0.0


def test_nce_rewards_a_positive_that_stands_out() -> None:
    flat = torch.ones(4, 17, dtype=F64)
    sharp = flat.clone()
    sharp[:, 0] = 50.0
    assert nce_loss(sharp, 1000).item() < nce_loss(flat, 1000).item()


# ---------------------------------------------------------------- CRD memory bank and negatives
def test_crd_memory_update_is_a_normalised_momentum_average_of_the_batch_rows() -> None:
    torch.manual_seed(0)
    memory = ContrastMemory(dim=4, num_data=10, temperature=0.07, momentum=0.5)
    before_s, before_t = memory.memory_s.clone(), memory.memory_t.clone()
    index = torch.tensor([2, 7])
    v_s = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    v_t = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    memory.update(index, v_s, v_t)
    for after, before, v in ((memory.memory_s, before_s, v_s), (memory.memory_t, before_t, v_t)):
        mixed = 0.5 * before[index] + 0.5 * v
        assert torch.allclose(after[index], mixed / mixed.norm(dim=1, keepdim=True))
        assert torch.allclose(after[index].norm(dim=1), torch.ones(2))
        untouched = [i for i in range(10) if i not in (2, 7)]
        assert torch.equal(after[untouched], before[untouched])


def test_crd_normalisation_constants_are_set_once_from_the_first_batch() -> None:
    torch.manual_seed(0)
    memory = ContrastMemory(dim=4, num_data=10, temperature=0.5, momentum=0.5)
    v = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    contrast = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    memory.scores(v, v, contrast)
    first = memory.z.clone()
    raw = torch.exp(torch.bmm(memory.memory_t[contrast], v[:, :, None]).squeeze(2) / 0.5)
    assert first[0].item() == pytest.approx(raw.mean().item() * 10, rel=1e-6)
    memory.scores(2 * v, v, contrast)
    assert torch.equal(memory.z, first)


def test_negatives_come_from_other_classes_uniformly_and_reproducibly() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
    indices = np.array([0, 1, 2, 3, 5, 6, 7, 9])  # a regime subset: items 4 and 8 are not trained on
    sampler = NegativeSampler(indices, labels, k=4000)
    batch = torch.tensor([0, 2, 6])
    drawn = sampler.draw(batch, torch.Generator().manual_seed(1))
    assert drawn.shape == (3, 4000)
    assert set(drawn.flatten().tolist()) <= set(indices.tolist())
    for row, item in zip(drawn, batch.tolist(), strict=True):
        assert not (torch.as_tensor(labels)[row] == labels[item]).any(), "a negative of the item's own class"
        others = [i for i in indices if labels[i] != labels[item]]
        counts = torch.bincount(row, minlength=10)[others].double()
        assert (counts / 4000 - 1 / len(others)).abs().max() < 0.04, "not uniform over the other classes"
    again = sampler.draw(batch, torch.Generator().manual_seed(1))
    assert torch.equal(drawn, again)
    unlabeled = NegativeSampler(indices, None, k=50).draw(batch, torch.Generator().manual_seed(1))
    assert set(unlabeled.flatten().tolist()) <= set(indices.tolist())


def test_train_batches_hand_indices_and_negatives_without_changing_the_images() -> None:
    from kdbench.data import TensorData, train_batches

    data = TensorData(torch.arange(12, dtype=torch.uint8).reshape(12, 1, 1, 1).repeat(1, 1, 2, 2),
                      torch.tensor([0, 1, 2] * 4), mean=(0.0,), std=(1.0,))
    plain = list(train_batches(data, np.arange(12), 5, labeled=True, seed=3, epoch=1))
    with_negatives = list(train_batches(data, np.arange(12), 5, labeled=True, seed=3, epoch=1, negatives=6))
    for a, b in zip(plain, with_negatives, strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index) and a.negatives is None
        assert b.negatives.shape == (len(b.index), 6)
        assert not (data.y[b.negatives] == data.y[b.index][:, None]).any()



def test_negatives_are_drawn_batch_by_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """All at once an epoch's negatives are items x k indices (168 GB for ImageNet with CRD's 16384): the data
    path must draw each batch's when that batch is taken, and drawing lazily must draw the same ones."""
    from kdbench.data import TensorData, train_batches

    data = TensorData(torch.zeros(12, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2] * 4), mean=(0.0,),
                      std=(1.0,))
    whole_epoch = [b.negatives for b in train_batches(data, np.arange(12), 5, labeled=True, seed=3, epoch=1,
                                                      negatives=6)]
    calls = []
    original = NegativeSampler.draw
    monkeypatch.setattr(NegativeSampler, "draw", lambda self, *a: calls.append(1) or original(self, *a))
    batches = train_batches(data, np.arange(12), 5, labeled=True, seed=3, epoch=1, negatives=6)
    first = next(batches)
    assert len(calls) == 1 and torch.equal(first.negatives, whole_epoch[0])
    assert all(torch.equal(b.negatives, w) for b, w in zip(batches, whole_epoch[1:], strict=True))


def test_crd_training_step_moves_the_memory_of_the_batch_items_only() -> None:
    torch.manual_seed(0)
    student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1)
    teacher = create_network("kdb_cnn_small", num_classes=4, in_chans=1).eval()
    crd = CRD(student, teacher, num_classes=4, negatives=8)
    crd.bind_data(20)
    before = crd.memory.memory_s.clone()
    x, index = torch.randn(4, 1, 8, 8), torch.tensor([1, 5, 9, 13])
    negatives = NegativeSampler(np.arange(20), None, 8).draw(index, torch.Generator().manual_seed(0))
    terms = crd.losses(Batch(x, None, index, negatives), student(x), teacher(x))
    assert set(terms) == {"crd"} and torch.isfinite(terms["crd"])
    changed = (crd.memory.memory_s != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [1, 5, 9, 13]


# ---------------------------------------------------------------- taps, pairs and stages
def test_pair_refusals_name_the_model_and_the_missing_piece() -> None:
    cnn = create_network("kdb_cnn_small", num_classes=4, in_chans=1)
    mlp = create_network("kdb_mlp_tiny", num_classes=4, in_chans=1)
    assert "no BatchNorm" in OFD.incompatibility(cnn, mlp)
    assert OFD.incompatibility(mlp, cnn) is None  # an MLP student's vectors are 1x1 maps to the connectors
    ofd, x = OFD(mlp, cnn, num_classes=4), torch.randn(3, 1, 8, 8)
    assert torch.isfinite(ofd.losses(Batch(x, None, torch.arange(3)), mlp(x, taps=ofd.needs.student_taps),
                                     cnn(x, taps=ofd.needs.teacher_taps))["ofd"])
    assert "equal stage channels" in FSP.incompatibility(create_network("kdb_cnn_nano", num_classes=4, in_chans=1),
                                                         cnn)
    assert FSP.incompatibility(cnn, create_network("kdb_cnn_small", num_classes=4, in_chans=1)) is None
    shuffle = create_network("shufflev2_cifar", num_classes=4, in_chans=3)
    assert "shufflev2_cifar" in OFD.incompatibility(create_network("resnet8_cifar", num_classes=4, in_chans=3),
                                                    shuffle)


def test_reviewkd_fuses_top_down_to_the_teachers_shapes() -> None:
    student = create_network("resnet8_cifar", num_classes=10, in_chans=3)
    teacher = create_network("resnet8x4_cifar", num_classes=10, in_chans=3).eval()
    method = ReviewKD(student, teacher, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    s = student(x, taps=method.needs.student_taps)
    t = teacher(x, taps=method.needs.teacher_taps)
    targets = [t.taps[name] for name in method.needs.teacher_taps] + [t.feature[:, :, None, None]]
    outputs = method.fused(s, [m.shape[-1] for m in targets])
    assert [o.shape for o in outputs] == [m.shape for m in targets]
    assert method.needs.teacher_taps == ("stage1_pre", "stage2_pre", "stage3_pre")
    method.on_epoch_start(4, 240)
    assert method.factor == pytest.approx(5 / 20)


def test_ab_init_stage_trains_feature_layers_and_connectors_with_the_student_in_eval_mode() -> None:
    student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1)
    teacher = create_network("kdb_cnn_small", num_classes=4, in_chans=1)
    method = AB(student, teacher, num_classes=4, init_epochs=3, init_lr=0.02)
    (stage,) = method.stages({})
    assert stage.epochs == 3 and stage.recipe["lr"] == 0.02 and not stage.student_train_mode
    (group,) = stage.param_groups(student)
    ids = {id(p) for p in group["params"]}
    assert not ids & {id(p) for p in student.classifier.parameters()}
    assert {id(p) for p in method.connectors.parameters()} <= ids
    assert method.needs.student_taps == ("stage1_pre", "stage2_pre")
    main = method.param_groups(student)
    assert {id(p) for g in main for p in g["params"]} == {id(p) for p in student.parameters()}
