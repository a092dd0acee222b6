"""Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (2017).

Each channel of a stage output is a distribution sample: its H*W activations, L2-normalized. NST matches the
students' and the teacher's channel sets by the squared MMD with the polynomial kernel ``k(a, b) = (a . b)^2``:
``mean k(t, t') + mean k(s, s') - 2 mean k(s, t)`` (means over the batch and all channel pairs), on every stage
after the stem (the larger map average-pooled to the smaller). ``loss = ce * CE + weight * sum_stages MMD^2``.
Defaults: RepDistiller (weight 50, CE 1). No labels needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.methods.feature_utils import paired_stages, same_size
from kdbench.models import Network, Outputs


def _poly(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b.transpose(1, 2)).pow(2)  # (B, Ca, Cb): (a_i . b_j)^2


def nst_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    """Sum over stage pairs of the polynomial-kernel MMD^2 between channel sets; teacher maps detached."""
    total = student_maps[0].new_zeros(())
    for fs, ft in zip(student_maps, teacher_maps, strict=True):
        fs, ft = same_size(fs, ft)
        s, t = F.normalize(fs.flatten(2), dim=2), F.normalize(ft.flatten(2), dim=2)
        total = total + _poly(t, t).mean() + _poly(s, s).mean() - 2 * _poly(s, t).mean()
    return total


@register_method("nst")
class NST(Method):
    """Neuron selectivity transfer on every stage after the stem."""

    needs = Needs(labels=False, teacher=True)
    description = "NST: polynomial-kernel MMD between student and teacher channel activation patterns, plus CE"
    uses = "stage taps after the stem"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 50.0,
                 ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.weight, self.ce = weight, ce
        s_taps, t_taps = paired_stages(student, teacher)
        self.needs = Needs(labels=False, teacher=True, student_taps=s_taps, teacher_taps=t_taps)

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        maps_s = [s.taps[name] for name in self.needs.student_taps]
        maps_t = [t.taps[name] for name in self.needs.teacher_taps]
        terms = {"nst": self.weight * nst_loss(maps_s, maps_t)}
        return {**terms, **ce_term(batch, s.logits, self.ce)}
