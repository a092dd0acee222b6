"""Shared pieces of the feature methods: which stage taps to pair between two networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.models import Network


def paired_stages(student: Network, teacher: Network, skip_stem: bool = True) -> tuple[tuple[str, ...],
                                                                                       tuple[str, ...]]:
    """The stage taps matched one to one, from the last stage backwards (RepDistiller pairs its ``feat[1:-1]``:
    every stage after the stem); as many pairs as the shallower network has."""
    first = 1 if skip_stem else 0
    s_names, t_names = student.tap_names[first:], teacher.tap_names[first:]
    n = min(len(s_names), len(t_names))
    return tuple(s_names[len(s_names) - n:]), tuple(t_names[len(t_names) - n:])


def same_size(student_map: torch.Tensor, teacher_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps at the smaller of their spatial sizes (the larger one average-pooled); the teacher detached."""
    teacher_map = teacher_map.detach()
    size = min(student_map.shape[-1], teacher_map.shape[-1])
    if student_map.shape[-1] != size:
        student_map = F.adaptive_avg_pool2d(student_map, size)
    if teacher_map.shape[-1] != size:
        teacher_map = F.adaptive_avg_pool2d(teacher_map, size)
    return student_map, teacher_map
