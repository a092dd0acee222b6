"""Park et al., "Relational Knowledge Distillation" (CVPR 2019): distance- and angle-wise relations.

On the pooled features: the distance term compares all pairwise Euclidean distances, each set divided by its
mean over distinct pairs, with the smooth L1 (Huber, delta 1) loss; the angle term compares, for every triplet
(i, j, k), the cosine of the angle at j between the unit vectors to i and to k, with smooth L1.
``loss = ce * CE + distance * D + angle * A``. Defaults: RepDistiller (distance 25, angle 50, CE 1). No labels needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.models import Network, Outputs


def _normalized_distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e)
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off_diagonal].mean()


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # diff[j, i] = unit vector from j to i
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()    # cos of angle (i, j, k) at j, for all j, i, k


def rkd_terms(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, angle) losses; the teacher is detached."""
    fs, ft = student_feature.flatten(1), teacher_feature.detach().flatten(1)
    distance = F.smooth_l1_loss(_normalized_distances(fs), _normalized_distances(ft))
    angle = F.smooth_l1_loss(_angles(fs), _angles(ft))
    return distance, angle


@register_method("rkd")
class RKD(Method):
    """Relational KD: distance and angle relations of the pooled features."""

    needs = Needs(labels=False, teacher=True)
    description = "relational KD: smooth-L1 on normalized pairwise distances and triplet angles of features, plus CE"
    uses = "pooled feature"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, distance: float = 25.0,
                 angle: float = 50.0, ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.distance, self.angle, self.ce = distance, angle, ce

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        distance, angle = rkd_terms(s.feature, t.feature)
        terms = {"distance": self.distance * distance, "angle": self.angle * angle}
        return {**terms, **ce_term(batch, s.logits, self.ce)}
