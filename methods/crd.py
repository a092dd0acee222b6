"""Tian, Krishnan & Isola, "Contrastive Representation Distillation" (ICLR 2020), as RepDistiller/mdistiller run it.

Student and teacher pooled features are embedded (Linear -> L2-normalised, 128-d). A memory bank holds one
momentum-averaged embedding per training item for each network. For item i with negatives n_1..n_K (drawn by
the data path from other classes: RepDistiller's "exact" mode), the scores are ``exp(m_j . v / T) / Z`` with the
other network's memory rows m_j, ``Z`` fixed from the first batch (mean score x N). NCE loss (noise 1/N):
``-[log(P_pos / (P_pos + K/N)) + sum_neg log((K/N) / (P_neg + K/N))]`` per item, batch mean, for both
directions (teacher embedding vs student memory trains the teacher embed; student embedding vs teacher memory
trains the student). Afterwards the items' memory rows become ``normalize(momentum * m + (1 - momentum) * v)``.
``loss = ce * CE + weight * (L_s + L_t)``. Defaults: RepDistiller (K 16384, T 0.07, momentum 0.5, weight 0.8).
Needs no labels (negatives are then drawn from all training items).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import distributed
from kdbench.method import Batch, BindsData, Method, Needs, RecordExtras, ce_term, register_method
from kdbench.methods.feature_utils import NormalizedEmbed
from kdbench.models import Network, Outputs


def nce_loss(scores: torch.Tensor, num_data: int, eps: float = 1e-7) -> torch.Tensor:
    """NCE loss of normalised scores (B x (1 + K), the positive first) against noise probability 1/N."""
    k = scores.shape[1] - 1
    noise = k / num_data
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    negative = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


class ContrastMemory(nn.Module):
    """Two memory banks (student, teacher) of L2-normalised embeddings, one row per training item, and the
    normalisation constants Z (set from the first batch, kept in the checkpoint)."""

    def __init__(self, dim: int, num_data: int, temperature: float, momentum: float) -> None:
        super().__init__()
        self.num_data, self.temperature, self.momentum = num_data, temperature, momentum
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(num_data, dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("memory_t", torch.rand(num_data, dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("z", torch.full((2,), -1.0))

    def scores(self, v_s: torch.Tensor, v_t: torch.Tensor,
               contrast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(student scores against teacher memory, teacher scores against student memory), each B x (1 + K)."""
        out_s = self._exp_scores(self.memory_t, v_s, contrast)
        out_t = self._exp_scores(self.memory_s, v_t, contrast)
        if self.z[0] < 0:  # the first batch fixes the normalisation constants (averaged over ranks)
            first = torch.stack([out_s.detach().mean(), out_t.detach().mean()]).float() * self.num_data
            self.z.copy_(distributed.sum_across(first) / distributed.world_size())
        return out_s / self.z[0], out_t / self.z[1]

    def _exp_scores(self, memory: torch.Tensor, v: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        rows = memory[contrast].detach().to(v.dtype)  # B x (1 + K) x d
        return torch.exp(torch.bmm(rows, v.unsqueeze(2)).squeeze(2) / self.temperature)

    @torch.no_grad()
    def update(self, index: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        """Momentum update of the items' rows, re-normalised (every rank applies every rank's rows)."""
        index = distributed.gather_rows(index)
        for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            v = distributed.gather_rows(v.detach().float())
            mixed = memory[index] * self.momentum + v * (1 - self.momentum)
            memory.index_copy_(0, index, F.normalize(mixed, dim=1))


@register_method("crd")
class CRD(BindsData, RecordExtras, Method):
    """Contrastive representation distillation with a momentum memory bank of negatives."""

    needs = Needs(labels=False, teacher=True, negatives=16384)
    description = "CRD: NCE between student and teacher embeddings against 16384 memory-bank negatives, plus CE"
    uses = "pooled features, item indices, negatives from the data path"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 0.8,
                 ce: float = 1.0, feat_dim: int = 128, negatives: int = 16384, nce_t: float = 0.07,
                 momentum: float = 0.5) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.weight, self.ce = weight, ce
        self.feat_dim, self.nce_t, self.momentum = feat_dim, nce_t, momentum
        self.embed_s = NormalizedEmbed(student.feature_dim, feat_dim)
        self.embed_t = NormalizedEmbed(teacher.feature_dim, feat_dim)
        self.memory: ContrastMemory | None = None
        self.needs = Needs(labels=False, teacher=True, negatives=negatives)

    def bind_data(self, train_size: int) -> None:
        self.memory = ContrastMemory(self.feat_dim, train_size, self.nce_t, self.momentum)

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        if self.memory is None or batch.negatives is None:
            raise RuntimeError("crd needs bind_data(train_size) before training and negatives in every batch")
        v_s, v_t = self.embed_s(s.feature), self.embed_t(t.feature.detach())
        contrast = torch.cat([batch.index[:, None], batch.negatives], dim=1)
        out_s, out_t = self.memory.scores(v_s, v_t, contrast)
        n = self.memory.num_data
        loss = nce_loss(out_s, n) + nce_loss(out_t, n)
        self.memory.update(batch.index, v_s, v_t)
        return {"crd": self.weight * loss, **ce_term(batch, s.logits, self.ce)}

    def extras(self) -> dict[str, dict]:
        rows = 0 if self.memory is None else 2 * self.memory.memory_s.numel()
        return {"cost": {"memory_bank_floats": rows}}
