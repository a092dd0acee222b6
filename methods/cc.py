"""Peng et al., "Correlation Congruence for Knowledge Distillation" (ICCV 2019), as RepDistiller runs it.

Both pooled features are embedded by their own learned ``Linear(F -> 128)`` and L2-normalized; with
``delta = |e_s - e_t|`` per image, ``CC = mean_b sum_d delta[b, d] * delta[b + 1, d]`` (RepDistiller's
implementation, shared by the authors, which the published CC numbers come from: the correlation of consecutive
images' embedding gaps). ``loss = ce * CE + weight * CC``. Defaults: RepDistiller (weight 0.02, 128-d, CE 1).
"""

from __future__ import annotations

import torch

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.methods.feature_utils import NormalizedEmbed
from kdbench.models import Network, Outputs


def cc_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_d |e_s - e_t|[b, d] * |e_s - e_t|[b + 1, d]`` over consecutive images of the batch."""
    delta = (student_embedding - teacher_embedding).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


@register_method("cc")
class CC(Method):
    """Correlation congruence on learned 128-d embeddings of both pooled features."""

    needs = Needs(labels=False, teacher=True)
    description = "correlation congruence: products of consecutive images' embedding gaps (RepDistiller), plus CE"
    uses = "pooled feature + two learned embeddings"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 0.02,
                 embed_dim: int = 128, ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.weight, self.ce = weight, ce
        self.embed_s = NormalizedEmbed(student.feature_dim, embed_dim)
        self.embed_t = NormalizedEmbed(teacher.feature_dim, embed_dim)

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        terms = {"cc": self.weight * cc_loss(self.embed_s(s.feature), self.embed_t(t.feature.detach()))}
        return {**terms, **ce_term(batch, s.logits, self.ce)}
