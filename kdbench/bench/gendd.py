"""``bench gendd``: GenDD's head training step at the paper's shapes with its achieved FLOP/s next to a plain
matmul of comparable size, and the predict path's ms/img against the student's forward for several step counts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from kdbench.bench.common import device, device_name
from kdbench.measure import time_call


def _flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def bench_gendd(batch: int, teacher_dim: int, student_dim: int, mul: int, width: int, depth: int,
                student: str, teacher: str, img_size: int, steps: Sequence[int], samples: int) -> None:
    """Head training step and matmul FLOP/s at the given shapes; predict ms/img vs the student for each K."""
    from kdbench.models import create_network
    from methods.gendd.diffusion import GaussianDiffusion
    from methods.gendd.head import DiffusionHead
    from methods.gendd.method import GenDD

    dev = device()
    tokens = teacher_dim // 64
    rows = batch * tokens * mul
    print(f"device: {device_name(dev)}; torch {torch.__version__}")
    print(f"head: width {width}, depth {depth}; rows per step = batch {batch} x tokens {tokens} x mul {mul} = {rows}")
    head = DiffusionHead(64, student_dim, tokens, width, depth).to(dev)
    diffusion = GaussianDiffusion()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4, weight_decay=0.0)
    x0 = torch.randn(rows, 64, device=dev)
    cond = torch.randn(rows, student_dim, device=dev)
    idx = torch.arange(tokens, device=dev).repeat(batch * mul)

    def step() -> None:
        t = torch.randint(0, 1000, (rows,), device=dev)
        loss = diffusion.training_losses(lambda x, tt: head(x, tt, cond, idx), x0, t)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_flops = _flops(step)
    step_s = time_call(step, dev, warmup=1, repeats=5, budget_s=10.0, min_repeats=2)
    a = torch.randn(rows, width, device=dev)
    b = torch.randn(width, width, device=dev)
    matmul_s = time_call(lambda: a @ b, dev, warmup=2, repeats=20, budget_s=2.0, min_repeats=3)
    matmul_rate = 2 * rows * width * width / matmul_s
    head_rate = step_flops / step_s
    print(f"training step: {step_s * 1000:.1f} ms, {step_flops / 1e9:.1f} GFLOP, {head_rate / 1e9:.1f} GFLOP/s")
    print(f"matmul ({rows} x {width}) @ ({width} x {width}): {matmul_rate / 1e9:.1f} GFLOP/s")
    print(f"fraction of the matmul rate the head's training step reaches: {head_rate / matmul_rate:.2f}")

    s_net = create_network(student, num_classes=1000, in_chans=3).to(dev).eval()
    t_net = create_network(teacher, num_classes=1000, in_chans=3).to(dev).eval()
    x = torch.randn(1, 3, img_size, img_size, device=dev)
    with torch.no_grad():
        student_s = time_call(lambda: s_net(x).logits, dev, warmup=2, repeats=10)
    print(f"\npredict at batch 1, {student} -> {teacher} features ({t_net.feature_dim}-d, "
          f"{t_net.feature_dim // 64} tokens), CFG 2, {samples} sample(s); student forward {student_s * 1000:.2f} ms")
    for k in steps:
        method = GenDD(s_net, t_net, num_classes=1000, width=width, depth=depth, sample_steps=k,
                       num_samples=samples, warm_start_epochs=0).to(dev).eval()
        with torch.no_grad():
            predict_s = time_call(lambda m=method: m.predict(x, s_net(x), final=True), dev, warmup=1, repeats=5,
                                  budget_s=5.0, min_repeats=1)
        print(f"K = {k:>3}: {predict_s * 1000:9.1f} ms/img   x student {predict_s / student_s:8.0f}")
