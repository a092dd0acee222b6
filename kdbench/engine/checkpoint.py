"""Epoch checkpoints: everything a killed run needs to resume and end with the same numbers.

A checkpoint file is a plain mapping of tensors and numbers (``torch.load(weights_only=True)`` reads it); in
the engine it is a typed :class:`ResumePoint` (or :class:`BestPoint`), converted at the file boundary only.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench.store import atomic_write_bytes
from kdbench.store.tensors import pack_tensors, spread_packed


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class NumpyRng:
    """numpy's legacy global RNG state, with its key array as a tensor (``weights_only`` loads it)."""

    kind: str
    keys: torch.Tensor
    pos: int
    has_gauss: int
    cached: float


def set_deterministic(on: bool) -> None:
    """``executor.deterministic``: deterministic algorithms only (``torch.use_deterministic_algorithms``; an op
    without a deterministic kernel raises), cuDNN deterministic and not benchmarking, and the cuBLAS workspace
    setting deterministic GEMMs need. Off restores torch's defaults. The state is recorded in ``env``."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch, CUDA when present), in types that
    ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_rng = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                 "has_gauss": int(has_gauss), "cached": float(cached)}  # NumpyRng's fields (asdict deep-copies)
    cuda = {"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}
    version, internal, gauss = random.getstate()  # 625 ints: one tensor pickles ~600 objects fewer
    python_keys = torch.from_numpy(np.fromiter(internal, dtype=np.int64, count=len(internal)))
    return {"python": (version, python_keys, gauss), "numpy": numpy_rng, "torch": torch.get_rng_state(), **cuda}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state.get("python")
    internal = internal.tolist() if isinstance(internal, torch.Tensor) else internal  # older checkpoints: ints
    random.setstate((version, tuple(int(v) for v in internal), gauss))
    n = NumpyRng(**state.get("numpy"))
    np.random.set_state((n.kind, n.keys.numpy().astype(np.uint32), n.pos, n.has_gauss, n.cached))
    torch.set_rng_state(state.get("torch"))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state.get("cuda"))


def _fields_of(cls: type, state: Any, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The values of ``cls``'s fields in a loaded checkpoint mapping; ValueError naming what it lacks."""
    if not isinstance(state, Mapping):
        raise ValueError(f"holds a {type(state).__name__}, not a checkpoint mapping")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in state and n not in optional]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    return {n: state.get(n) for n in names if n in state}


TENSOR_FIELDS = ("student", "method", "optimizer", "scheduler", "rng")
"""The :class:`ResumePoint` fields whose tensors are packed together in the file (with the recent losses)."""


@dataclass
class ResumePoint:
    """The end of one epoch of one phase: modules, optimizer, schedule, RNG and the history so far."""

    phase: int
    epoch: int
    student: dict[str, Any]
    method: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    history: list[dict[str, Any]]
    resumes: list[dict[str, Any]] = field(default_factory=list)
    spikes: list[float] = field(default_factory=list)

    @classmethod
    def from_state(cls, state: Any) -> ResumePoint:
        """From a loaded checkpoint mapping; ValueError naming what it lacks. Reads the compact forms that
        :meth:`to_state` writes and the plain lists of older checkpoints."""
        point = cls(**_fields_of(cls, spread_packed(state), optional=("resumes", "spikes")))
        history = json.loads(point.history) if isinstance(point.history, str) else list(point.history)
        spikes = point.spikes.tolist() if isinstance(point.spikes, torch.Tensor) else list(point.spikes or [])
        return dataclasses.replace(point, phase=int(point.phase), epoch=int(point.epoch), history=history,
                                   resumes=list(point.resumes or []), spikes=spikes)

    def to_state(self) -> dict[str, Any]:
        """The mapping saved to the file. The history goes as one JSON string, the recent losses as one tensor,
        and every tensor of the modules, optimizer, schedule and RNG states packed into one buffer per dtype
        (:func:`~kdbench.store.tensors.pack_tensors`): pickling values and tensors one by one cost more than
        writing them (and the history grows with every epoch)."""
        tensors = {name: getattr(self, name) for name in TENSOR_FIELDS}
        tensors["spikes"] = torch.tensor(self.spikes, dtype=torch.float64)
        return {"phase": self.phase, "epoch": self.epoch, "history": json.dumps(self.history),
                "resumes": self.resumes, "tensors": pack_tensors(tensors)}


@dataclass
class BestPoint:
    """The modules at the epoch with the best per-epoch top-1 (for methods whose final prediction differs)."""

    epoch: int
    student: dict[str, Any]
    method: dict[str, Any]

    @classmethod
    def from_state(cls, state: Any) -> BestPoint:
        """From a loaded checkpoint mapping; ValueError naming what it lacks."""
        return cls(**_fields_of(cls, state))

    def to_state(self) -> dict[str, Any]:
        """The mapping saved to the file."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically save a checkpoint (serialized in memory, then written and renamed)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code runs on load)."""
    return torch.load(path, map_location="cpu", weights_only=True)
