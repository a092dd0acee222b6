"""Data-parallel training over N processes (one per GPU, or gloo on CPU): the same loop, sharded batches.

Every rank draws the same global batch order (seeded per run and epoch) and takes its slice ``chunk[rank::N]``;
gradients of every parameter the optimizer updates are averaged across ranks after ``backward`` (the arithmetic
of DistributedDataParallel, for the student and for any module a method trains, e.g. GenDD's head); evaluation
counts are summed across ranks. Only rank 0 writes files. Launched by SLURM through submitit (one task per GPU,
``submitit.helpers.TorchDistributedEnvironment``) or locally with :func:`launch_local`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes training this run (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the rank that writes checkpoints, metrics and the record."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group described by ``WORLD_SIZE``/``RANK``/``MASTER_ADDR``/``MASTER_PORT`` when the
    world has more than one process (NCCL on GPUs, gloo on CPUs). Returns True when distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def shutdown() -> None:
    """Leave the process group (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    """This rank's device: its GPU (``LOCAL_RANK``) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def shard(chunk: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch of indices."""
    n = world_size()
    return chunk if n == 1 else chunk[rank()::n]


def min_batch() -> int:
    """The smallest global batch that still gives every rank two images (batch norm cannot train on one)."""
    return 2 * world_size()


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` across ranks (a missing gradient counts as zero)."""
    n = world_size()
    if n == 1:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(n)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_across(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``tensor`` over ranks (returned; the input is left as is)."""
    if world_size() == 1:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out)
    return out


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The rows of ``tensor`` from every rank, concatenated in rank order (every rank must pass the same
    shape); the tensor itself when not distributed."""
    n = world_size()
    if n == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(n)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def mean_across(value: float, device: torch.device | str = "cpu") -> float:
    """Mean of a float over ranks."""
    n = world_size()
    if n == 1:
        return value
    return float(sum_across(torch.tensor([value], dtype=torch.float64, device=device))[0]) / n


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if world_size() > 1:
        dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(local_rank: int, nprocs: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nprocs),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        init_from_env()
        fn(*args)
    finally:
        shutdown()


def launch_local(fn: Callable[..., Any], args: tuple, nprocs: int) -> None:
    """Run ``fn(*args)`` in ``nprocs`` processes on this machine as one process group (gloo on CPU)."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(nprocs, _free_port(), fn, args), nprocs=nprocs, join=True)
