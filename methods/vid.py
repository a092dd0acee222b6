"""Ahn et al., "Variational Information Distillation for Knowledge Transfer" (CVPR 2019), as RepDistiller runs it.

For every stage after the stem, a regressor (1x1 conv, ReLU, 1x1 conv, ReLU, 1x1 conv; the teacher's width
throughout) predicts the mean of a Gaussian over the teacher's map from the student's; one learned variance
per teacher channel, ``softplus(log_scale) + eps`` (initialised to ``init_pred_var``). The loss per stage is the
mean negative log-likelihood up to a constant, ``0.5 * ((mu - f_t)^2 / var + log var)``, after pooling the larger
map to the smaller. ``loss = ce * CE + weight * sum over stages``. Defaults: RepDistiller (weight 1, CE 1,
init variance 5, eps 1e-5). Needs no labels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.methods.feature_utils import as_map, paired_stages, same_size
from kdbench.models import Network, Outputs


def vid_nll(mean: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean over all entries of ``0.5 * ((mean - target)^2 / var + log var)``, ``var = softplus(log_scale) + eps``
    per channel."""
    var = (F.softplus(log_scale) + eps).view(1, -1, 1, 1).to(mean)
    return (0.5 * ((mean - target) ** 2 / var + torch.log(var))).mean()


class VIDRegressor(nn.Module):
    """The predicted mean (three 1x1 convs) and the per-channel variance of one stage."""

    def __init__(self, student_chs: int, teacher_chs: int, init_pred_var: float, eps: float) -> None:
        super().__init__()
        self.mean = nn.Sequential(nn.Conv2d(student_chs, teacher_chs, 1, bias=False), nn.ReLU(),
                                  nn.Conv2d(teacher_chs, teacher_chs, 1, bias=False), nn.ReLU(),
                                  nn.Conv2d(teacher_chs, teacher_chs, 1, bias=False))
        # the inverse softplus of the initial variance
        self.log_scale = nn.Parameter(torch.full((teacher_chs,), math.log(math.exp(init_pred_var - eps) - 1.0)))
        self.eps = eps

    def forward(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        student_map, teacher_map = same_size(as_map(student_map), as_map(teacher_map))
        return vid_nll(self.mean(student_map), teacher_map, self.log_scale, self.eps)


@register_method("vid")
class VID(Method):
    """Variational information distillation on every stage after the stem."""

    needs = Needs(labels=False, teacher=True)
    description = "VID: Gaussian likelihood of the teacher's stages under a regression of the student's, plus CE"
    uses = "stage taps after the stem + per-stage regressors and variances"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 1.0,
                 ce: float = 1.0, init_pred_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.weight, self.ce = weight, ce
        s_taps, t_taps = paired_stages(student, teacher)
        self.regressors = nn.ModuleList([
            VIDRegressor(student.tap_info(s)[0], teacher.tap_info(t)[0], init_pred_var, eps)
            for s, t in zip(s_taps, t_taps, strict=True)])
        self.needs = Needs(labels=False, teacher=True, student_taps=s_taps, teacher_taps=t_taps)

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        nll = sum(reg(s.taps[a], t.taps[b]) for reg, a, b in
                  zip(self.regressors, self.needs.student_taps, self.needs.teacher_taps, strict=True))
        return {"vid": self.weight * nll, **ce_term(batch, s.logits, self.ce)}
