"""Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

``loss = gamma * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, the KL summed over
classes and averaged over the batch. Defaults are the CIFAR-100 protocol of RepDistiller/CRD (T=4, CE 0.1,
KL 0.9). Without labels (unlabeled regime) the CE term is dropped. ``ls: true`` applies logit standardization
(Sun et al., CVPR 2024) to both logits before the softened softmax; ``T`` is then its base temperature.
``freeze_student_fc: true`` leaves the student's classifier at its random initialisation (not optimised, no
weight decay), as GenDD's unlabeled KL baseline does (main_unsupervised_kd.py); off by default.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.methods.logit_utils import standardize
from kdbench.models import Network, Outputs


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
                 T: float = 4.0, alpha: float = 0.9, gamma: float = 0.1, ls: bool = False,
                 freeze_student_fc: bool = False) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        if T <= 0:
            raise ValueError(f"T must be > 0, got {T}")
        self.T, self.alpha, self.gamma, self.ls = T, alpha, gamma, ls
        self.freeze_student_fc = freeze_student_fc

    def param_groups(self, student: Network) -> list[dict[str, Any]]:
        """The student's parameters, without its classifier when ``freeze_student_fc`` is set."""
        groups = super().param_groups(student)
        if self.freeze_student_fc:
            frozen = {id(p) for p in student.classifier.parameters()}
            groups[0]["params"] = [p for p in groups[0]["params"] if id(p) not in frozen]
        return groups

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        zs, zt = (standardize(s.logits), standardize(t.logits)) if self.ls else (s.logits, t.logits)
        terms = {"kd": self.alpha * kd_loss(zs, zt, self.T)}
        return {**terms, **ce_term(batch, s.logits, self.gamma)}
