"""``bench overhead``: the harness's epoch (train + evaluate + checkpoint + metrics line) for KD against a
minimal hand-written PyTorch loop doing the same training and evaluation, same model, data and seed."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdbench.bench.common import device_name


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
    print(f"device: {device_name(torch.device('cpu'))}; KD, kdb_cnn_base -> {student}, digits, batch 64, "
          f"{repeats} alternating epochs each")
    print(f"harness epoch (train + eval + checkpoint + metrics): median {h * 1000:.1f} ms")
    print(f"hand-written loop (train + eval):                    median {m * 1000:.1f} ms")
    print(f"ratio harness / hand-written: {h / m:.3f}")
