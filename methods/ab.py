"""Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons" (AAAI 2019),
as RepDistiller runs it: an initialisation stage, then plain training.

Init stage (``init_epochs``, SGD at ``init_lr``, the student in eval mode): on every stage after the stem, the
student's pre-ReLU map goes through a connector (identity when the shapes agree, else RepDistiller's ConvReg
without ReLU) and is pushed to the teacher's activation boundary with the alternative (hinge-squared) loss
``(s + m)^2 [s > -m, t <= 0] + (s - m)^2 [s <= m, t > 0]``, summed, margin ``m = 1``; stage i of n weighted
``2^(i - n + 1)``, divided by the batch size and scaled by 3/1000, summed over stages and times ``weight``.
The student's feature layers and the connectors learn; the classifier does not. Main phase: CE only
(RepDistiller's AB term is 0 there). Defaults: RepDistiller (30 init epochs, weight 1). Needs labels (the main
phase is CE).
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench.method import Batch, Method, Needs, Stage, ce_term, register_method
from kdbench.methods.feature_utils import as_map, feature_parameters, init_stage, missing_preact, paired_stages
from kdbench.methods.fitnet import regressor
from kdbench.models import Network, Outputs


def ab_boundary_loss(source: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The alternative L2 activation-boundary loss, summed over every entry."""
    loss = ((source + margin) ** 2 * ((source > -margin) & (target <= 0))
            + (source - margin) ** 2 * ((source <= margin) & (target > 0)))
    return loss.sum()


def ab_loss(sources: list[torch.Tensor], targets: list[torch.Tensor], margin: float = 1.0) -> torch.Tensor:
    """RepDistiller's ABLoss summed over stages: stage i of n weighted 2^(i - n + 1), / batch, x 3/1000."""
    n, batch = len(sources), sources[0].shape[0]
    return sum(2.0 ** (i - n + 1) * ab_boundary_loss(s, t.detach(), margin) / batch / 1000 * 3
               for i, (s, t) in enumerate(zip(sources, targets, strict=True)))


@register_method("ab")
class AB(Method):
    """Activation-boundary distillation: an init stage on pre-ReLU stages, then CE."""

    needs = Needs(labels=True, teacher=True)
    description = "AB: init stage matching activation boundaries of pre-ReLU stages (hinge), then CE training"
    uses = "pre-activation stage taps after the stem + connectors (init stage)"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 1.0,
                 margin: float = 1.0, init_epochs: int = 30, init_lr: float = 0.05, ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        problem = self.incompatibility(student, teacher)
        if problem:
            raise ValueError(f"ab: {problem}")
        self.weight, self.margin, self.ce = weight, margin, ce
        self.init_epochs, self.init_lr = init_epochs, init_lr
        s_taps, t_taps = paired_stages(student, teacher, student_preact=True, teacher_preact=True)
        connectors = []
        for s_tap, t_tap in zip(s_taps, t_taps, strict=True):
            (s_chs, s_red), (t_chs, t_red) = student.tap_info(s_tap), teacher.tap_info(t_tap)
            same = s_chs == t_chs and s_red == t_red
            connectors.append(nn.Identity() if same else regressor(s_chs, t_chs, t_red / s_red)[:-1])
        self.connectors = nn.ModuleList(connectors)
        self.needs = Needs(labels=True, teacher=True, student_taps=s_taps, teacher_taps=t_taps)

    @classmethod
    def incompatibility(cls, student: Network, teacher: Network | None) -> str | None:
        s_taps, t_taps = paired_stages(student, teacher, student_preact=True, teacher_preact=True)
        return missing_preact(student, s_taps) or missing_preact(teacher, t_taps)

    def _init_losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        sources = [conn(as_map(s.taps[a])) for conn, a in zip(self.connectors, self.needs.student_taps, strict=True)]
        targets = [as_map(t.taps[b]) for b in self.needs.teacher_taps]
        return {"ab": self.weight * ab_loss(sources, targets, self.margin)}

    def stages(self, recipe: dict, labeled: bool = True) -> list[Stage]:
        if self.init_epochs <= 0:
            return []
        return [init_stage("ab_init", self.init_epochs, self.init_lr, self._init_losses,
                           lambda student: feature_parameters(student) + list(self.connectors.parameters()))]

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        return ce_term(batch, s.logits, self.ce)

    def param_groups(self, student: Network) -> list[dict]:
        """Main phase: the student alone (the connectors served the init stage)."""
        return [{"params": [p for p in student.parameters() if p.requires_grad], "name": "student"}]
