"""Yim et al., "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer
Learning" (CVPR 2017), as RepDistiller runs it: an initialisation stage, then plain training.

The FSP ("flow of solution procedure") matrix of two consecutive stage maps (the larger average-pooled to the
smaller) is ``G[b, j, i] = mean over positions of top_j * bottom_i``. Init stage (``init_epochs``, SGD at
``init_lr``, the student in eval mode): the student's feature layers learn to match the teacher's FSP matrices
over every pair of consecutive stages (stem included), loss = ``weight * sum of mean squared differences``.
Main phase: CE only (RepDistiller's FSP term is 0 there). Needs equal channels at every stage (RepDistiller
refuses other pairs), and labels (the main phase is CE).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from kdbench.method import Batch, Method, Needs, Stage, ce_term, register_method
from kdbench.methods.feature_utils import feature_parameters, init_stage
from kdbench.models import Network, Outputs


def fsp_matrices(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """The FSP matrix (B x C_top x C_bottom) of every pair of consecutive maps."""
    out = []
    for bottom, top in itertools.pairwise(maps):
        size = min(bottom.shape[-1], top.shape[-1])
        bottom, top = (F.adaptive_avg_pool2d(m, size) if m.shape[-1] != size else m for m in (bottom, top))
        out.append(torch.einsum("bthw,bshw->bts", top, bottom) / (size * top.shape[-2]))
    return out


def fsp_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    """Sum over consecutive pairs of the mean squared difference of FSP matrices; the teacher's detached."""
    pairs = zip(fsp_matrices(student_maps), fsp_matrices([m.detach() for m in teacher_maps]), strict=True)
    return sum((gs - gt).pow(2).mean() for gs, gt in pairs)


@register_method("fsp")
class FSP(Method):
    """FSP-matrix distillation: an init stage over consecutive stage pairs, then CE."""

    needs = Needs(labels=True, teacher=True)
    description = "FSP: init stage matching flow matrices of consecutive stages (equal channels), then CE training"
    uses = "every stage tap (stem included), equal channels (init stage)"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 1.0,
                 init_epochs: int = 30, init_lr: float = 0.05, ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        problem = self.incompatibility(student, teacher)
        if problem:
            raise ValueError(f"fsp: {problem}")
        self.weight, self.ce, self.init_epochs, self.init_lr = weight, ce, init_epochs, init_lr
        self.needs = Needs(labels=True, teacher=True, student_taps=student.tap_names, teacher_taps=teacher.tap_names)

    @classmethod
    def incompatibility(cls, student: Network, teacher: Network | None) -> str | None:
        s_chs = [student.tap_info(tap)[0] for tap in student.tap_names]
        t_chs = [teacher.tap_info(tap)[0] for tap in teacher.tap_names]
        if s_chs != t_chs:
            return f"fsp needs equal stage channels; student {s_chs}, teacher {t_chs}"
        return None

    def _init_losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        maps_s = [s.taps[name] for name in self.needs.student_taps]
        maps_t = [t.taps[name] for name in self.needs.teacher_taps]
        return {"fsp": self.weight * fsp_loss(maps_s, maps_t)}

    def stages(self, recipe: dict, labeled: bool = True) -> list[Stage]:
        if self.init_epochs <= 0:
            return []
        return [init_stage("fsp_init", self.init_epochs, self.init_lr, self._init_losses, feature_parameters)]

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        return ce_term(batch, s.logits, self.ce)
