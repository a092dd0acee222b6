"""Chen et al., "Distilling Knowledge via Knowledge Review" (CVPR 2021), as mdistiller runs it.

The student's stages after the stem and its pooled feature (as a 1x1 map) are fused from the deepest up by
attention-based fusion (ABF): each level's map goes through a 1x1 conv-BN to ``mid`` channels; below the top, it
is blended with the level above's residual (upsampled, nearest) by two sigmoid attention maps from a 1x1 conv on
both; the result, resized to the teacher's size, goes through a 3x3 conv-BN to the teacher's width. The
hierarchical context loss (HCL) compares each output with the teacher's pre-activation stage (its pooled feature
at the top): MSE at full size plus MSE of 4x4, 2x2, 1x1 average-pooled maps (smaller than the map only),
weighted 1, 1/2, 1/4, 1/8 and normalised by their total. ``loss = ce * CE + weight * min(epoch / warmup, 1) *
sum over levels``. Defaults: mdistiller CIFAR (weight 1, warm-up 20 epochs, mid channels <= 512, the student's
post-activation stages). Needs the teacher's pre-activation taps; no labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.method import Batch, Method, Needs, StepHooks, ce_term, register_method
from kdbench.methods.feature_utils import as_map, missing_preact, paired_stages
from kdbench.methods.logit_utils import linear_warmup
from kdbench.models import Network, Outputs


def hcl_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss summed over levels; the teacher's maps detached."""
    total = 0.0
    for fs, ft in zip(student_maps, teacher_maps, strict=True):
        ft = ft.detach()
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= fs.shape[-1]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    """Attention-based fusion of one level with the residual of the level above."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_chs, mid_chs, 1, bias=False), nn.BatchNorm2d(mid_chs))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_chs, out_chs, 3, 1, 1, bias=False), nn.BatchNorm2d(out_chs))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_chs * 2, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None,
                out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(output at the teacher's size and width, the fused map passed to the level below)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, x.shape[-2:], mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, :1] + residual * att[:, 1:2]
        if x.shape[-1] != out_size:
            x = F.interpolate(x, (out_size, out_size), mode="nearest")
        return self.conv2(x), x


@register_method("reviewkd")
class ReviewKD(StepHooks, Method):
    """Knowledge review: attention-based fusion of the student's stages, hierarchical context loss."""

    needs = Needs(labels=False, teacher=True)
    description = "ReviewKD: student stages fused top-down (ABF) matched to teacher pre-ReLU stages by HCL, plus CE"
    uses = "stage taps after the stem (teacher pre-activation) + pooled features + ABF modules"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 1.0,
                 warmup_epochs: int = 20, max_mid_channel: int = 512, student_preact: bool = False,
                 ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        problem = self.incompatibility(student, teacher)
        if problem:
            raise ValueError(f"reviewkd: {problem}")
        self.weight, self.warmup_epochs, self.ce = weight, warmup_epochs, ce
        s_taps, t_taps = paired_stages(student, teacher, student_preact=student_preact, teacher_preact=True)
        in_chs = [student.tap_info(tap)[0] for tap in s_taps] + [student.feature_dim]
        out_chs = [teacher.tap_info(tap)[0] for tap in t_taps] + [teacher.feature_dim]
        mid = min(max_mid_channel, in_chs[-1])
        # ordered from the top (pooled feature) down, as they run
        self.abfs = nn.ModuleList([ABF(i, mid, o, fuse=level < len(in_chs) - 1)
                                   for level, (i, o) in enumerate(zip(in_chs, out_chs, strict=True))][::-1])
        self.needs = Needs(labels=False, teacher=True, student_taps=s_taps, teacher_taps=t_taps)
        self.factor = 1.0

    @classmethod
    def incompatibility(cls, student: Network, teacher: Network | None) -> str | None:
        return missing_preact(teacher, paired_stages(student, teacher, teacher_preact=True)[1])

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.factor = linear_warmup(epoch, self.warmup_epochs)

    def fused(self, s: Outputs, teacher_sizes: list[int]) -> list[torch.Tensor]:
        """The ABF outputs, bottom level first (``teacher_sizes``: the teacher's map sizes, same order)."""
        levels = [as_map(s.taps[name]) for name in self.needs.student_taps] + [as_map(s.feature)]
        outputs, residual = [], None
        for abf, x, size in zip(self.abfs, levels[::-1], teacher_sizes[::-1], strict=True):
            out, residual = abf(x, residual, size)
            outputs.insert(0, out)
        return outputs

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        targets = [as_map(t.taps[name]) for name in self.needs.teacher_taps] + [as_map(t.feature)]
        outputs = self.fused(s, [m.shape[-1] for m in targets])
        return {"reviewkd": self.weight * self.factor * hcl_loss(outputs, targets), **ce_term(batch, s.logits, self.ce)}
