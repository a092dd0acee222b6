"""Batches over in-memory splits: a seeded order per (run seed, epoch), so a resumed run sees the same data."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from kdbench.data.sources import TensorData
from kdbench.method import Batch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders epoch ``epoch`` of a run with seed ``seed`` (independent of global RNG)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def train_batches(data: TensorData, indices: np.ndarray, batch_size: int, *, labeled: bool, seed: int,
                  epoch: int, device: torch.device | str = "cpu") -> Iterator[Batch]:
    """Shuffled training batches of ``indices``; labels are withheld (``y=None``) when ``labeled`` is False.

    The last partial batch is kept unless it holds a single image (batch norm cannot train on one).
    """
    index = torch.as_tensor(indices, dtype=torch.long)
    order = index[torch.randperm(len(index), generator=epoch_generator(seed, epoch))]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        if len(chunk) < 2 and len(order) > 1:
            continue
        y = data.y[chunk].to(device) if labeled else None
        yield Batch(x=data.x[chunk].to(device), y=y, index=chunk)


def eval_batches(data: TensorData, batch_size: int,
                 device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The whole split in order, as ``(x, y)`` batches."""
    for start in range(0, len(data), batch_size):
        yield data.x[start:start + batch_size].to(device), data.y[start:start + batch_size].to(device)
