"""Packing the tensors of a nested state (module, optimizer and RNG states) into one flat buffer per dtype and
device, for files written often: ``torch.save`` pays per tensor (a pickled storage record, and on a GPU a
device-to-host copy each), which dominated the epoch checkpoint of a small model (35 tensors: 0.85 ms of
serialisation on a CPU, against 0.25 ms packed). The packed form is plain containers, numbers, strings and
tensors, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Any

import torch

MARK = "__kdbench_tensor__"
"""A packed tensor's place in the structure: the tuple ``(MARK, i)``, ``i`` its position in the index."""


def pack_tensors(tree: Any) -> dict[str, Any]:
    """``{"structure", "buffers", "index"}``: ``tree`` (dicts, OrderedDicts with their ``_metadata``, lists,
    tuples, scalars) with each strided tensor replaced by a mark, the tensors concatenated per (dtype, device)
    into ``buffers``, and per tensor ``[buffer, offset, shape]`` in ``index``, one JSON string (pickled as one
    object rather than seven per tensor). Gradients are not kept."""
    tensors: list[torch.Tensor] = []

    def mark(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) and obj.layout == torch.strided and not obj.is_quantized:
            tensors.append(obj.detach())
            return (MARK, len(tensors) - 1)
        return _KEEP

    structure = _map_tree(tree, mark)
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, tensor in enumerate(tensors):
        groups.setdefault((tensor.dtype, tensor.device), []).append(i)
    buffers: list[torch.Tensor] = []
    index: list[tuple[int, int, tuple[int, ...]]] = [(0, 0, ())] * len(tensors)
    for members in groups.values():
        offset = 0
        for i in members:
            index[i] = (len(buffers), offset, tuple(tensors[i].shape))
            offset += tensors[i].numel()
        buffers.append(torch.cat([tensors[i].reshape(-1) for i in members]))
    return {"structure": structure, "buffers": buffers, "index": json.dumps(index, separators=(",", ":"))}


def is_packed(state: Any) -> bool:
    """True for what :func:`pack_tensors` returns (after a save and a load)."""
    return isinstance(state, dict) and set(state) == {"structure", "buffers", "index"}


def spread_packed(state: Any, key: str = "tensors") -> Any:
    """A loaded checkpoint mapping with its packed entry ``key`` unpacked into top-level entries (how a kdbench
    epoch checkpoint keeps its modules' and optimizer's states); anything else is returned as it is."""
    if not (isinstance(state, dict) and is_packed(state.get(key))):
        return state
    return {**{k: v for k, v in state.items() if k != key}, **unpack_tensors(state.get(key))}


def unpack_tensors(packed: dict[str, Any]) -> Any:
    """The tree :func:`pack_tensors` packed, each tensor its own (contiguous) copy. ValueError when an entry
    points outside its buffer (a damaged file)."""
    buffers, index = packed["buffers"], packed["index"]
    index = json.loads(index) if isinstance(index, str) else index  # a list in checkpoints before the JSON form
    tensors: list[torch.Tensor] = []
    for b, offset, shape in index:
        numel = math.prod(shape)
        if not (0 <= b < len(buffers) and offset >= 0 and offset + numel <= buffers[b].numel()):
            raise ValueError(f"packed tensor {len(tensors)} ({b}, {offset}, {tuple(shape)}) is outside its buffer")
        tensors.append(buffers[b][offset:offset + numel].view(tuple(shape)).clone())

    return _map_tree(packed["structure"], lambda obj: tensors[obj[1]] if _is_mark(obj) else _KEEP)


_KEEP = object()


def _is_mark(obj: Any) -> bool:
    return isinstance(obj, tuple) and len(obj) == 2 and obj[0] == MARK and isinstance(obj[1], int)


def _map_tree(obj: Any, replace: Any) -> Any:
    """``obj`` rebuilt with ``replace(node)`` wherever it does not return ``_KEEP``; dicts keep their type
    (OrderedDict or dict) and a state dict's ``_metadata``, named tuples are leaves."""
    new = replace(obj)
    if new is not _KEEP:
        return new
    if isinstance(obj, dict):
        out = (OrderedDict if isinstance(obj, OrderedDict) else dict)(
            (k, _map_tree(v, replace)) for k, v in obj.items())
        if getattr(obj, "_metadata", None) is not None:  # module versions, read by load_state_dict
            out._metadata = obj._metadata
        return out
    if isinstance(obj, list):
        return [_map_tree(v, replace) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_map_tree(v, replace) for v in obj)
    return obj
