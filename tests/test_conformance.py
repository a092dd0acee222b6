"""Every registered method (a file dropped into methods/ included) through a few training steps of each of its
phases on a tiny pair: finite named losses; gradients reach the student (when the phase trains it) and every
method parameter the phase optimizes, never the teacher; predict gives class scores. Batches carry item indices
and, for methods that ask (CRD), negatives drawn by the real data path's sampler."""

from __future__ import annotations

import pytest
import torch

from kdbench.data.negatives import NegativeSampler
from kdbench.engine import phases_of
from kdbench.method import Batch, bind_data, discover_methods
from kdbench.models import create_network

REGISTRY = discover_methods()
RECIPE = {"epochs": 2, "batch_size": 8, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False,
          "betas": [0.9, 0.999], "weight_decay": 0.0, "schedule": "constant", "milestones": [], "lr_decay": 0.1,
          "warmup_epochs": 0, "min_lr": 0.0, "grad_clip": None, "diverge_above": 1e4}
# small settings so that methods with big default heads (GenDD) stay fast; unknown keys are not passed
SMALL = {"width": 32, "mul": 2, "sample_steps": 4, "num_samples": 2, "warm_start_epochs": 1, "negatives": 16,
         "init_epochs": 1, "ae_channels": 16}
TRAIN_SIZE = 40  # the batch's items are dataset indices 0..7 of a 40-item training split

# methods that need labels are refused for the unlabeled regime at validation, so they are not run without
CASES = [(name, labeled, {}) for name in REGISTRY.names() for labeled in (True, False)
         if labeled or not REGISTRY.get(name).needs.labels]
# variants of a method that change what it trains: GenDD's flow-matching head
CASES += [("gendd", labeled, {"objective": "flow"}) for labeled in (True, False)]


def _pair():
    torch.manual_seed(0)
    student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1)
    teacher = create_network("kdb_cnn_small", num_classes=4, in_chans=1).eval().requires_grad_(False)
    return student, teacher


def _build(name: str, extra: dict | None = None):
    from kdbench.method import hyperparameters

    cls = REGISTRY.get(name)
    student, teacher = _pair()
    if cls.incompatibility(student, teacher):  # e.g. KD-SVD needs equal stage channels: same architecture twice
        torch.manual_seed(0)
        student = create_network("kdb_cnn_small", num_classes=4, in_chans=1)
    kwargs = {**{k: v for k, v in SMALL.items() if k in hyperparameters(cls)}, **(extra or {})}
    method = cls(student, teacher if cls.needs.teacher else None, num_classes=4, **kwargs)
    bind_data(method, TRAIN_SIZE)
    return cls, student, teacher, method


@pytest.mark.parametrize(("name", "labeled", "extra"), CASES,
                         ids=[f"{n}-{'labeled' if lab else 'unlabeled'}{''.join(f'-{v}' for v in e.values())}"
                              for n, lab, e in CASES])
def test_one_training_step_per_phase(name: str, labeled: bool, extra: dict) -> None:
    cls, student, teacher, method = _build(name, extra)
    x = torch.randn(8, 1, 8, 8)
    labels = torch.arange(TRAIN_SIZE) % 4
    batch = Batch(x=x, y=labels[:8] if labeled else None, index=torch.arange(8))
    if method.needs.negatives:
        sampler = NegativeSampler(torch.arange(TRAIN_SIZE).numpy(), labels.numpy() if labeled else None,
                                  method.needs.negatives)
        batch.negatives = sampler.draw(batch.index, torch.Generator().manual_seed(0))
    for phase in phases_of(method, RECIPE, labeled):
        params = [p for g in phase.param_groups(student) for p in g["params"]]
        optimizer = torch.optim.SGD(params, lr=0.05)
        # a few steps: zero-initialised output layers (DiT-style heads) pass no gradient on the very first one
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            s = student(x, taps=method.needs.student_taps)
            t = teacher(x, taps=method.needs.teacher_taps) if cls.needs.teacher else None
            terms = phase.losses(batch, s, t)
            assert terms and all(v.dim() == 0 for v in terms.values()), "losses must be named scalars"
            loss = torch.stack(list(terms.values())).sum()
            assert torch.isfinite(loss), phase.name
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        s = student(x, taps=method.needs.student_taps)
        t = teacher(x, taps=method.needs.teacher_taps) if cls.needs.teacher else None
        torch.stack(list(phase.losses(batch, s, t).values())).sum().backward()
        student_ids = {id(p) for p in student.parameters()}
        if student_ids & {id(p) for p in params}:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), \
                f"{phase.name}: no gradient reached the student"
        else:
            assert phase.name != "main", "the main phase must train the student"
        for group in phase.param_groups(student):
            for p in group["params"]:
                if id(p) not in student_ids and p.requires_grad:
                    assert p.grad is not None, f"{phase.name}: a parameter the phase optimizes got no gradient"
        assert all(p.grad is None for p in teacher.parameters()), "a gradient reached the teacher"
        teacher_ids = {id(p) for p in teacher.parameters()}
        assert not teacher_ids & {id(p) for p in params}, f"{phase.name} optimizes teacher parameters"
        assert not teacher_ids & {id(p) for p in method.parameters()}, "the method owns teacher parameters"
        with torch.no_grad():
            method.eval()
            assert phase.predict(x, student(x)).shape == (8, 4)
            assert method.predict(x, student(x), final=True).shape == (8, 4)
            method.train()


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
