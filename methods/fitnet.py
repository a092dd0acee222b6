"""Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015), as RepDistiller trains it.

The student's middle stage (the hint layer, ``stage2`` by default: RepDistiller's ``feat[2]``) goes through a
learned regressor to the teacher's stage shape: a 1x1 conv when the maps have the same size, a stride-2 3x3 conv
when the student's is twice as large, a stride-2 transposed conv when it is half as large (any other ratio:
adaptive average pooling then 1x1), each followed by BN and ReLU. ``loss = ce * CE + weight * MSE(r(f_s), f_t)``.
Defaults: RepDistiller (weight 100, CE 1, no KL). No labels needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.models import Network, Outputs


def regressor(student_chs: int, teacher_chs: int, ratio: float) -> nn.Module:
    """RepDistiller's ConvReg for a student map ``ratio`` times the teacher's size."""
    if ratio == 1:
        conv: nn.Module = nn.Conv2d(student_chs, teacher_chs, 1)
    elif ratio == 2:
        conv = nn.Conv2d(student_chs, teacher_chs, 3, stride=2, padding=1)
    elif ratio == 0.5:
        conv = nn.ConvTranspose2d(student_chs, teacher_chs, 4, stride=2, padding=1)
    else:
        conv = nn.Sequential(_PoolBy(ratio), nn.Conv2d(student_chs, teacher_chs, 1))
    return nn.Sequential(conv, nn.BatchNorm2d(teacher_chs), nn.ReLU(inplace=True))


class _PoolBy(nn.Module):
    def __init__(self, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, max(1, round(x.shape[-1] / self.ratio)))


@register_method("fitnet")
class FitNet(Method):
    """FitNet hint: a learned regressor maps the student's hint stage onto the teacher's; MSE."""

    needs = Needs(labels=False, teacher=True)
    description = "FitNet: MSE between a learned regression of the student's hint stage and the teacher's, plus CE"
    uses = "one stage tap (hint_stage) + a learned regressor"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 100.0,
                 hint_stage: int = 2, ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.weight, self.ce = weight, ce
        s_tap, t_tap = f"stage{hint_stage}", f"stage{hint_stage}"
        (s_chs, s_red), (t_chs, t_red) = student.tap_info(s_tap), teacher.tap_info(t_tap)
        self.regressor = regressor(s_chs, t_chs, t_red / s_red)
        self.needs = Needs(labels=False, teacher=True, student_taps=(s_tap,), teacher_taps=(t_tap,))

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        hint = self.regressor(s.taps[self.needs.student_taps[0]])
        terms = {"hint": self.weight * F.mse_loss(hint, t.taps[self.needs.teacher_taps[0]].detach())}
        return {**terms, **ce_term(batch, s.logits, self.ce)}
