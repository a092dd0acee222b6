"""``bench overhead``: the harness's epoch (train + evaluate + checkpoint + metrics line) for KD against a
minimal hand-written PyTorch loop doing the same training and evaluation, same model, data and seed."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kdbench.bench.common import device_name


def _digits_kd(seed: int, student_name: str = "kdb_cnn_nano") -> tuple[Any, Any, Any, Any, Any]:
    """Digits, the balanced regime, a seeded student, the teacher kdb_cnn_base and KD: the overhead workload."""
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


def harness_epochs(seed: int, folder: Path, student_name: str = "kdb_cnn_nano", epochs: int = 1) -> Timing:
    """Wall and CPU seconds of ``epochs`` epochs through the harness's loop (``fit``: train, evaluate, checkpoint
    and metrics line after every epoch)."""
    from kdbench.engine import TrainState, fit

    splits, regime, student, teacher, method = _digits_kd(seed, student_name)
    ts = TrainState(student=student, teacher=teacher, method=method, train=splits.train, regime=regime,
                    test=splits.test, recipe={**RECIPE, "epochs": epochs}, eval_batch_size=512, seed=seed,
                    device=torch.device("cpu"), run_dir=folder, log=lambda m: None)
    with Timing() as timing:
        fit(ts)
    return timing


def hand_epochs(seed: int, student_name: str = "kdb_cnn_nano", epochs: int = 1) -> Timing:
    """Wall and CPU seconds of the same epochs written by hand: shuffled batches, KD loss, SGD, then top-1 on the
    test set."""

    splits, _, student, teacher, _ = _digits_kd(seed, student_name)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    with Timing() as timing:
        _hand_loop(student, teacher, optimizer, splits, seed, epochs)
    return timing


def _hand_loop(student: torch.nn.Module, teacher: torch.nn.Module, optimizer: torch.optim.Optimizer, splits: Any,
               seed: int, epochs: int) -> None:
    from kdbench.methods.kd import kd_loss

    x_all, y_all = splits.train.x, splits.train.y
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


class Timing:
    """Wall seconds and this process's CPU seconds of a ``with`` block. On a shared machine the CPU time is the
    steadier measure (other processes' load does not enter it); the wall time includes waits for the disk."""

    def __enter__(self) -> Timing:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


def measure_overhead(student: str, repeats: int, epochs: int) -> dict[str, float]:
    """Interleaved harness/hand-written measurements (after one warm-up of each), the order alternating every
    repetition (AB BA AB ...) so that a change of machine load hits both sides alike; the ratio of each pair, in
    wall and in CPU time."""
    _harness_fresh(0, student, 1)
    hand_epochs(0, student, 1)
    pairs: list[tuple[Timing, Timing]] = []
    for i in range(repeats):
        if i % 2 == 0:
            harness = _harness_fresh(i, student, epochs)
            hand = hand_epochs(i, student, epochs)
        else:
            hand = hand_epochs(i, student, epochs)
            harness = _harness_fresh(i, student, epochs)
        pairs.append((harness, hand))
    out: dict[str, float] = {"repeats": repeats, "epochs": epochs}
    for clock in ("wall", "cpu"):
        ratios = [getattr(h, clock) / getattr(m, clock) for h, m in pairs]
        out.update({f"{clock}_ratio_median": statistics.median(ratios), f"{clock}_ratio_min": min(ratios),
                    f"{clock}_ratio_max": max(ratios),
                    f"{clock}_harness_s": statistics.median(getattr(h, clock) for h, _ in pairs),
                    f"{clock}_hand_s": statistics.median(getattr(m, clock) for _, m in pairs)})
    return out


def _harness_fresh(seed: int, student: str, epochs: int) -> Timing:
    with tempfile.TemporaryDirectory() as folder:  # a fresh run folder: no checkpoint to resume from
        return harness_epochs(seed, Path(folder), student, epochs)


def bench_overhead(repeats: int = 15, students: tuple[str, ...] = STUDENTS, epochs: int = 3) -> dict[str, dict]:
    """Print, per student, the harness / hand-written ratio of interleaved repetitions (median, min, max), in
    this process's CPU time and in wall time."""
    torch.set_num_threads(1)
    results = {student: measure_overhead(student, repeats, epochs) for student in students}
    print(f"device: {device_name(torch.device('cpu'))}; KD from kdb_cnn_base, digits, batch 64, {epochs} epoch(s) "
          f"per measurement, {repeats} interleaved pairs (AB BA ...) per student")
    print("harness = train + evaluate + checkpoint + metrics line every epoch; hand-written = train + evaluate")
    for student, r in results.items():
        for clock, words in (("cpu", "CPU time"), ("wall", "wall time")):
            print(f"{student:14} {words:9}  harness {r[f'{clock}_harness_s'] * 1000:7.1f} ms  hand "
                  f"{r[f'{clock}_hand_s'] * 1000:7.1f} ms  ratio median {r[f'{clock}_ratio_median']:.3f} "
                  f"(min {r[f'{clock}_ratio_min']:.3f}, max {r[f'{clock}_ratio_max']:.3f})")
    return results
