"""Lee et al., "Self-supervised Knowledge Distillation Using Singular Value Decomposition" (ECCV 2018), as
RepDistiller runs it on every stage after the stem.

Each stage output (B, C, H, W) is read as an (H*W) x C matrix per image; its top right singular vectors (k for the
teacher, k + 3 candidates for the student) are unit vectors over the channels. Each teacher vector takes the
student candidate with the largest |cosine|, sign-matched; both are scaled by the teacher's normalized singular
values. Between consecutive stages, an RBF ``exp(-(v_i[c] - v_{i-1}[c'])^2 / 8)`` over all channel pairs relates
the two stages; ``KDSVD = sum over stage transitions of sum (rbf_s - rbf_t)^2 / B`` (non-finite entries, from
degenerate SVDs, count as 0). ``loss = ce * CE + weight * KDSVD``. Defaults: RepDistiller (k 1, weight 1, CE 1).

One deliberate difference: an SVD fixes each singular vector only up to sign, and the RBF between stages sees the
teacher's signs, so RepDistiller's value depends on the LAPACK build. Here every teacher vector is made to have its
largest-magnitude entry positive (the student is sign-matched to it as in the paper), so the loss is the same on
every machine. Student and teacher need equal channels at each paired stage (as in the anchors' KDSVD pairs).
"""

from __future__ import annotations

import torch

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.methods.feature_utils import paired_stages
from kdbench.models import Network, Outputs


def singular_vectors(feature: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalized top-n singular values (B, n), top-n right singular vectors (B, C, n), sign-canonical)."""
    x = feature.flatten(2).transpose(1, 2)                       # (B, H*W, C)
    _, values, vh = torch.linalg.svd(x, full_matrices=False)
    vectors = vh.transpose(1, 2)[:, :, :n]
    values = torch.nn.functional.normalize(values[:, :n], dim=1)
    largest = vectors.abs().argmax(dim=1, keepdim=True)
    sign = torch.sign(torch.gather(vectors, 1, largest))
    return values, vectors * torch.where(sign == 0, torch.ones_like(sign), sign)


def align(student_vectors: torch.Tensor, teacher_vectors: torch.Tensor) -> torch.Tensor:
    """For each teacher vector, the student candidate with the largest |cosine|, with the cosine's sign."""
    cosine = student_vectors.transpose(1, 2) @ teacher_vectors    # (B, n_s, n_t)
    best = cosine.abs().argmax(dim=1, keepdim=True)               # (B, 1, n_t)
    chosen = torch.gather(student_vectors, 2, best.expand(-1, student_vectors.shape[1], -1))
    return chosen * torch.sign(torch.gather(cosine, 1, best))


def kdsvd_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor], k: int = 1) -> torch.Tensor:
    """Sum over consecutive stage pairs of the squared RBF differences, divided by the batch size."""
    total = student_maps[0].new_zeros(())
    previous: tuple[torch.Tensor, torch.Tensor] | None = None
    for fs, ft in zip(student_maps, teacher_maps, strict=True):
        values_t, vectors_t = singular_vectors(ft.detach(), k)
        _, vectors_s = singular_vectors(fs, k + 3)
        scale = values_t[:, None, :]
        current = (align(vectors_s, vectors_t) * scale, vectors_t * scale)
        if previous is not None:
            rbf = [torch.exp(-(now[:, :, None, :] - before[:, None, :, :]).pow(2) / 8)
                   for now, before in zip(current, previous, strict=True)]
            squared = (rbf[0] - rbf[1].detach()).pow(2)
            total = total + torch.where(torch.isfinite(squared), squared, torch.zeros_like(squared)).sum()
        previous = current
    return total / student_maps[0].shape[0]


@register_method("kdsvd")
class KDSVD(Method):
    """KD-SVD: relations between consecutive stages' top singular vectors."""

    needs = Needs(labels=False, teacher=True)
    description = "KD-SVD: RBF relations between consecutive stages' top singular vectors, plus CE"
    uses = "stage taps after the stem (equal channels)"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 1.0,
                 k: int = 1, ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.weight, self.k, self.ce = weight, k, ce
        problem = self.incompatibility(student, teacher)
        if problem:
            raise ValueError(problem)
        s_taps, t_taps = paired_stages(student, teacher)
        self.needs = Needs(labels=False, teacher=True, student_taps=s_taps, teacher_taps=t_taps)

    @classmethod
    def incompatibility(cls, student: Network, teacher: Network | None) -> str | None:
        for s_tap, t_tap in zip(*paired_stages(student, teacher), strict=True):
            s_chs, t_chs = student.tap_info(s_tap)[0], teacher.tap_info(t_tap)[0]
            if s_chs != t_chs:
                return (f"kdsvd needs equal channels at every paired stage: {student.name} {s_tap} has {s_chs}, "
                        f"{teacher.name} {t_tap} has {t_chs}")
        return None

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        maps_s = [s.taps[name] for name in self.needs.student_taps]
        maps_t = [t.taps[name] for name in self.needs.teacher_taps]
        terms = {"kdsvd": self.weight * kdsvd_loss(maps_s, maps_t, self.k)}
        return {**terms, **ce_term(batch, s.logits, self.ce)}
