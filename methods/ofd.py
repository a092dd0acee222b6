"""Heo et al., "A Comprehensive Overhaul of Feature Distillation" (ICCV 2019), as mdistiller runs it.

On every stage after the stem, the student's pre-ReLU map goes through a connector (1x1 conv + BN) to the
teacher's width; the teacher's pre-ReLU map (average-pooled to the student's size) is the target. The margin of
each teacher channel is the expected value of its negative responses, from the BatchNorm before the ReLU taken
as N(beta, gamma^2): ``m = beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|)`` (``-3|gamma|`` when
``Phi(-beta/|gamma|) <= 0.001``). Partial L2 (mdistiller's form): ``(s - m)^2`` where ``s > m`` and ``t <= m``;
``(s - t)^2`` where ``s > t`` and ``m < t <= 0``; ``(s - t)^2`` where ``t > 0``; summed over channels and positions,
averaged over the batch; stage i of n weighted ``1 / 2^(n - 1 - i)``.
``loss = ce * CE + weight * sum``. Defaults: mdistiller CIFAR (weight 1e-3, CE 1). The teacher stays in eval
mode (mdistiller also switches it to train mode; a frozen teacher is kdbench's rule for every method).
Needs pre-activation taps and the teacher's BatchNorms; other pairs are refused. Needs no labels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.methods.feature_utils import as_map, missing_preact, paired_stages
from kdbench.models import Network, Outputs


def margin_from_bn(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per channel, the mean of a N(bias, weight^2) response conditioned on being negative (OFD's margin)."""
    out = []
    for gamma, beta in zip(weight.tolist(), bias.tolist(), strict=True):
        std = abs(gamma)
        if std == 0:  # a constant response (e.g. timm's zero-initialised last BN): the limit of the formula
            out.append(min(beta, 0.0))
            continue
        tail = 0.5 * (1 + math.erf(-beta / std / math.sqrt(2)))  # Phi(-beta / std)
        if tail > 0.001:
            out.append(beta - std * math.exp(-((beta / std) ** 2) / 2) / math.sqrt(2 * math.pi) / tail)
        else:
            out.append(-3 * std)
    return torch.tensor(out, dtype=torch.float32)


def partial_l2(student: torch.Tensor, teacher: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """OFD's partial L2 distance, summed over channels and positions, averaged over the batch."""
    margin = margin.view(1, -1, *([1] * (student.dim() - 2))).to(student)
    loss = ((student - margin) ** 2 * ((student > margin) & (teacher <= margin))
            + (student - teacher) ** 2 * ((student > teacher) & (teacher > margin) & (teacher <= 0))
            + (student - teacher) ** 2 * (teacher > 0))
    return loss.sum() / student.shape[0]


def connector(student_chs: int, teacher_chs: int) -> nn.Sequential:
    """1x1 conv (He-normal over fan-out) + BN (ones, zeros)."""
    conv = nn.Conv2d(student_chs, teacher_chs, 1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / teacher_chs))
    return nn.Sequential(conv, nn.BatchNorm2d(teacher_chs))


@register_method("ofd")
class OFD(Method):
    """Overhaul of feature distillation: pre-ReLU stages, BN-derived margins, partial L2."""

    needs = Needs(labels=False, teacher=True)
    description = "OFD: partial L2 between connected student and teacher pre-ReLU stages with BN margins, plus CE"
    uses = "pre-activation stage taps after the stem, teacher BN statistics + connectors"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 1e-3,
                 ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        problem = self.incompatibility(student, teacher)
        if problem:
            raise ValueError(f"ofd: {problem}")
        self.weight, self.ce = weight, ce
        s_taps, t_taps = paired_stages(student, teacher, student_preact=True, teacher_preact=True)
        self.connectors = nn.ModuleList([connector(student.tap_info(s)[0], teacher.tap_info(t)[0])
                                         for s, t in zip(s_taps, t_taps, strict=True)])
        for i, tap in enumerate(t_taps):
            bn = teacher.bn_before_activation(tap)
            self.register_buffer(f"margin{i}", margin_from_bn(bn.weight.detach(), bn.bias.detach()))
        self.needs = Needs(labels=False, teacher=True, student_taps=s_taps, teacher_taps=t_taps)

    @classmethod
    def incompatibility(cls, student: Network, teacher: Network | None) -> str | None:
        s_taps, t_taps = paired_stages(student, teacher, student_preact=True, teacher_preact=True)
        return missing_preact(student, s_taps) or missing_preact(teacher, t_taps, need_bn=True)

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        n = len(self.connectors)
        total = 0.0
        for i, (conn, a, b) in enumerate(zip(self.connectors, self.needs.student_taps, self.needs.teacher_taps,
                                             strict=True)):
            source = conn(as_map(s.taps[a]))
            target = F.adaptive_avg_pool2d(as_map(t.taps[b]).detach(), source.shape[-2:])
            total = total + partial_l2(source, target, getattr(self, f"margin{i}")) / 2 ** (n - i - 1)
        return {"ofd": self.weight * total, **ce_term(batch, s.logits, self.ce)}
