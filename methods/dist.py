"""Huang et al., "Knowledge Distillation from A Stronger Teacher" (DIST, NeurIPS 2022).

With ``p = softmax(z / T)``: the inter-class relation is ``1 - mean_b pearson(p_s[b, :], p_t[b, :])`` (each
image's class scores), the intra-class relation ``1 - mean_c pearson(p_s[:, c], p_t[:, c])`` (each class over the
batch); both scaled by ``T^2``. ``loss = ce * CE + beta * inter + gamma * intra``. Defaults are DIST's CIFAR-100
setting (beta 2, gamma 2, T 4; ImageNet: 1, 1, 1). The relation terms need no labels; without them the CE term
is dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.models import Network, Outputs


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (mean-centred cosine)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra) relation losses, each times ``T^2``; the teacher is detached."""
    p_s = F.softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits.detach() / temperature, dim=1)
    inter = 1 - pearson_rows(p_s, p_t).mean()
    intra = 1 - pearson_rows(p_s.t(), p_t.t()).mean()
    return inter * temperature**2, intra * temperature**2


@register_method("dist")
class DIST(Method):
    """DIST: match the teacher's inter- and intra-class relations (Pearson correlation), plus CE."""

    needs = Needs(labels=False, teacher=True)
    description = "DIST: beta * (1 - inter-class Pearson) + gamma * (1 - intra-class Pearson) at T, plus CE"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, beta: float = 2.0,
                 gamma: float = 2.0, T: float = 4.0, ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        if T <= 0:
            raise ValueError(f"T must be > 0, got {T}")
        self.beta, self.gamma, self.T, self.ce = beta, gamma, T, ce

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        inter, intra = dist_terms(s.logits, t.logits, self.T)
        terms = {"inter": self.beta * inter, "intra": self.gamma * intra}
        return {**terms, **ce_term(batch, s.logits, self.ce)}
