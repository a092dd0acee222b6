"""Shared pieces of the logit methods: logit standardization (Sun et al., CVPR 2024)."""

from __future__ import annotations

import torch


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score each row of logits (``(z - mean) / (std + eps)``, std with Bessel's correction as torch's default),
    the "logit standardization" pre-processing; the temperature then acts as a base temperature."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def linear_warmup(epoch: int, warmup_epochs: int) -> float:
    """mdistiller's loss warm-up ``min(epoch / warmup, 1)`` with its 1-based epochs (``epoch`` here is 0-based)."""
    return 1.0 if warmup_epochs <= 0 else min((epoch + 1) / warmup_epochs, 1.0)
