"""The one training loop (teachers and every method) and the one evaluation path."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdbench.data import RegimeData, TensorData, eval_batches, train_batches
from kdbench.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from kdbench.method import Method
from kdbench.models import Network
from kdbench.store import atomic_write_jsonl


@dataclass
class Evaluation:
    """Top-1/top-5 accuracy (percent) on a split, plus mean per-class accuracy of each class group."""

    top1: float
    top5: float
    groups: dict[str, float] = field(default_factory=dict)

    def as_metrics(self) -> dict[str, float]:
        return {"top1": self.top1, "top5": self.top5, **{f"top1_{g}": v for g, v in self.groups.items()}}


@torch.no_grad()
def evaluate(student: Network, method: Method, data: TensorData, batch_size: int,
             groups: dict[str, list[int]] | None = None, device: torch.device | str = "cpu") -> Evaluation:
    """Accuracy of ``method.predict`` on ``data``; group accuracy is the mean of its classes' accuracies."""
    student.eval()
    method.eval()
    correct1 = correct5 = total = 0
    num_classes = student.num_classes
    per_class_correct = torch.zeros(num_classes)
    per_class_total = torch.zeros(num_classes)
    for x, y in eval_batches(data, batch_size, device):
        scores = method.predict(x, student(x))
        k = min(5, scores.shape[1])
        top = scores.topk(k, dim=1).indices
        hit1 = (top[:, 0] == y).cpu()
        correct1 += int(hit1.sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        total += len(y)
        per_class_correct += torch.bincount(y.cpu(), weights=hit1.double(), minlength=num_classes).float()
        per_class_total += torch.bincount(y.cpu(), minlength=num_classes).float()
    per_class = per_class_correct / per_class_total.clamp(min=1)
    group_acc = {name: float(per_class[classes].mean() * 100) for name, classes in (groups or {}).items()
                 if classes}
    return Evaluation(100.0 * correct1 / max(1, total), 100.0 * correct5 / max(1, total), group_acc)


@dataclass
class TrainState:
    """The objects one run trains, and the settings of its loop."""

    student: Network
    teacher: Network | None
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train: TensorData
    regime: RegimeData
    test: TensorData
    recipe: dict[str, Any]
    eval_batch_size: int
    seed: int
    device: torch.device
    run_dir: Path
    log: Callable[[str], None] = print


@dataclass
class FitOutcome:
    """How the loop ended: ``done`` or ``diverged`` (with the 1-based epoch and the reason)."""

    state: str
    history: list[dict[str, Any]]
    diverged_epoch: int | None = None
    reason: str | None = None


def _checkpoint_payload(ts: TrainState, epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {"epoch": epoch, "student": ts.student.state_dict(), "method": ts.method.state_dict(),
            "optimizer": ts.optimizer.state_dict(), "scheduler": ts.scheduler.state_dict(),
            "rng": rng_state(), "history": history}


def _resume(ts: TrainState, path: Path) -> tuple[int, list[dict[str, Any]]]:
    if not path.exists():
        return 0, []
    ckpt = load_checkpoint(path)
    ts.student.load_state_dict(ckpt["student"])
    ts.method.load_state_dict(ckpt["method"])
    ts.optimizer.load_state_dict(ckpt["optimizer"])
    ts.scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    ts.log(f"resumed from epoch {ckpt['epoch']} ({path})")
    return int(ckpt["epoch"]), list(ckpt["history"])


def _train_epoch(ts: TrainState, epoch: int) -> tuple[dict[str, float], str | None]:
    """One epoch of optimisation. Returns mean loss terms and, if the loss diverged, why."""
    needs = ts.method.needs
    ts.student.train()
    ts.method.train()
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=ts.device))
    steps = 0
    grad_norm_max = 0.0
    for batch in train_batches(ts.train, ts.regime.indices, ts.recipe["batch_size"], labeled=ts.regime.labeled,
                               seed=ts.seed, epoch=epoch, device=ts.device):
        s = ts.student(batch.x, taps=needs.student_taps)
        t = None
        if ts.teacher is not None:
            with torch.no_grad():
                t = ts.teacher(batch.x, taps=needs.teacher_taps)
        terms = ts.method.losses(batch, s, t)
        loss = torch.stack(list(terms.values())).sum()
        value = float(loss.detach())
        if not math.isfinite(value) or value > ts.recipe["diverge_above"]:
            return {}, f"loss {value:.4g} at step {steps + 1} (bound {ts.recipe['diverge_above']:g})"
        ts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in ts.optimizer.param_groups for p in g["params"]]
        clip = ts.recipe["grad_clip"] or float("inf")
        grad_norm_max = max(grad_norm_max, float(torch.nn.utils.clip_grad_norm_(params, clip)))
        ts.optimizer.step()
        ts.scheduler.step()
        for name, term in terms.items():
            sums[name] += term.detach()
        sums["loss"] += loss.detach()
        steps += 1
    means = {f"train_{k}": float(v) / max(1, steps) for k, v in sums.items()}
    means["grad_norm_max"] = grad_norm_max
    return means, None


def fit(ts: TrainState) -> FitOutcome:
    """Train from the last checkpoint (if any) to the recipe's last epoch; evaluate and checkpoint each epoch."""
    ckpt_path = ts.run_dir / "checkpoint.pt"
    metrics_path = ts.run_dir / "metrics.jsonl"
    start, history = _resume(ts, ckpt_path)
    atomic_write_jsonl(metrics_path, history)  # drop lines written after the checkpoint we resume from
    epochs = ts.recipe["epochs"]
    for epoch in range(start, epochs):
        ts.method.on_epoch_start(epoch, epochs)
        lr = ts.optimizer.param_groups[0]["lr"]
        began = time.perf_counter()
        train_metrics, diverged = _train_epoch(ts, epoch)
        if diverged:
            ts.log(f"epoch {epoch + 1}/{epochs}: diverged: {diverged}")
            return FitOutcome("diverged", history, diverged_epoch=epoch + 1, reason=diverged)
        train_seconds = time.perf_counter() - began
        result = evaluate(ts.student, ts.method, ts.test, ts.eval_batch_size, ts.regime.groups, ts.device)
        line = {"epoch": epoch + 1, "lr": lr, **train_metrics, **result.as_metrics(),
                "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - began - train_seconds}
        history.append(line)
        atomic_write_jsonl(metrics_path, history)
        save_checkpoint(ckpt_path, _checkpoint_payload(ts, epoch + 1, history))
        ts.log(f"epoch {epoch + 1:>3}/{epochs}  loss {line.get('train_loss', float('nan')):.4f}  "
               f"top1 {result.top1:6.2f}  lr {lr:.3g}  {train_seconds:.2f}s")
    return FitOutcome("done", history)
