"""Measurements of a trained run: inference latency of the method's full predict path against the student's
plain forward (batch 1 and batch B, after warm-up, median of repeats, synchronised on GPU), FLOPs per image
(``torch.utils.flop_counter``, so a sampler's work is counted) and peak memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from kdbench.models import Network, Outputs

Predict = Callable[[torch.Tensor, Outputs], torch.Tensor]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 2, repeats: int = 10,
              budget_s: float = 2.0, min_repeats: int = 3) -> float:
    """Median wall seconds of ``fn()`` after ``warmup`` calls: at least ``min_repeats`` timed calls, then more
    (up to ``repeats``) while the time spent is under ``budget_s``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (len(times) < min_repeats or spent < budget_s):
        began = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - began)
        spent += times[-1]
    return statistics.median(times)


@torch.no_grad()
def flops_per_image(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> int:
    """FLOPs of ``fn(x)`` divided by the batch size, counted by ``torch.utils.flop_counter``."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn(x)
    return int(counter.get_total_flops() // max(1, x.shape[0]))


@torch.no_grad()
def inference_cost(student: Network, predict: Predict, example: torch.Tensor,
                   batch_sizes: tuple[int, ...] = (1,)) -> dict[str, Any]:
    """ms/img of ``predict(x, student(x))`` and of ``student(x)`` alone at each batch size, their ratio, FLOPs."""
    student.eval()
    device = example.device
    out: dict[str, Any] = {}
    for size in batch_sizes:
        x = example[:size]
        n = x.shape[0]
        # batch 1: 2 warm-ups and >= 5 timed calls; a large batch: 1 warm-up and >= 1 timed call (2 s budget)
        settings = dict(warmup=2, min_repeats=5) if n == 1 else dict(warmup=1, min_repeats=1)
        full = time_call(lambda x=x: predict(x, student(x)), device, **settings)
        plain = time_call(lambda x=x: student(x).logits, device, **settings)
        out[f"predict_ms_per_img_b{size}"] = 1000 * full / n
        out[f"student_ms_per_img_b{size}"] = 1000 * plain / n
        out[f"predict_vs_student_b{size}"] = full / plain if plain > 0 else None
    x1 = example[:1]
    out["predict_flops_per_img"] = flops_per_image(lambda x: predict(x, student(x)), x1)
    out["student_flops_per_img"] = flops_per_image(lambda x: student(x).logits, x1)
    return out


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``, else this process's peak resident set size, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)
