"""Batches over a split: a seeded order per (run seed, epoch), so a resumed run sees the same data.

In-memory splits (:class:`TensorData`) are sliced, moved to the device, normalised and augmented there (no
DataLoader workers: the fast path for data that fits in memory). File-backed splits (:class:`FileData`:
ImageFolder trees, tar shards) go through a DataLoader with worker processes and PIL transforms.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from kdbench.batch import Batch
from kdbench.data.negatives import NegativeSampler
from kdbench.data.sources import TensorData


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders epoch ``epoch`` of a run with seed ``seed`` (independent of global RNG)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def train_batches(data: TensorData | Any, indices: np.ndarray, batch_size: int, *, labeled: bool, seed: int,
                  epoch: int, device: torch.device | str = "cpu", negatives: int = 0) -> Iterator[Batch]:
    """Shuffled training batches of ``indices``; labels are withheld (``y=None``) when ``labeled`` is False.

    ``batch_size`` is the global batch: under data-parallel training every rank draws the same order and takes
    its slice of each batch. The last partial batch is kept unless it cannot give every rank two images (batch
    norm cannot train on one). ``negatives`` > 0: every batch carries that many contrastive negatives per item
    (:class:`~kdbench.data.negatives.NegativeSampler`; other classes when labelled), from a generator of their
    own, so the images and their augmentation are the same as without.
    """
    from kdbench.distributed import min_batch, shard, world_size

    index = torch.as_tensor(indices, dtype=torch.long)
    generator = epoch_generator(seed, epoch)
    order = index[torch.randperm(len(index), generator=generator)]
    smallest = min_batch()
    chunks = [chunk for chunk in torch.split(order, batch_size) if len(chunk) >= smallest or len(order) == 1]
    # negatives are drawn batch by batch as the epoch goes (all at once they would be items x k indices: 168 GB
    # for ImageNet with CRD's 16384); their generator is their own, so drawing lazily draws the same ones
    sampler = NegativeSampler(indices, np.asarray(data.y) if labeled else None, negatives) if negatives else None
    negatives_generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) ^ 0x5EED)

    def draw(whole_batch: torch.Tensor) -> torch.Tensor | None:  # every rank draws the whole batch's, keeps its own
        return None if sampler is None else _to(shard(sampler.draw(whole_batch, negatives_generator)), device)

    mine = [shard(chunk) for chunk in chunks] if world_size() > 1 else chunks  # data-parallel: a rank's slice
    if isinstance(data, TensorData):
        here = data.x.device == torch.device(device)  # in memory on the training device: no copy to make
        for whole, chunk in zip(chunks, mine, strict=True):
            x, y = data.x[chunk], data.y[chunk] if labeled else None
            if not here:
                x, y = x.to(device, non_blocking=True), _to(y, device)
            yield Batch(x=data.to_input(x, train=True, generator=generator), y=y, index=chunk.to(device),
                        negatives=draw(whole))
        return
    for whole, chunk, (x, y) in zip(chunks, mine, data.load_batches(mine, train=True, seed=seed * 1_000_003 + epoch),
                                    strict=True):
        yield Batch(x=x.to(device, non_blocking=True), y=y.to(device) if labeled else None, index=chunk.to(device),
                    negatives=draw(whole))


def _to(tensor: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device, non_blocking=True)


def eval_batches(data: TensorData | Any, batch_size: int,
                 device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The whole split in order, as ``(x, y)`` model-input batches (this rank's slice of each under
    data-parallel evaluation; the counts are summed across ranks by the caller)."""
    from kdbench.distributed import shard

    chunks = [shard(torch.arange(start, min(start + batch_size, len(data))))
              for start in range(0, len(data), batch_size)]
    chunks = [chunk for chunk in chunks if len(chunk)]
    if isinstance(data, TensorData):
        for chunk in chunks:
            yield data.to_input(data.x[chunk].to(device)), data.y[chunk].to(device)
        return
    for x, y in data.load_batches(chunks, train=False, seed=0):
        yield x.to(device, non_blocking=True), y.to(device)
