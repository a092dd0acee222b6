"""``bench gendd``: GenDD's head training step at the paper's shapes with its achieved FLOP/s next to a plain
matmul of comparable size, and the predict path's ms/img against the student's forward for several step counts.
``bench gpu`` calls the same two measurements (:func:`head_step`, :func:`predict_costs`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from kdbench.bench.common import device, device_name
from kdbench.measure import inference_cost, time_call
from kdbench.models import Network


def _flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def head_step(batch: int, teacher_dim: int, student_dim: int, mul: int, width: int, depth: int,
              dev: torch.device) -> dict[str, float]:
    """GenDD's head training step (diffusion loss, backward, AdamW) in strict fp32 (no autocast, no TF32, as the
    method trains it) on ``batch x tokens x mul`` rows, and a strict-fp32 matmul ``(rows x width) @ (width x
    width)``: the step's ms and GFLOP (``torch.utils.flop_counter``), both FLOP/s (in TFLOP/s) and their ratio."""
    from kdbench.methods.gendd.diffusion import GaussianDiffusion
    from kdbench.methods.gendd.head import DiffusionHead
    from kdbench.methods.gendd.numerics import strict_fp32

    tokens = teacher_dim // 64
    rows = batch * tokens * mul
    head = DiffusionHead(64, student_dim, tokens, width, depth).to(dev)
    diffusion = GaussianDiffusion()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4, weight_decay=0.0)
    x0 = torch.randn(rows, 64, device=dev)
    cond = torch.randn(rows, student_dim, device=dev)
    idx = torch.arange(tokens, device=dev).repeat(batch * mul)
    a = torch.randn(rows, width, device=dev)
    b = torch.randn(width, width, device=dev)

    def step() -> None:
        t = torch.randint(0, 1000, (rows,), device=dev)
        loss = diffusion.training_losses(lambda x, tt: head(x, tt, cond, idx), x0, t)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with strict_fp32(dev):
        step_flops = _flops(step)
        step_s = time_call(step, dev, warmup=1, repeats=5, budget_s=10.0, min_repeats=2)
        matmul_s = time_call(lambda: a @ b, dev, warmup=2, repeats=20, budget_s=2.0, min_repeats=3)
    head_rate, matmul_rate = step_flops / step_s, 2 * rows * width * width / matmul_s
    return {"rows": rows, "tokens": tokens, "step_ms": step_s * 1000, "step_gflop": step_flops / 1e9,
            "head_tflops": head_rate / 1e12, "matmul_tflops": matmul_rate / 1e12,
            "head_vs_matmul": head_rate / matmul_rate}


def predict_costs(s_net: Network, t_net: Network, steps: Sequence[int], samples: int, width: int, depth: int,
                  example: torch.Tensor, batch_sizes: Sequence[int], cfg: float = 2.0) -> list[dict[str, Any]]:
    """For each step count K: GenDD's final predict path (ancestral DDPM over K respaced steps, ``samples``
    samples averaged, CFG ``cfg``, an untrained head of ``width`` x ``depth``) timed against the student's forward
    by :func:`kdbench.measure.inference_cost` (the record's measurement) at each batch size in ``batch_sizes``
    (the first ``n`` images of ``example``): ms/img of both, their ratio, FLOPs per image."""
    from kdbench.methods.gendd.method import GenDD

    out = []
    for k in steps:
        method = GenDD(s_net, t_net, num_classes=t_net.num_classes, width=width, depth=depth, sample_steps=k,
                       num_samples=samples, cfg=cfg, warm_start_epochs=0).to(example.device).eval()
        cost = inference_cost(s_net, lambda x, out, m=method: m.predict(x, out, final=True), example,
                              batch_sizes=tuple(batch_sizes))
        out.append({"steps": k, "samples": samples, "cfg": cfg, **cost})
    return out


def bench_gendd(batch: int, teacher_dim: int, student_dim: int, mul: int, width: int, depth: int,
                student: str, teacher: str, img_size: int, steps: Sequence[int], samples: int) -> None:
    """Head training step and matmul FLOP/s at the given shapes; predict ms/img vs the student for each K."""
    from kdbench.models import create_network

    dev = device()
    print(f"device: {device_name(dev)}; torch {torch.__version__}")
    step = head_step(batch, teacher_dim, student_dim, mul, width, depth, dev)
    print(f"head: width {width}, depth {depth}; rows per step = batch {batch} x tokens {step['tokens']} x mul {mul} "
          f"= {step['rows']}")
    print(f"training step: {step['step_ms']:.1f} ms, {step['step_gflop']:.1f} GFLOP, "
          f"{step['head_tflops'] * 1000:.1f} GFLOP/s")
    print(f"matmul ({step['rows']} x {width}) @ ({width} x {width}): {step['matmul_tflops'] * 1000:.1f} GFLOP/s")
    print(f"fraction of the matmul rate the head's training step reaches: {step['head_vs_matmul']:.2f}")

    s_net = create_network(student, num_classes=1000, in_chans=3).to(dev).eval()
    t_net = create_network(teacher, num_classes=1000, in_chans=3).to(dev).eval()
    x = torch.randn(1, 3, img_size, img_size, device=dev)
    costs = predict_costs(s_net, t_net, steps, samples, width, depth, x, (1,))
    print(f"\npredict at batch 1, {student} -> {teacher} features ({t_net.feature_dim}-d, "
          f"{t_net.feature_dim // 64} tokens), CFG 2, {samples} sample(s); student forward "
          f"{costs[0]['student_ms_per_img_b1']:.2f} ms")
    for cost in costs:
        print(f"K = {cost['steps']:>3}: {cost['predict_ms_per_img_b1']:9.1f} ms/img   "
              f"x student {cost['predict_vs_student_b1']:8.0f}")
