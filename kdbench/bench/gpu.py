"""``bench gpu``: what one GPU gives kdbench, as ratios measured in one process (under 5 minutes on one GPU).

1. The harness's training loop (``fit`` on a :class:`~kdbench.engine.TrainState`, vanilla CE, synthetic in-memory
   data on the device) against a bare hand-written loop doing the same steps (same model, batches, optimizer,
   bf16 autocast and channels_last): images/s of both (per-epoch ``train_seconds`` of the harness's metrics
   history against CUDA-event timed epochs of the bare loop), for ResNet-18 at 224 px, batch 256, and the CIFAR
   zoo's resnet8x4 at 32 px, batch 64.
2. ``torch.compile`` of the bare loop's model against the same loop eager; the compile time separately.
3. GenDD's head training step: achieved TFLOP/s against a matmul of the same shapes (:func:`~kdbench.bench.gendd.
   head_step`).
4. GenDD's sampler (64 and 100 steps, CFG 2, 5 samples) in ms/img at batch 1 and 256 against the student's forward
   at the same batch (:func:`~kdbench.bench.gendd.predict_costs`).
5. Peak memory of each part.

``--smoke`` runs every one of these functions at tiny sizes (32 px, batch 4, two steps per epoch, a 64-wide head,
two and three sampling steps), and compiles with the ``aot_eager`` backend (dynamo and AOT autograd without
inductor's code generation, which alone costs about a minute on a 2-core CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdbench.bench.common import device as pick_device
from kdbench.bench.gendd import head_step, predict_costs
from kdbench.bench.overhead import RECIPE
from kdbench.engine import Precision
from kdbench.measure import peak_memory_mb

SCHEMA = "kdbench.bench.gpu/1"


@dataclass(frozen=True)
class Workload:
    """One harness-vs-bare comparison: a model at an input size and batch, ``steps`` training steps per epoch,
    one warm-up epoch then ``epochs`` timed epochs; ``compile``: also time the bare loop under ``torch.compile``."""

    model: str
    img_size: int
    batch: int
    num_classes: int
    steps: int
    epochs: int
    compile: bool = True


@dataclass(frozen=True)
class Sizes:
    """Everything ``bench gpu`` measures, by size: the full run and ``--smoke`` differ only here."""

    workloads: tuple[Workload, ...]
    compile_backend: str
    student: str
    teacher: str
    sampler_img_size: int
    sampler_steps: tuple[int, ...]
    sampler_batches: tuple[int, ...]
    samples: int
    cfg: float
    head_batch: int
    head_mul: int
    head_width: int
    head_depth: int


FULL = Sizes(workloads=(Workload("resnet18", 224, 256, 1000, steps=10, epochs=3),
                        Workload("resnet8x4_cifar", 32, 64, 100, steps=50, epochs=3)),
             compile_backend="inductor", student="resnet18", teacher="resnet34", sampler_img_size=224,
             sampler_steps=(64, 100), sampler_batches=(1, 256), samples=5, cfg=2.0,
             head_batch=256, head_mul=10, head_width=1024, head_depth=3)
SMOKE = Sizes(workloads=(Workload("resnet18", 32, 4, 10, steps=2, epochs=1),
                         Workload("resnet8x4_cifar", 32, 4, 10, steps=2, epochs=1)),
              compile_backend="aot_eager", student="resnet18", teacher="resnet34", sampler_img_size=32,
              sampler_steps=(2, 3), sampler_batches=(1, 4), samples=5, cfg=2.0,
              head_batch=4, head_mul=2, head_width=64, head_depth=1)

PRECISION = Precision(amp=True, channels_last=True)  # bf16 autocast + channels_last: kdbench's GPU default


def elapsed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn()`` takes: between two CUDA events on a GPU (after a synchronize), wall clock elsewhere."""
    if device.type != "cuda":
        began = time.perf_counter()
        fn()
        return time.perf_counter() - began
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def synthetic_data(work: Workload, device: torch.device, seed: int = 0) -> Any:
    """``steps x batch`` SYNTHETIC float images and labels, already on ``device`` (a TensorData: the harness's
    in-memory path, no augmentation)."""
    from kdbench.data import TensorData

    gen = torch.Generator(device=device).manual_seed(seed)
    n = work.steps * work.batch
    x = torch.randn(n, 3, work.img_size, work.img_size, generator=gen, device=device)
    return TensorData(x, torch.randint(0, work.num_classes, (n,), generator=gen, device=device))


def _network(work: Workload, device: torch.device) -> Any:
    from kdbench.models import create_network

    torch.manual_seed(0)
    return PRECISION.model(create_network(work.model, num_classes=work.num_classes, in_chans=3).to(device))


def _recipe(work: Workload) -> dict[str, Any]:
    # lr 0.01: random labels must not diverge in a few dozen steps (the harness would stop the run)
    return {**RECIPE, "epochs": 1 + work.epochs, "batch_size": work.batch, "lr": 0.01}


def harness_epochs(work: Workload, data: Any, device: torch.device) -> list[float]:
    """``train_seconds`` of each timed epoch of ``fit`` (vanilla CE; its warm-up epoch dropped)."""
    from kdbench.data import RegimeData, TensorData
    from kdbench.engine import TrainState, fit
    from kdbench.method import discover_methods

    net = _network(work, device)
    method = discover_methods().get("vanilla")(net, None, num_classes=work.num_classes).to(device)
    counts = torch.bincount(data.y.cpu(), minlength=work.num_classes).tolist()
    regime = RegimeData(np.arange(len(data)), True, counts)
    test = TensorData(data.x[:work.batch], data.y[:work.batch])
    with tempfile.TemporaryDirectory() as folder:
        ts = TrainState(student=net, teacher=None, method=method, train=data, regime=regime, test=test,
                        recipe=_recipe(work), eval_batch_size=work.batch, seed=0, device=device,
                        run_dir=Path(folder), log=lambda message: None, precision=PRECISION)
        outcome = fit(ts)
    if outcome.state != "done":
        raise RuntimeError(f"the harness's run of {work.model} ended {outcome.state}: {outcome.reason}")
    return [line["train_seconds"] for line in outcome.history[1:]]


def bare_epochs(work: Workload, data: Any, device: torch.device,
                backend: str | None = None) -> tuple[list[float], float]:
    """The same epochs written by hand (shuffled batches, channels_last, bf16 autocast, CE, SGD with the
    harness's settings), the model compiled with ``backend`` when given: seconds of each timed epoch, and of
    the first (warm-up; with ``backend`` it includes compiling)."""
    model = _network(work, device).model  # the bare timm module, without kdbench's Network wrapper
    recipe = _recipe(work)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                                weight_decay=recipe["weight_decay"])
    step_model = torch.compile(model, backend=backend) if backend else model
    generator = torch.Generator().manual_seed(0)
    model.train()

    def epoch() -> None:
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(order), work.batch):
            idx = order[start:start + work.batch]
            x, y = PRECISION.input(data.x[idx]), data.y[idx]
            with PRECISION.autocast(device):
                loss = F.cross_entropy(step_model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    first = elapsed(epoch, device)
    return [elapsed(epoch, device) for _ in range(work.epochs)], first


def compare_loops(work: Workload, device: torch.device, backend: str | None) -> dict[str, Any]:
    """Harness vs bare loop on the same synthetic data; with ``backend``, the bare loop compiled vs eager."""
    data = synthetic_data(work, device)
    n = len(data)
    _reset_peak(device)
    harness = statistics.median(harness_epochs(work, data, device))
    bare_times, bare_first = bare_epochs(work, data, device)
    bare = statistics.median(bare_times)
    out: dict[str, Any] = {
        **dataclasses.asdict(work), "method": "vanilla", "amp_bf16": PRECISION.amp,
        "channels_last": PRECISION.channels_last, "images_per_epoch": n,
        "harness_epoch_s": harness, "bare_epoch_s": bare, "bare_first_epoch_s": bare_first,
        "harness_img_s": n / harness, "bare_img_s": n / bare, "harness_vs_bare": bare / harness,
        "peak_memory_mb": peak_memory_mb(device)}
    if backend and work.compile:
        _reset_peak(device)
        compiled_times, compiled_first = bare_epochs(work, data, device, backend)
        compiled = statistics.median(compiled_times)
        out["torch_compile"] = {
            "backend": backend, "first_epoch_s": compiled_first, "compile_s": compiled_first - compiled,
            "compiled_epoch_s": compiled, "compiled_img_s": n / compiled, "eager_img_s": n / bare,
            "compiled_vs_eager": bare / compiled, "peak_memory_mb": peak_memory_mb(device)}
        torch._dynamo.reset()
    return out


def gendd_networks(sizes: Sizes, device: torch.device) -> tuple[Any, Any]:
    """The student and teacher networks as the runner prepares them (on the device, channels_last, eval)."""
    from kdbench.models import create_network

    torch.manual_seed(0)
    return tuple(PRECISION.model(create_network(name, num_classes=1000, in_chans=3).to(device)).eval()
                 for name in (sizes.student, sizes.teacher))


def gendd_head(sizes: Sizes, s_net: Any, t_net: Any, device: torch.device) -> dict[str, Any]:
    """GenDD's head training step vs a matmul of the same shapes, at the networks' feature dimensions."""
    _reset_peak(device)
    step = head_step(sizes.head_batch, t_net.feature_dim, s_net.feature_dim, sizes.head_mul, sizes.head_width,
                     sizes.head_depth, device)
    return {"batch": sizes.head_batch, "mul": sizes.head_mul, "width": sizes.head_width, "depth": sizes.head_depth,
            "teacher_dim": t_net.feature_dim, "student_dim": s_net.feature_dim, "precision": "fp32 (no TF32)",
            **step, "peak_memory_mb": peak_memory_mb(device)}


def gendd_sampler(sizes: Sizes, s_net: Any, t_net: Any, device: torch.device) -> dict[str, Any]:
    """GenDD's sampler (final predict path) vs the student's forward at each batch size, for each step count."""
    _reset_peak(device)
    example = torch.randn(max(sizes.sampler_batches), 3, sizes.sampler_img_size, sizes.sampler_img_size,
                          device=device)
    runs = predict_costs(s_net, t_net, sizes.sampler_steps, sizes.samples, sizes.head_width, sizes.head_depth,
                         example, sizes.sampler_batches, sizes.cfg)
    return {"student": sizes.student, "teacher": sizes.teacher, "img_size": sizes.sampler_img_size,
            "batches": list(sizes.sampler_batches), "width": sizes.head_width, "depth": sizes.head_depth,
            "tokens": t_net.feature_dim // 64, "sampler": "ddpm", "student_precision": "fp32 (as the record)",
            "runs": runs, "peak_memory_mb": peak_memory_mb(device)}


def _timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    began = time.perf_counter()
    part = fn()
    return {**part, "seconds": time.perf_counter() - began}


def run_gpu_bench(sizes: Sizes, device: torch.device, compile_models: bool = True,
                  mode: str = "full") -> dict[str, Any]:
    """Every measurement of ``bench gpu`` at ``sizes`` on ``device``, as one JSON-ready dict (each part with the
    wall seconds it took)."""
    from kdbench.envinfo import environment

    began = time.perf_counter()
    backend = sizes.compile_backend if compile_models else None
    loops = [_timed(lambda work=work: compare_loops(work, device, backend)) for work in sizes.workloads]
    s_net, t_net = gendd_networks(sizes, device)
    head = _timed(lambda: gendd_head(sizes, s_net, t_net, device))
    sampler = _timed(lambda: gendd_sampler(sizes, s_net, t_net, device))
    memory = ("torch.cuda.max_memory_allocated, reset before each part" if device.type == "cuda" else
              "CPU: the process's peak resident set size (ru_maxrss) so far, not per part")
    return {"schema": SCHEMA, "mode": mode, "environment": environment(device), "memory": memory,
            "sizes": dataclasses.asdict(sizes), "loops": loops, "gendd_head": head, "gendd_sampler": sampler,
            "seconds": time.perf_counter() - began}


def _flop_rate(tflops: float) -> str:
    return f"{tflops:.1f} TFLOP/s" if tflops >= 1 else f"{tflops * 1000:.2f} GFLOP/s"


def ratio_rows(result: dict[str, Any]) -> list[list[str]]:
    """The human table: what was measured, against what, the ratio, peak memory."""
    rows = []
    for loop in result["loops"]:
        what = f"{loop['model']} {loop['img_size']}px b{loop['batch']}"
        rows.append([f"harness / bare loop, {what}", f"{loop['harness_img_s']:,.0f} img/s",
                     f"{loop['bare_img_s']:,.0f} img/s", f"{loop['harness_vs_bare']:.3f}",
                     f"{loop['peak_memory_mb']:,.0f}"])
        if "torch_compile" in loop:
            c = loop["torch_compile"]
            rows.append([f"compiled / eager bare, {what}", f"{c['compiled_img_s']:,.0f} img/s",
                         f"{c['eager_img_s']:,.0f} img/s",
                         f"{c['compiled_vs_eager']:.3f} (compile {c['compile_s']:.1f} s, {c['backend']})",
                         f"{c['peak_memory_mb']:,.0f}"])
    head = result["gendd_head"]
    rows.append([f"GenDD head step / matmul, {head['rows']} rows x {head['width']}",
                 _flop_rate(head["head_tflops"]), _flop_rate(head["matmul_tflops"]),
                 f"{head['head_vs_matmul']:.3f}", f"{head['peak_memory_mb']:,.0f}"])
    sampler = result["gendd_sampler"]
    for run in sampler["runs"]:
        for b in sampler["batches"]:
            rows.append([f"GenDD predict / student, K={run['steps']} x{run['samples']} cfg {run['cfg']:g}, b{b}",
                         f"{run[f'predict_ms_per_img_b{b}']:.3f} ms/img",
                         f"{run[f'student_ms_per_img_b{b}']:.4f} ms/img",
                         f"{run[f'predict_vs_student_b{b}']:,.1f}", f"{sampler['peak_memory_mb']:,.0f}"])
    return rows


def render(result: dict[str, Any]) -> str:
    """The human-readable summary of a ``bench gpu`` result."""
    from tabulate import tabulate

    env = result["environment"]
    commit = (env.get("git_commit") or "unknown")[:12] + (" (dirty)" if env.get("git_dirty") else "")
    head = (f"bench gpu ({result['mode']}): {env['device_name']}; torch {env['torch']}, CUDA {env['cuda']}; "
            f"commit {commit}; {result['seconds']:.0f} s")
    table = tabulate(ratio_rows(result), headers=["measured", "value", "against", "ratio", "peak MiB"],
                     disable_numparse=True)
    notes = ("ratios: harness / bare and compiled / eager are throughputs (1 = the same speed, below 1 = slower); "
             "head / matmul is FLOP/s;\npredict / student is time per image at the same batch. Peak memory: "
             + result["memory"] + ".")
    return f"{head}\n{table}\n{notes}"


def numbers(tree: Any, path: str = "") -> list[tuple[str, float]]:
    """Every number in a result (booleans excluded), with its key path: what the tests check is finite."""
    if isinstance(tree, dict):
        return [item for key, value in tree.items() for item in numbers(value, f"{path}.{key}")]
    if isinstance(tree, list | tuple):
        return [item for i, value in enumerate(tree) for item in numbers(value, f"{path}[{i}]")]
    if isinstance(tree, int | float) and not isinstance(tree, bool):
        return [(path, float(tree))]
    return []


def bench_gpu(smoke: bool = False, json_path: str | None = None, compile_models: bool = True) -> dict[str, Any]:
    """``python -m kdbench bench gpu [--smoke] [--json PATH] [--no-compile]``: run, print, optionally write."""
    device = pick_device()
    result = run_gpu_bench(SMOKE if smoke else FULL, device, compile_models, "smoke" if smoke else "full")
    bad = [path for path, value in numbers(result) if not math.isfinite(value)]
    print(render(result))
    if bad:
        print(f"warning: non-finite values at {', '.join(bad)}")
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
        print(f"written: {json_path}")
    return result
