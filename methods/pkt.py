"""Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer" (ECCV 2018).

On the L2-normalized pooled features: cosine similarities mapped to [0, 1] by ``(cos + 1) / 2``, each row divided
by its sum (conditional probabilities); ``PKT = mean_{i,j} q_t log((q_t + eps) / (q_s + eps))``.
``loss = ce * CE + weight * PKT``. Defaults: RepDistiller (weight 30000, CE 1, eps 1e-7). No labels needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.models import Network, Outputs


def _conditional(f: torch.Tensor) -> torch.Tensor:
    f = F.normalize(f.flatten(1), dim=1)
    similarity = (f @ f.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


def pkt_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """KL-style divergence of the teacher's conditional similarity distribution from the student's."""
    q_s, q_t = _conditional(student_feature), _conditional(teacher_feature.detach())
    return (q_t * torch.log((q_t + eps) / (q_s + eps))).mean()


@register_method("pkt")
class PKT(Method):
    """Probabilistic knowledge transfer on the pooled features."""

    needs = Needs(labels=False, teacher=True)
    description = "probabilistic KT: divergence of cosine-similarity distributions of the features, plus CE"
    uses = "pooled feature"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 30000.0,
                 ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.weight, self.ce = weight, ce

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        terms = {"pkt": self.weight * pkt_loss(s.feature, t.feature)}
        return {**terms, **ce_term(batch, s.logits, self.ce)}
