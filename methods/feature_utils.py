"""Shared pieces of the feature methods: which stage taps to pair between two networks, maps of equal size,
and the initialisation stage of the methods that have one (AB, FT, FSP)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.method import LossFn, Stage
from kdbench.models import Network
from kdbench.models.network import PRE


def paired_stages(student: Network, teacher: Network, skip_stem: bool = True, student_preact: bool = False,
                  teacher_preact: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The stage taps matched one to one, from the last stage backwards (RepDistiller pairs its ``feat[1:-1]``:
    every stage after the stem); as many pairs as the shallower network has. ``*_preact``: the pre-activation
    taps (``stage{i}_pre``) of those stages instead."""
    first = 1 if skip_stem else 0
    s_names, t_names = student.tap_names[first:], teacher.tap_names[first:]
    n = min(len(s_names), len(t_names))
    s_names, t_names = s_names[len(s_names) - n:], t_names[len(t_names) - n:]
    return (tuple(name + PRE if student_preact else name for name in s_names),
            tuple(name + PRE if teacher_preact else name for name in t_names))


def stage_tap(network: Network, stage: int, method: str) -> str:
    """The tap name of stage ``stage`` of ``network`` (negative: counted from the last); ``ValueError`` naming the
    method and the valid stages otherwise."""
    names = network.tap_names
    if not -len(names) <= stage < len(names):
        raise ValueError(f"{method}: stage {stage} does not exist in model '{network.name}' "
                         f"(stages: {', '.join(names)})")
    return names[stage]


def missing_preact(network: Network, taps: tuple[str, ...], need_bn: bool = False) -> str | None:
    """Why ``network`` cannot give the pre-activation taps ``taps`` (or their BatchNorm), or None."""
    missing = [tap for tap in taps if tap not in network.preact_tap_names]
    if missing:
        return f"model '{network.name}' declares no pre-activation for {', '.join(missing)}"
    if need_bn:
        missing = [tap for tap in taps if network.bn_before_activation(tap) is None]
        if missing:
            return f"model '{network.name}' has no BatchNorm before the activation of {', '.join(missing)}"
    return None


def as_map(feature: torch.Tensor) -> torch.Tensor:
    """A (B, C) feature as a (B, C, 1, 1) map; maps pass unchanged (MLP stages are vectors)."""
    return feature[:, :, None, None] if feature.dim() == 2 else feature


def same_size(student_map: torch.Tensor, teacher_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps at the smaller of their spatial sizes (the larger one average-pooled); the teacher detached."""
    teacher_map = teacher_map.detach()
    size = min(student_map.shape[-1], teacher_map.shape[-1])
    if student_map.shape[-1] != size:
        student_map = F.adaptive_avg_pool2d(student_map, size)
    if teacher_map.shape[-1] != size:
        teacher_map = F.adaptive_avg_pool2d(teacher_map, size)
    return student_map, teacher_map


def feature_parameters(student: Network) -> list[nn.Parameter]:
    """The student's parameters except its classifier (RepDistiller's ``get_feat_modules``)."""
    head = {id(p) for p in student.classifier.parameters()}
    return [p for p in student.parameters() if id(p) not in head]


def init_stage(name: str, epochs: int, lr: float, losses: LossFn,
               params: Callable[[Network], list[nn.Parameter]]) -> Stage:
    """RepDistiller's initialisation stage (``helper/pretrain.init``): SGD at a constant ``lr`` with the run's
    momentum and weight decay, the student in eval mode (its BN statistics frozen), no warm-up; evaluation
    meanwhile reports the student's own logits."""
    recipe: dict[str, Any] = {"optimizer": "sgd", "lr": lr, "schedule": "constant", "warmup_epochs": 0,
                              "milestones": [], "min_lr": 0.0}
    return Stage(name=name, epochs=epochs, recipe=recipe, losses=losses, predict=lambda x, s: s.logits,
                 param_groups=lambda student: [{"params": params(student), "name": name}],
                 student_train_mode=False)


class NormalizedEmbed(nn.Module):
    """Linear projection of a (flattened) feature, L2-normalised: RepDistiller's ``Embed`` (CC, CRD)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)
