"""Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

``loss = gamma * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, the KL summed over
classes and averaged over the batch. Defaults are the CIFAR-100 protocol of RepDistiller/CRD (T=4, CE 0.1,
KL 0.9). Without labels (unlabeled regime) the CE term is dropped. ``ls: true`` applies logit standardization
(Sun et al., CVPR 2024) to both logits before the softened softmax; ``T`` is then its base temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.models import Network, Outputs
from methods.logit_utils import standardize


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * mean_b sum_c p_t log(p_t / p_s)`` with ``p = softmax(z / T)``; the teacher is detached."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()
    return kl * temperature**2


@register_method("kd")
class KD(Method):
    """Hinton KD: temperature-softened KL to the teacher plus weighted cross-entropy."""

    needs = Needs(labels=False, teacher=True)
    description = "Hinton KD: T^2 * KL(teacher || student) at temperature T, plus gamma * CE"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int,
                 T: float = 4.0, alpha: float = 0.9, gamma: float = 0.1, ls: bool = False) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        if T <= 0:
            raise ValueError(f"T must be > 0, got {T}")
        self.T, self.alpha, self.gamma, self.ls = T, alpha, gamma, ls

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        zs, zt = (standardize(s.logits), standardize(t.logits)) if self.ls else (s.logits, t.logits)
        terms = {"kd": self.alpha * kd_loss(zs, zt, self.T)}
        return {**terms, **ce_term(batch, s.logits, self.gamma)}
