"""Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019).

For the last stage outputs flattened to (B, D): ``G = normalize_rows(f f^T)``;
``loss = ce * CE + weight * ||G_s - G_t||_F^2 / B^2``. Defaults: RepDistiller (weight 3000, CE 1). Needs no labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.models import Network, Outputs


def sp_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """``||normalize(F_s F_s^T) - normalize(F_t F_t^T)||_F^2 / B^2`` (rows L2-normalized); teacher detached."""
    fs, ft = student_feature.flatten(1), teacher_feature.detach().flatten(1)
    gs, gt = F.normalize(fs @ fs.t(), dim=1), F.normalize(ft @ ft.t(), dim=1)
    return (gs - gt).pow(2).sum() / fs.shape[0] ** 2


@register_method("sp")
class SP(Method):
    """Similarity-preserving KD on the last stage outputs."""

    needs = Needs(labels=False, teacher=True)
    description = "similarity-preserving KD: batch similarity matrices of the last stage outputs, plus CE"
    uses = "last stage tap"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 3000.0,
                 ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.weight, self.ce = weight, ce
        self.needs = Needs(labels=False, teacher=True, student_taps=(student.tap_names[-1],),
                           teacher_taps=(teacher.tap_names[-1],))

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        loss = sp_loss(s.taps[self.needs.student_taps[0]], t.taps[self.needs.teacher_taps[0]])
        terms = {"sp": self.weight * loss}
        return {**terms, **ce_term(batch, s.logits, self.ce)}
