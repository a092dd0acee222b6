"""Speed checks, printed as ratios measured in one process (never asserted by tests).

``python -m kdbench bench overhead``: the harness's epoch (train + evaluate + checkpoint + metrics line) for KD
against a minimal hand-written PyTorch loop doing the same training and evaluation, same model, data and seed.
``python -m kdbench bench gendd``: GenDD's head training step at the paper's shapes with its achieved FLOP/s
next to a plain matmul of comparable size, and the predict path's ms/img against the student's forward for
K = 100, 64, 16, 4 sampling steps. ``python -m kdbench bench report``: aggregation time of 10,000 records.
``python -m kdbench bench input``: one augmented training epoch of batches (random crop + flip, on the device)
from the in-memory path against a DataLoader with worker processes and per-image torchvision transforms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from kdbench.measure import time_call


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_name(device: torch.device) -> str:
    from kdbench.envinfo import cpu_name

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------------------------- overhead


def _digits_kd(seed: int, student_name: str = "kdb_cnn_nano"):
    from kdbench.data import dataset_registry, regime_registry
    from kdbench.engine import seed_everything
    from kdbench.method import discover_methods
    from kdbench.models import create_network

    splits = dataset_registry.get("digits")().load()
    regime = regime_registry.get("balanced")().apply(splits.train.y.numpy(), 10)
    seed_everything(seed)
    student = create_network(student_name, num_classes=10, in_chans=1)
    teacher = create_network("kdb_cnn_base", num_classes=10, in_chans=1).eval().requires_grad_(False)
    method = discover_methods().get("kd")(student, teacher, num_classes=10)
    return splits, regime, student, teacher, method


RECIPE = {"epochs": 1, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False,
          "betas": [0.9, 0.999], "weight_decay": 5e-4, "schedule": "constant", "milestones": [], "lr_decay": 0.1,
          "warmup_epochs": 0, "min_lr": 0.0, "grad_clip": None, "diverge_above": 1e4}


def harness_epoch(seed: int, folder: Path, student_name: str = "kdb_cnn_nano") -> float:
    """Seconds of one epoch through the harness's loop (``fit``: train, evaluate, checkpoint, metrics line)."""
    from kdbench.engine import TrainState, fit

    splits, regime, student, teacher, method = _digits_kd(seed, student_name)
    ts = TrainState(student=student, teacher=teacher, method=method, train=splits.train, regime=regime,
                    test=splits.test, recipe=RECIPE, eval_batch_size=512, seed=seed, device=torch.device("cpu"),
                    run_dir=folder, log=lambda m: None)
    began = time.perf_counter()
    fit(ts)
    return time.perf_counter() - began


def hand_epoch(seed: int, student_name: str = "kdb_cnn_nano") -> float:
    """Seconds of the same epoch written by hand: shuffled batches, KD loss, SGD, then top-1 on the test set."""
    from methods.kd import kd_loss

    splits, _, student, teacher, _ = _digits_kd(seed, student_name)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x_all, y_all = splits.train.x, splits.train.y
    began = time.perf_counter()
    student.train()
    order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(order), 64):
        idx = order[start:start + 64]
        x, y = x_all[idx], y_all[idx]
        logits = student(x).logits
        with torch.no_grad():
            t_logits = teacher(x).logits
        loss = 0.9 * kd_loss(logits, t_logits, 4.0) + 0.1 * F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    student.eval()
    with torch.no_grad():
        for i in range(0, len(splits.test), 512):
            _ = int((student(splits.test.x[i:i + 512]).logits.argmax(1) == splits.test.y[i:i + 512]).sum())
    return time.perf_counter() - began


def bench_overhead(repeats: int = 7, student: str = "kdb_cnn_nano") -> None:
    """Alternate harness and hand-written epochs; print the median of each and their ratio."""
    torch.set_num_threads(1)
    harness, hand = [], []
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            harness.append(harness_epoch(i, Path(folder), student))
        hand.append(hand_epoch(i, student))
    h, m = statistics.median(harness), statistics.median(hand)
    print(f"device: {_device_name(torch.device('cpu'))}; KD, kdb_cnn_base -> {student}, digits, batch 64, "
          f"{repeats} alternating epochs each")
    print(f"harness epoch (train + eval + checkpoint + metrics): median {h * 1000:.1f} ms")
    print(f"hand-written loop (train + eval):                    median {m * 1000:.1f} ms")
    print(f"ratio harness / hand-written: {h / m:.3f}")


# --------------------------------------------------------------------------------------------- gendd


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

    device = _device()
    tokens = teacher_dim // 64
    rows = batch * tokens * mul
    print(f"device: {_device_name(device)}; torch {torch.__version__}")
    print(f"head: width {width}, depth {depth}; rows per step = batch {batch} x tokens {tokens} x mul {mul} = {rows}")
    head = DiffusionHead(64, student_dim, tokens, width, depth).to(device)
    diffusion = GaussianDiffusion()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4, weight_decay=0.0)
    x0 = torch.randn(rows, 64, device=device)
    cond = torch.randn(rows, student_dim, device=device)
    idx = torch.arange(tokens, device=device).repeat(batch * mul)

    def step() -> None:
        t = torch.randint(0, 1000, (rows,), device=device)
        loss = diffusion.training_losses(lambda x, tt: head(x, tt, cond, idx), x0, t)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_flops = _flops(step)
    step_s = time_call(step, device, warmup=1, repeats=5, budget_s=10.0, min_repeats=2)
    a = torch.randn(rows, width, device=device)
    b = torch.randn(width, width, device=device)
    matmul_s = time_call(lambda: a @ b, device, warmup=2, repeats=20, budget_s=2.0, min_repeats=3)
    matmul_rate = 2 * rows * width * width / matmul_s
    head_rate = step_flops / step_s
    print(f"training step: {step_s * 1000:.1f} ms, {step_flops / 1e9:.1f} GFLOP, {head_rate / 1e9:.1f} GFLOP/s")
    print(f"matmul ({rows} x {width}) @ ({width} x {width}): {matmul_rate / 1e9:.1f} GFLOP/s")
    print(f"fraction of the matmul rate the head's training step reaches: {head_rate / matmul_rate:.2f}")

    s_net = create_network(student, num_classes=1000, in_chans=3).to(device).eval()
    t_net = create_network(teacher, num_classes=1000, in_chans=3).to(device).eval()
    x = torch.randn(1, 3, img_size, img_size, device=device)
    with torch.no_grad():
        student_s = time_call(lambda: s_net(x).logits, device, warmup=2, repeats=10)
    print(f"\npredict at batch 1, {student} -> {teacher} features ({t_net.feature_dim}-d, "
          f"{t_net.feature_dim // 64} tokens), CFG 2, {samples} sample(s); student forward {student_s * 1000:.2f} ms")
    for k in steps:
        method = GenDD(s_net, t_net, num_classes=1000, width=width, depth=depth, sample_steps=k,
                       num_samples=samples, warm_start_epochs=0).to(device).eval()
        with torch.no_grad():
            predict_s = time_call(lambda m=method: m.predict(x, s_net(x), final=True), device, warmup=1, repeats=5,
                                  budget_s=5.0, min_repeats=1)
        print(f"K = {k:>3}: {predict_s * 1000:9.1f} ms/img   x student {predict_s / student_s:8.0f}")


# --------------------------------------------------------------------------------------------- report


def bench_report(records: int = 10_000) -> None:
    """Write ``records`` fabricated result.json files, then time reading and rendering them."""
    from kdbench import store
    from kdbench.report import load_records, render

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        began = time.perf_counter()
        for i in range(records):
            method = ("vanilla", "kd", "mse", "gendd")[i % 4]
            spec = {"role": "student", "method": method, "label": method, "student": "s", "teacher": "t",
                    "teacher_id": "T", "dataset": {"name": "digits"}, "regime": {"name": f"r{i % 5}"},
                    "seed": i // 20, "epochs": 30}
            store.atomic_write_json(root / "runs" / f"{i:06d}" / "result.json", {
                "schema": store.SCHEMA, "run_id": f"{i:06d}", "state": "done", "spec": spec,
                "metrics": {"top1_last": 90 + (i % 7), "top1_best": 91 + (i % 7), "top5_last": 99.0},
                "cost": {"predict_ms_per_img_b1": 0.1, "seconds_per_epoch": 0.2}})
        written = time.perf_counter() - began
        began = time.perf_counter()
        loaded = load_records(root)
        read = time.perf_counter() - began
        began = time.perf_counter()
        render(loaded)
        rendered = time.perf_counter() - began
    print(f"{records} FABRICATED records (written in {written:.1f} s): read {read:.2f} s, "
          f"aggregated and rendered {rendered:.2f} s, total {read + rendered:.2f} s")


# --------------------------------------------------------------------------------------------- input


def bench_input(dataset: str, root: str | None, batch_size: int, workers: int, repeats: int, threads: int) -> None:
    """Images/s of one training epoch of input batches (no model): device-resident tensors with on-device
    crop/flip vs a DataLoader with ``workers`` processes and per-image RandomCrop/flip transforms. The main
    process uses ``threads`` torch threads (kdbench's local runs use one)."""
    import numpy as np
    from torchvision import transforms as T

    from kdbench.data import dataset_registry, train_batches
    from kdbench.data.sources import Augment, TensorData

    device = _device()
    torch.set_num_threads(threads)
    params = {"root": root} if root else {}
    splits = dataset_registry.get(dataset)(**params).load()
    data = TensorData(splits.train.x.to(device), splits.train.y.to(device), augment=Augment(pad=4))
    indices = np.arange(len(data))

    def resident() -> None:
        for batch in train_batches(data, indices, batch_size, labeled=True, seed=0, epoch=0, device=device):
            batch.x.sum()
        if device.type == "cuda":
            torch.cuda.synchronize()

    class PerImage(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.x, self.y = splits.train.x, splits.train.y
            size = self.x.shape[-1]
            self.transform = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()])

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.transform(self.x[i]), self.y[i]

    loader = torch.utils.data.DataLoader(PerImage(), batch_size=batch_size, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    def dataloader() -> None:
        for x, _ in loader:
            x.to(device, non_blocking=True).sum()
        if device.type == "cuda":
            torch.cuda.synchronize()

    fast = time_call(resident, device, warmup=1, repeats=repeats, budget_s=0.0, min_repeats=repeats)
    slow = time_call(dataloader, device, warmup=1, repeats=repeats, budget_s=0.0, min_repeats=repeats)
    n = len(data)
    print(f"input pipeline, {dataset} ({n} training images, batch {batch_size}, crop pad 4 + flip) on "
          f"{_device_name(device)}")
    print(f"  device-resident tensors, on-device augmentation: {n / fast:12,.0f} img/s  ({fast:.3f} s/epoch)")
    print(f"  DataLoader, {workers} workers, per-image transforms: {n / slow:12,.0f} img/s  ({slow:.3f} s/epoch)")
    print(f"  ratio: {slow / fast:.1f}x faster (median of {repeats})")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kdbench bench overhead|gendd|report|input``."""
    parser = argparse.ArgumentParser(prog="python -m kdbench bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    overhead = sub.add_parser("overhead", help="harness epoch vs a hand-written loop (ratio)")
    overhead.add_argument("--repeats", type=int, default=7)
    overhead.add_argument("--student", default="kdb_cnn_nano", help="a kdb_* student (kdb_cnn_base: heavier steps)")
    gendd = sub.add_parser("gendd", help="GenDD head step FLOP/s vs matmul, predict ms/img vs the student")
    gendd.add_argument("--batch", type=int, default=64, help="images per step (CIFAR recipe: 64)")
    gendd.add_argument("--teacher-dim", type=int, default=256, help="teacher feature dim (resnet32x4: 256)")
    gendd.add_argument("--student-dim", type=int, default=256, help="student feature dim (resnet8x4: 256)")
    gendd.add_argument("--mul", type=int, default=30, help="row repetition (CIFAR: 30, ImageNet: 10)")
    gendd.add_argument("--width", type=int, default=1024)
    gendd.add_argument("--depth", type=int, default=3)
    gendd.add_argument("--student", default="resnet18")
    gendd.add_argument("--teacher", default="resnet34")
    gendd.add_argument("--img-size", type=int, default=224)
    gendd.add_argument("--steps", type=int, nargs="+", default=[100, 64, 16, 4])
    gendd.add_argument("--samples", type=int, default=5)
    report = sub.add_parser("report", help="time to aggregate N fabricated records")
    report.add_argument("--records", type=int, default=10_000)
    inp = sub.add_parser("input", help="device-resident augmented batches vs a DataLoader (img/s, ratio)")
    inp.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist (Debian package) or digits")
    inp.add_argument("--root", default=None)
    inp.add_argument("--batch", type=int, default=128)
    inp.add_argument("--workers", type=int, default=2)
    inp.add_argument("--repeats", type=int, default=3)
    inp.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    args = parser.parse_args(argv)
    if args.what == "input":
        bench_input(args.dataset, args.root, args.batch, args.workers, args.repeats, args.threads)
    elif args.what == "overhead":
        bench_overhead(args.repeats, args.student)
    elif args.what == "gendd":
        bench_gendd(args.batch, args.teacher_dim, args.student_dim, args.mul, args.width, args.depth, args.student,
                    args.teacher, args.img_size, args.steps, args.samples)
    else:
        bench_report(args.records)
    return 0
