"""Data-parallel training over N processes (one per GPU, or gloo on CPU): the same loop, sharded batches.

Every rank draws the same global batch order (seeded per run and epoch) and takes its slice ``chunk[rank::N]``;
gradients of every parameter the optimizer updates are averaged across ranks after ``backward`` (the arithmetic
of DistributedDataParallel, for the student and for any module a method trains, e.g. GenDD's head); evaluation
counts are summed across ranks. Only rank 0 writes files. Launched by SLURM through submitit (one task per GPU,
``submitit.helpers.TorchDistributedEnvironment``) or locally with :func:`launch_local`.

Batch norm under data parallelism (the train option ``batchnorm``, :data:`kdbench.spec.BATCHNORM_MODES`): each rank's
BatchNorm layers see only its shard, so their running statistics drift apart. ``broadcast`` (the default, what
``DistributedDataParallel(broadcast_buffers=True)`` gives) copies rank 0's normalisation buffers to every rank at
each epoch end (:func:`broadcast_batchnorm`), so every rank evaluates, and rank 0 saves, one model; ``sync``
converts the layers to ``torch.nn.SyncBatchNorm`` (:func:`convert_sync_batchnorm`: batch statistics over the
global batch, GPUs only) and broadcasts as well; ``local`` keeps each rank's own statistics (the old behaviour).

A low module: the data layer, the engine and methods (CRD's memory bank, GenDD's distilled map) all use it, and
it imports nothing of kdbench.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


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


def gather_variable_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The rows of ``tensor`` from every rank, concatenated in rank order (rank 0's rows first), where ranks may
    hold different numbers of rows (even none); every rank gets the same tensor. The trailing shape, dtype and
    device must agree across ranks. The tensor itself when not distributed.

    Three collectives: the row counts are gathered, every block is zero-padded to the largest, the padded blocks
    are gathered, and each is trimmed back to its count."""
    n = world_size()
    if n == 1:
        return tensor
    tensor = tensor.contiguous()
    count = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    counts = [torch.empty_like(count) for _ in range(n)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    longest = max(sizes)
    if longest == 0:
        return tensor
    padded = tensor
    if tensor.shape[0] < longest:
        padding = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, padding])
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def batchnorm_buffers(*modules: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every buffer of every normalisation layer that tracks running statistics (BatchNorm1d/2d/3d,
    SyncBatchNorm, timm's BatchNormAct, InstanceNorm with ``track_running_stats``) inside ``modules``:
    ``running_mean``, ``running_var``, ``num_batches_tracked`` and any other buffer such a layer owns, as
    ``(name, tensor)`` in module order, the name prefixed by the module's position (``0.model.bn1.running_mean``)."""
    found = []
    for position, module in enumerate(modules):
        for path, layer in module.named_modules():
            if isinstance(layer, nn.modules.batchnorm._NormBase):
                for name, buffer in layer.named_buffers(recurse=False):
                    if buffer is not None:
                        found.append((f"{position}.{path}.{name}" if path else f"{position}.{name}", buffer))
    return found


def broadcast_batchnorm(*modules: nn.Module, src: int = 0) -> None:
    """Make the batch-norm buffers of ``modules`` (:func:`batchnorm_buffers`) equal on every rank: rank ``src``'s
    values are copied in place to every other rank, exactly (the buffer broadcast that
    ``DistributedDataParallel`` does before each forward; here called once per epoch end). One broadcast per
    buffer dtype. Every rank must pass modules of the same structure. No-op when not distributed."""
    if world_size() == 1:
        return
    by_kind: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for _, buffer in batchnorm_buffers(*modules):
        by_kind.setdefault((buffer.dtype, buffer.device), []).append(buffer)
    for buffers in by_kind.values():  # the same insertion order on every rank: module order
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.broadcast(flat, src=src)
        offset = 0
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


def to_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm layer replaced by a ``torch.nn.SyncBatchNorm`` that shares its parameters
    and buffers (timm's converter when timm is there, so that BatchNormAct layers keep their activation), whatever
    the world size or device. Returns the converted module: a new object only when ``module`` itself is a
    BatchNorm layer. References to the old layers held elsewhere (forward hooks, a wrapper's map of its layers)
    go stale, so convert a network before anything keeps such references. See :func:`convert_sync_batchnorm`."""
    try:
        from timm.layers import convert_sync_batchnorm as convert
    except ImportError:  # timm is a dependency of kdbench's models; torch's converter handles plain BatchNorm
        convert = nn.SyncBatchNorm.convert_sync_batchnorm
    return convert(module)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """For the train option ``batchnorm: sync``: ``module`` with its BatchNorm layers as ``torch.nn.SyncBatchNorm``
    (batch statistics over the global batch, :func:`to_sync_batchnorm`) when distributed; ``module`` unchanged
    when not. Raises ValueError on CPU ranks: torch's SyncBatchNorm trains only on accelerators (use
    ``batchnorm: broadcast`` there)."""
    if world_size() == 1:
        return module
    if device().type == "cpu":
        raise ValueError("batchnorm: sync uses torch.nn.SyncBatchNorm, which trains only on GPUs; this rank runs on "
                         "the CPU (use batchnorm: broadcast)")
    return to_sync_batchnorm(module)


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
