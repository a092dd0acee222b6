"""Cui et al., "Decoupled Kullback-Leibler Divergence Loss" (NeurIPS 2024): IKL-KD, the improved KL.

KL is rewritten as a weighted MSE between all pairwise logit differences plus a soft-label cross-entropy, then
improved: the wMSE term acts on the student for any teacher (asymmetry broken) and its weights carry class-wise
global information (GI): ``w = prior[y]``, the teacher's mean ``softmax(z_t / T2)`` over the training images of
class ``y`` in the previous epoch (uniform in the first), instead of the image's own teacher probabilities.

``wMSE = 1/4 * mean_b sum_{i,j} w_i w_j ((z_t,i - z_t,j) - (z_s,i - z_s,j))^2``,
``SCE = -mean_b sum_c softmax(z_t / T)_c log softmax(z_s / T)_c``,
``loss = ce * CE + min(epoch / warmup, 1) * (beta * wMSE + alpha * SCE)``. Defaults: the authors' CIFAR-100
configs (alpha 1, beta 8, T 4, warm-up 20) with their default GI on and T2 = 1; ImageNet uses beta 0.5, T 1.
IKL-KD needs labels (for CE and the class prior).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench import distributed
from kdbench.method import Batch, Method, Needs, StepHooks, register_method
from kdbench.methods.logit_utils import linear_warmup
from kdbench.models import Network, Outputs


def ikl_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(wMSE, SCE) for per-image class weights ``weights`` (B, C); the teacher and the weights are detached."""
    teacher_logits, weights = teacher_logits.detach(), weights.detach()
    delta_t = teacher_logits[:, :, None] - teacher_logits[:, None, :]
    delta_s = student_logits[:, :, None] - student_logits[:, None, :]
    pair_weights = weights[:, :, None] * weights[:, None, :]
    wmse = 0.25 * ((delta_t - delta_s) ** 2 * pair_weights).sum() / student_logits.shape[0]
    soft = F.softmax(teacher_logits / temperature, dim=1)
    sce = -(soft * F.log_softmax(student_logits / temperature, dim=1)).sum(1).mean()
    return wmse, sce


@register_method("ikl")
class IKL(StepHooks, Method):
    """IKL-KD: weighted MSE of pairwise logit differences (class-wise weights) + soft-label CE, warmed up."""

    needs = Needs(labels=True, teacher=True)
    description = "IKL-KD: beta * wMSE(pairwise logit gaps, class-prior weights) + alpha * soft CE at T, plus CE"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, alpha: float = 1.0,
                 beta: float = 8.0, T: float = 4.0, T2: float = 1.0, ce: float = 1.0, warmup_epochs: int = 20,
                 global_info: bool = True) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        if T <= 0 or T2 <= 0:
            raise ValueError(f"T and T2 must be > 0, got {T}, {T2}")
        self.alpha, self.beta, self.T, self.T2, self.ce = alpha, beta, T, T2, ce
        self.warmup_epochs, self.global_info = warmup_epochs, global_info
        self.epoch = 0
        self.register_buffer("prior", torch.full((num_classes, num_classes), 1.0 / num_classes))
        self.register_buffer("prior_sums", torch.zeros(num_classes, num_classes))

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """The previous epoch's class-wise teacher means become this epoch's prior (classes unseen keep theirs)."""
        self.epoch = epoch
        sums = distributed.sum_across(self.prior_sums)
        seen = sums.sum(1) > 0
        self.prior[seen] = sums[seen] / sums[seen].sum(1, keepdim=True)
        self.prior_sums.zero_()

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        teacher_probs = F.softmax(t.logits.detach().float() / self.T2, dim=1)
        if self.training:
            self.prior_sums.index_add_(0, batch.y, teacher_probs.to(self.prior_sums.dtype))
        weights = self.prior[batch.y] if self.global_info else teacher_probs
        wmse, sce = ikl_terms(s.logits, t.logits, weights.to(s.logits.dtype), self.T)
        factor = linear_warmup(self.epoch, self.warmup_epochs)
        return {"ce": self.ce * F.cross_entropy(s.logits, batch.y), "wmse": factor * self.beta * wmse,
                "sce": factor * self.alpha * sce}
