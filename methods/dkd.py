"""Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022), as mdistiller trains it.

With ``p = softmax(z / T)`` and the label ``y``: TCKD is the KL between the teacher's and the student's binary
(target, all non-targets) distributions; NCKD the KL between their distributions over the non-target classes
only (the target masked out before the softmax). Both are summed over classes, averaged over the batch and
scaled by ``T^2``. ``loss = ce * CE + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)``. Defaults are
mdistiller's CIFAR-100 ones (alpha 1, beta 8, T 4, CE 1, warm-up 20 epochs; beta is 2 for res56->res20 and
res110->res32, 6 for vgg13->vgg8 and the WRN pairs). DKD needs labels. ``ls: true`` standardizes the logits
first (Sun et al., CVPR 2024).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.method import Batch, Method, Needs, StepHooks, register_method
from kdbench.methods.logit_utils import linear_warmup, standardize
from kdbench.models import Network, Outputs

MASKED = 1000.0  # subtracted from the target logit (over T) to take it out of the non-target softmax


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each ``T^2 * mean_b KL(teacher || student)``; the teacher is detached."""
    teacher_logits = teacher_logits.detach()
    gt = F.one_hot(target, student_logits.shape[1]).to(student_logits.dtype)
    p_s = F.softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    binary_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], dim=1)
    binary_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], dim=1)
    tckd = (binary_t * (binary_t.log() - binary_s.log())).sum(1).mean()
    log_q_s = F.log_softmax(student_logits / temperature - MASKED * gt, dim=1)
    log_q_t = F.log_softmax(teacher_logits / temperature - MASKED * gt, dim=1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(1).mean()
    return tckd * temperature**2, nckd * temperature**2


@register_method("dkd")
class DKD(StepHooks, Method):
    """Decoupled KD: target-class (TCKD) and non-target-class (NCKD) KL, weighted alpha and beta, warmed up."""

    needs = Needs(labels=True, teacher=True)
    description = "Decoupled KD: alpha * TCKD + beta * NCKD at temperature T, linear warm-up, plus CE"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, alpha: float = 1.0,
                 beta: float = 8.0, T: float = 4.0, ce: float = 1.0, warmup_epochs: int = 20,
                 ls: bool = False) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        if T <= 0:
            raise ValueError(f"T must be > 0, got {T}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.alpha, self.beta, self.T, self.ce, self.warmup_epochs, self.ls = alpha, beta, T, ce, warmup_epochs, ls
        self.epoch = 0

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.epoch = epoch

    def warmup_factor(self) -> float:
        """mdistiller's ``min(epoch / warmup, 1)`` with its 1-based epochs."""
        return linear_warmup(self.epoch, self.warmup_epochs)

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        zs, zt = (standardize(s.logits), standardize(t.logits)) if self.ls else (s.logits, t.logits)
        tckd, nckd = dkd_terms(zs, zt, batch.y, self.T)
        factor = self.warmup_factor()
        return {"ce": self.ce * F.cross_entropy(s.logits, batch.y), "tckd": factor * self.alpha * tckd,
                "nckd": factor * self.beta * nckd}
