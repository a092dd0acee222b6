"""``bench overhead``: the harness's epoch (train + evaluate + checkpoint + metrics line) for KD against a
minimal hand-written PyTorch loop doing the same training and evaluation, same model, data and seed, the two
alternating epoch by epoch."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Stamp:
    """A moment on two clocks: wall seconds and this process's CPU seconds. On a shared machine the CPU time is
    the steadier measure (other processes' load does not enter it); the wall time includes waits for the disk."""

    wall: float
    cpu: float

    @classmethod
    def now(cls) -> Stamp:
        """This moment on both clocks."""
        return cls(time.perf_counter(), time.process_time())

    def __sub__(self, earlier: Stamp) -> Stamp:
        return Stamp(self.wall - earlier.wall, self.cpu - earlier.cpu)

    def __add__(self, other: Stamp) -> Stamp:
        return Stamp(self.wall + other.wall, self.cpu + other.cpu)


class HandLoop:
    """The minimal hand-written loop of the same workload: its own seeded student, teacher and SGD (built before
    any timing); one call of :meth:`epoch` trains an epoch on shuffled batches with the KD loss, then takes the
    top-1 on the test set."""

    def __init__(self, seed: int, student_name: str) -> None:
        self.splits, _, self.student, self.teacher, _ = _digits_kd(seed, student_name)
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=RECIPE["lr"], momentum=RECIPE["momentum"],
                                         weight_decay=RECIPE["weight_decay"])
        self.seed = seed

    def epoch(self, epoch: int) -> None:
        """Train epoch ``epoch`` (its own shuffle) and evaluate."""
        from kdbench.methods.kd import kd_loss

        x_all, y_all, test = self.splits.train.x, self.splits.train.y, self.splits.test
        self.student.train()
        order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        for start in range(0, len(order), RECIPE["batch_size"]):
            idx = order[start:start + RECIPE["batch_size"]]
            x, y = x_all[idx], y_all[idx]
            logits = self.student(x).logits
            with torch.no_grad():
                t_logits = self.teacher(x).logits
            loss = 0.9 * kd_loss(logits, t_logits, 4.0) + 0.1 * F.cross_entropy(logits, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.student.eval()
        with torch.no_grad():
            for i in range(0, len(test), 512):
                _ = int((self.student(test.x[i:i + 512]).logits.argmax(1) == test.y[i:i + 512]).sum())


def interleaved_epochs(seed: int, student_name: str, epochs: int) -> list[tuple[Stamp, Stamp]]:
    """One run of the harness (``fit``: every epoch trains, evaluates and appends its metrics line; a checkpoint at
    most once a second, by the run's clock, which also counts the hand-written epochs, and after the last epoch)
    with one hand-written epoch after each of its epochs (run from its per-epoch callback, so the two alternate
    epoch by epoch: ABAB...). Returns, per epoch, the harness's and the hand-written loop's times. A harness epoch
    is timed from the end of the previous hand-written epoch (the run's start for the first, so it carries the
    run's set-up) to the callback; the run's closing work after the last callback is added to the last."""
    from kdbench.engine import TrainState, fit

    splits, regime, student, teacher, method = _digits_kd(seed, student_name)
    hand = HandLoop(seed, student_name)
    harness_ends: list[Stamp] = []
    hand_ends: list[Stamp] = []

    def after_harness_epoch(line: dict[str, Any], done: int) -> None:
        harness_ends.append(Stamp.now())
        hand.epoch(len(hand_ends))
        hand_ends.append(Stamp.now())

    with tempfile.TemporaryDirectory() as folder:  # a fresh run folder: no checkpoint to resume from
        ts = TrainState(student=student, teacher=teacher, method=method, train=splits.train, regime=regime,
                        test=splits.test, recipe={**RECIPE, "epochs": epochs}, eval_batch_size=512, seed=seed,
                        device=torch.device("cpu"), run_dir=Path(folder), log=lambda m: None,
                        on_epoch=after_harness_epoch)
        began = Stamp.now()
        fit(ts)
        ended = Stamp.now()
    starts = [began, *hand_ends[:-1]]
    harness = [end - start for start, end in zip(starts, harness_ends, strict=True)]
    harness[-1] = harness[-1] + (ended - hand_ends[-1])
    hand_times = [end - start for start, end in zip(harness_ends, hand_ends, strict=True)]
    return list(zip(harness, hand_times, strict=True))


def measure_overhead(student: str, repeats: int, epochs: int) -> dict[str, float]:
    """``repeats`` runs of :func:`interleaved_epochs` (after one warm-up run): the ratio harness / hand-written of
    every epoch pair (median, min, max) and of their totals, in CPU and in wall time. Alternating epoch by epoch
    puts the two sides of a pair a tenth of a second apart, so a change of machine load hits both alike."""
    interleaved_epochs(0, student, 1)
    pairs = [pair for seed in range(repeats) for pair in interleaved_epochs(seed, student, epochs)]
    out: dict[str, float] = {"repeats": repeats, "epochs": epochs, "pairs": len(pairs)}
    for clock in ("wall", "cpu"):
        harness = [getattr(h, clock) for h, _ in pairs]
        hand = [getattr(m, clock) for _, m in pairs]
        ratios = [h / m for h, m in zip(harness, hand, strict=True)]
        out.update({f"{clock}_ratio_median": statistics.median(ratios), f"{clock}_ratio_min": min(ratios),
                    f"{clock}_ratio_max": max(ratios), f"{clock}_ratio_total": sum(harness) / sum(hand),
                    f"{clock}_harness_s": statistics.median(harness), f"{clock}_hand_s": statistics.median(hand)})
    return out


def bench_overhead(repeats: int = 16, students: tuple[str, ...] = STUDENTS, epochs: int = 5) -> dict[str, dict]:
    """Print, per student, the harness / hand-written ratio of epoch pairs (median, min, max, and of the totals),
    in this process's CPU time and in wall time."""
    torch.set_num_threads(1)
    results = {student: measure_overhead(student, repeats, epochs) for student in students}
    print(f"device: {device_name(torch.device('cpu'))}; KD from kdb_cnn_base, digits, batch 64; {repeats} runs of "
          f"{epochs} epoch(s) per student, each harness epoch followed by a hand-written one (ABAB...): "
          f"{repeats * epochs} interleaved pairs")
    print("harness epoch = train + evaluate + metrics line + checkpoint (at most one a second and after the last "
          "epoch; the hand-written epochs count toward that second, so more often than in a run alone); the first "
          "also the run's set-up. hand-written = train + evaluate")
    for student, r in results.items():
        for clock, words in (("cpu", "CPU time"), ("wall", "wall time")):
            print(f"{student:14} {words:9}  harness {r[f'{clock}_harness_s'] * 1000:7.1f} ms  hand "
                  f"{r[f'{clock}_hand_s'] * 1000:7.1f} ms per epoch  ratio median {r[f'{clock}_ratio_median']:.3f} "
                  f"(min {r[f'{clock}_ratio_min']:.3f}, max {r[f'{clock}_ratio_max']:.3f}; "
                  f"of the totals {r[f'{clock}_ratio_total']:.3f})")
    return results
