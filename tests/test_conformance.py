"""Every registered method (a file dropped into methods/ included) through one training step on a tiny pair."""

from __future__ import annotations

import pytest
import torch

from kdbench.method import Batch, discover_methods
from kdbench.models import create_network

REGISTRY = discover_methods()


def _pair():
    torch.manual_seed(0)
    student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1)
    teacher = create_network("kdb_cnn_small", num_classes=4, in_chans=1).eval().requires_grad_(False)
    return student, teacher


# methods that need labels are refused for the unlabeled regime at validation, so they are not run without
CASES = [(name, labeled) for name in REGISTRY.names() for labeled in (True, False)
         if labeled or not REGISTRY.get(name).needs.labels]


@pytest.mark.parametrize(("name", "labeled"), CASES)
def test_one_training_step(name: str, labeled: bool) -> None:
    cls = REGISTRY.get(name)
    student, teacher = _pair()
    method = cls(student, teacher if cls.needs.teacher else None, num_classes=4)
    x = torch.randn(8, 1, 8, 8)
    batch = Batch(x=x, y=torch.arange(8) % 4 if labeled else None, index=torch.arange(8))
    s = student(x, taps=cls.needs.student_taps)
    t = teacher(x, taps=cls.needs.teacher_taps) if cls.needs.teacher else None
    terms = method.losses(batch, s, t)
    assert terms and all(v.dim() == 0 for v in terms.values()), "losses() must return named scalars"
    loss = torch.stack(list(terms.values())).sum()
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), \
        "no gradient reached the student"
    for p in method.parameters():
        if p.requires_grad:
            assert p.grad is not None, "a trainable parameter of the method got no gradient"
    assert all(p.grad is None for p in teacher.parameters()), "a gradient reached the teacher"
    scores = method.predict(x, student(x))
    assert scores.shape == (8, 4)


@pytest.mark.parametrize("name", REGISTRY.names())
def test_method_is_documented(name: str) -> None:
    cls = REGISTRY.get(name)
    assert cls.description and cls.__doc__, f"method '{name}' needs a description and a docstring"


def test_mse_feature_projector_learns() -> None:
    student, teacher = _pair()
    method = REGISTRY.get("mse")(student, teacher, num_classes=4, beta=1.0)
    assert method.projector is not None
    x = torch.randn(8, 1, 8, 8)
    terms = method.losses(Batch(x, None, torch.arange(8)), student(x), teacher(x))
    assert set(terms) == {"logit_mse", "feature_mse"}
    sum(terms.values()).backward()
    assert method.projector.weight.grad.abs().sum() > 0
