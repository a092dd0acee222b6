"""Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017): attention transfer.

The attention map of a stage output ``f`` (B, C, H, W) is ``a = normalize(mean_c f^p)`` flattened (L2 over the
H*W positions; p = 2). ``loss = ce * CE + weight * sum_stages mean_b mean_pos (a_s - a_t)^2``, over every stage
after the stem (RepDistiller's ``feat[1:-1]``); where the spatial sizes differ the larger map is average-pooled
to the smaller. Defaults: RepDistiller (weight 1000, CE 1, p 2). Needs no labels (the CE term is dropped then).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.methods.feature_utils import paired_stages, same_size
from kdbench.models import Network, Outputs


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``normalize(mean over channels of |f|^p)`` flattened to (B, H*W)."""
    return F.normalize(feature.abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor], p: float = 2.0) -> torch.Tensor:
    """Sum over stage pairs of the mean squared difference of attention maps; teacher maps detached."""
    pairs = [same_size(fs, ft) for fs, ft in zip(student_maps, teacher_maps, strict=True)]
    return sum((attention_map(fs, p) - attention_map(ft, p)).pow(2).mean() for fs, ft in pairs)


@register_method("at")
class AT(Method):
    """Attention transfer on every stage after the stem."""

    needs = Needs(labels=False, teacher=True)
    description = "attention transfer: MSE of normalized spatial attention maps of every stage after the stem, plus CE"
    uses = "stage taps after the stem"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 1000.0,
                 p: float = 2.0, ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.weight, self.p, self.ce = weight, p, ce
        s_taps, t_taps = paired_stages(student, teacher)
        self.needs = Needs(labels=False, teacher=True, student_taps=s_taps, teacher_taps=t_taps)

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        maps_s = [s.taps[name] for name in self.needs.student_taps]
        maps_t = [t.taps[name] for name in self.needs.teacher_taps]
        terms = {"at": self.weight * at_loss(maps_s, maps_t, self.p)}
        return {**terms, **ce_term(batch, s.logits, self.ce)}
