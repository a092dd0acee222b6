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
STUDENTS = ("kdb_cnn_nano", "kdb_cnn_small")


def harness_epochs(seed: int, folder: Path, student_name: str = "kdb_cnn_nano", epochs: int = 1) -> float:
    """Seconds of ``epochs`` epochs through the harness's loop (``fit``: train, evaluate, checkpoint and metrics
    line after every epoch)."""
    from kdbench.engine import TrainState, fit

    splits, regime, student, teacher, method = _digits_kd(seed, student_name)
    ts = TrainState(student=student, teacher=teacher, method=method, train=splits.train, regime=regime,
                    test=splits.test, recipe={**RECIPE, "epochs": epochs}, eval_batch_size=512, seed=seed,
                    device=torch.device("cpu"), run_dir=folder, log=lambda m: None)
    began = time.perf_counter()
    fit(ts)
    return time.perf_counter() - began


def hand_epochs(seed: int, student_name: str = "kdb_cnn_nano", epochs: int = 1) -> float:
    """Seconds of the same epochs written by hand: shuffled batches, KD loss, SGD, then top-1 on the test set."""
    from kdbench.methods.kd import kd_loss

    splits, _, student, teacher, _ = _digits_kd(seed, student_name)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x_all, y_all = splits.train.x, splits.train.y
    began = time.perf_counter()
    for epoch in range(epochs):
        student.train()
        order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
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


def measure_overhead(student: str, repeats: int, epochs: int) -> dict[str, float]:
    """Interleaved harness/hand-written measurements (after one warm-up of each), the order alternating every
    repetition (AB BA AB ...) so that a change of machine load hits both sides alike; the ratio of each pair."""
    with tempfile.TemporaryDirectory() as folder:
        harness_epochs(0, Path(folder), student, 1)
    hand_epochs(0, student, 1)
    harness, hand = [], []
    for i in range(repeats):
        runs = [lambda i=i: _harness_fresh(i, student, epochs), lambda i=i: hand_epochs(i, student, epochs)]
        first, second = runs if i % 2 == 0 else runs[::-1]
        a, b = first(), second()
        h, m = (a, b) if i % 2 == 0 else (b, a)
        harness.append(h)
        hand.append(m)
    ratios = [h / m for h, m in zip(harness, hand, strict=True)]
    return {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "harness_s_median": statistics.median(harness), "hand_s_median": statistics.median(hand),
            "repeats": repeats, "epochs": epochs}


def _harness_fresh(seed: int, student: str, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as folder:  # a fresh run folder: no checkpoint to resume from
        return harness_epochs(seed, Path(folder), student, epochs)


def bench_overhead(repeats: int = 9, students: tuple[str, ...] = STUDENTS, epochs: int = 3) -> dict[str, dict]:
    """Print, per student, the harness / hand-written ratio of interleaved repetitions (median, min, max)."""
    torch.set_num_threads(1)
    results = {student: measure_overhead(student, repeats, epochs) for student in students}
    print(f"device: {device_name(torch.device('cpu'))}; KD from kdb_cnn_base, digits, batch 64, {epochs} epoch(s) "
          f"per measurement, {repeats} interleaved pairs (AB BA ...) per student")
    print("harness = train + evaluate + checkpoint + metrics line every epoch; hand-written = train + evaluate")
    for student, r in results.items():
        print(f"{student:14} harness {r['harness_s_median'] * 1000:7.1f} ms  hand {r['hand_s_median'] * 1000:7.1f} ms"
              f"  ratio median {r['ratio_median']:.3f} (min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f})")
    return results
