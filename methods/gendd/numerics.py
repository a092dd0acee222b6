"""Strict fp32 for GenDD's head, loss and sampler, whatever precision the backbones run in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def strict_fp32(device: torch.device) -> Iterator[None]:
    """GenDD's head, diffusion loss and sampler run in strict fp32 whatever the run's precision, as the authors' code
    does everywhere: autocast off, and on CUDA no TF32 matmuls (10-bit mantissa). The sampler's first step divides
    the head's epsilon error by sqrt(alpha_bar(999)) ~ 5e-5, so bf16 rounding (about 3 significant digits) would
    become an error of tens per feature dimension. Callers cast their inputs to float32."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
