"""MSE distillation (Kim et al., "Comparing Kullback-Leibler Divergence and Mean Squared Error Loss in
Knowledge Distillation", IJCAI 2021), with an optional feature-MSE term through a learned projector.

``loss = gamma * CE(z_s, y) + alpha * mean((z_s - z_t)^2) + beta * mean((P f_s - f_t)^2)`` where the means run
over batch and dimensions and ``P`` is a learned ``Linear(F_s -> F_t)`` (created only when ``beta > 0``).
Defaults mirror KD's weights (CE 0.1, logit term 0.9); without labels the CE term is dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.models import Network, Outputs


def mse_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error over batch and dimensions; the teacher side is detached."""
    return F.mse_loss(student, teacher.detach(), reduction="mean")


@register_method("mse")
class MSE(Method):
    """Logit MSE to the teacher, optionally feature MSE through a learned linear projector."""

    needs = Needs(labels=False, teacher=True)
    description = "MSE between student and teacher logits (+ feature MSE via a learned projector if beta>0)"
    uses = "logits (+ pooled feature)"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int,
                 alpha: float = 0.9, beta: float = 0.0, gamma: float = 0.1) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.projector = nn.Linear(student.feature_dim, teacher.feature_dim) if beta > 0 else None

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.alpha:
            terms["logit_mse"] = self.alpha * mse_loss(s.logits, t.logits)
        if self.projector is not None:
            terms["feature_mse"] = self.beta * mse_loss(self.projector(s.feature), t.feature)
        return {**terms, **ce_term(batch, s.logits, self.gamma)}
