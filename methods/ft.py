"""Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer" (NeurIPS 2018), as
RepDistiller runs it: a paraphraser pre-training stage, then factor transfer.

The paraphraser is a conv auto-encoder on the teacher's last stage (three 3x3 conv + LeakyReLU(0.1) layers to
``k`` x the teacher's channels, three transposed convs back; no BN). Its stage (``init_epochs``, SGD at
``init_lr``) fits it to reconstruct the teacher's map (MSE); the student is not trained there. Main phase: a
translator (three 3x3 conv-BN-LeakyReLU layers) maps the student's last stage to a factor; with
``factor(f) = normalize(mean over channels of f^2)`` flattened, the loss is ``beta * mean |factor(translator(f_s))
- factor(encoder(f_t))|`` (maps pooled to the smaller size), plus CE; the student and the translator learn, the
paraphraser is frozen. Defaults: RepDistiller (beta 200, k 0.5, 30 init epochs at lr 0.01, its rate for ResNet
and WRN students). Needs no labels (the CE term is dropped then).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.method import Batch, Method, Needs, Stage, ce_term, register_method
from kdbench.methods.feature_utils import init_stage
from kdbench.models import Network, Outputs


def _conv_stack(chs: list[int], transposed: bool = False, bn: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for cin, cout in itertools.pairwise(chs):
        layers.append((nn.ConvTranspose2d if transposed else nn.Conv2d)(cin, cout, 3, 1, 1))
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Conv auto-encoder of the teacher's map: ``encoder`` gives the factor, ``decoder`` the reconstruction."""

    def __init__(self, channels: int, k: float = 0.5) -> None:
        super().__init__()
        mid = int(channels * k)
        self.encoder = _conv_stack([channels, channels, mid, mid])
        self.decoder = _conv_stack([mid, mid, channels, channels], transposed=True)


def factor(feature: torch.Tensor) -> torch.Tensor:
    """``normalize(mean over channels of f^2)`` flattened: (B, H*W)."""
    return F.normalize(feature.pow(2).mean(1).flatten(1), dim=1)


def factor_loss(factor_s: torch.Tensor, factor_t: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the factors of two maps, the larger pooled to the smaller size."""
    size = min(factor_s.shape[-1], factor_t.shape[-1])
    factor_s, factor_t = (F.adaptive_avg_pool2d(m, size) if m.shape[-1] != size else m for m in (factor_s, factor_t))
    return (factor(factor_s) - factor(factor_t)).abs().mean()


@register_method("ft")
class FT(Method):
    """Factor transfer: paraphraser pre-training, then L1 between translator and paraphraser factors."""

    needs = Needs(labels=False, teacher=True)
    description = "FT: paraphraser auto-encoder pre-trained on the teacher's last stage, then L1 of factors, plus CE"
    uses = "last stage taps + paraphraser (init stage) and translator"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, beta: float = 200.0,
                 k: float = 0.5, init_epochs: int = 30, init_lr: float = 0.01, ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.beta, self.ce, self.init_epochs, self.init_lr = beta, ce, init_epochs, init_lr
        s_tap, t_tap = student.tap_names[-1], teacher.tap_names[-1]
        t_chs, s_chs = teacher.tap_info(t_tap)[0], student.tap_info(s_tap)[0]
        self.paraphraser = Paraphraser(t_chs, k)
        mid = int(t_chs * k)
        self.translator = _conv_stack([s_chs, s_chs, mid, mid], bn=True)
        self.needs = Needs(labels=False, teacher=True, student_taps=(s_tap,), teacher_taps=(t_tap,))

    def _reconstruction(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        target = t.taps[self.needs.teacher_taps[0]].detach()
        rebuilt = self.paraphraser.decoder(self.paraphraser.encoder(target))
        return {"paraphraser_mse": F.mse_loss(rebuilt, target)}

    def stages(self, recipe: dict[str, Any], labeled: bool = True) -> list[Stage]:
        if self.init_epochs <= 0:
            return []
        return [init_stage("ft_paraphraser", self.init_epochs, self.init_lr, self._reconstruction,
                           lambda student: list(self.paraphraser.parameters()))]

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        factor_s = self.translator(s.taps[self.needs.student_taps[0]])
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(t.taps[self.needs.teacher_taps[0]])
        return {"ft": self.beta * factor_loss(factor_s, factor_t), **ce_term(batch, s.logits, self.ce)}

    def param_groups(self, student: Network) -> list[dict[str, Any]]:
        """Main phase: the student and the translator (the paraphraser stays as its stage left it)."""
        return [{"params": [p for p in student.parameters() if p.requires_grad], "name": "student"},
                {"params": list(self.translator.parameters()), "name": "method"}]
