"""Vanilla training: cross-entropy on the labels only. Teachers train with it too."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.method import Batch, Method, Needs, register_method
from kdbench.models import Network, Outputs


@register_method("vanilla")
class Vanilla(Method):
    """Plain supervised training, ``loss = CE(z_s, y)``: the no-distillation baseline."""

    needs = Needs(labels=True, teacher=False)
    description = "cross-entropy on labels only (no teacher); the baseline and the teachers' recipe"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.label_smoothing = label_smoothing

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(s.logits, batch.y, label_smoothing=self.label_smoothing)}
