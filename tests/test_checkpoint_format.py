"""The epoch checkpoint's compact forms (history as one JSON string, recent losses and the Python RNG state as
tensors) read back to the same values, and checkpoints written in the older plain form still load."""

from __future__ import annotations

import io
import json
import random

import torch

from kdbench.engine.checkpoint import ResumePoint, rng_state, set_rng_state

HISTORY = [{"phase": "main", "epoch": 1, "lr": 0.05, "train_loss": 0.1 + 0.2, "top1": 93.33333333333333,
            "val_top1": None, "loss_spikes": 0, "grad_norm_max": float("nan")}]


def _point(history: list, spikes: list) -> ResumePoint:
    return ResumePoint(phase=0, epoch=1, student={"w": torch.ones(2)}, method={}, optimizer={}, scheduler={},
                       rng=rng_state(), history=history, resumes=[{"phase": "main", "epoch": 1}], spikes=spikes)


def _through_a_file(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_the_compact_checkpoint_reads_back_the_same_values() -> None:
    spikes = [0.1 * i for i in range(50)]
    back = ResumePoint.from_state(_through_a_file(_point(HISTORY, spikes).to_state()))
    assert back.history[0]["train_loss"] == 0.1 + 0.2 and back.history[0]["top1"] == 93.33333333333333
    assert back.history[0]["val_top1"] is None and back.history[0]["grad_norm_max"] != back.history[0]["grad_norm_max"]
    assert back.spikes == spikes and back.resumes == [{"phase": "main", "epoch": 1}]


def test_the_python_rng_state_round_trips_and_older_checkpoints_load() -> None:
    random.seed(7)
    state = _through_a_file({"rng": rng_state()})["rng"]
    expected = [random.random() for _ in range(3)]
    set_rng_state(state)
    assert [random.random() for _ in range(3)] == expected
    version, internal, gauss = state["python"]
    older = {**state, "python": (version, tuple(int(v) for v in internal.tolist()), gauss)}  # the former form
    set_rng_state(older)
    assert [random.random() for _ in range(3)] == expected
    plain = {**_point(HISTORY, [0.5]).to_state(), "history": HISTORY, "spikes": [0.5]}
    assert ResumePoint.from_state(plain).history == HISTORY and ResumePoint.from_state(plain).spikes == [0.5]


def test_packed_tensors_round_trip_with_their_types_shapes_and_module_versions() -> None:
    from collections import OrderedDict

    from kdbench.store.tensors import is_packed, pack_tensors, unpack_tensors

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters())
    net(torch.randn(2, 3, 5, 5)).sum().backward()
    optimizer.step()
    tree = {"student": net.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
            "other": [torch.tensor(True), (torch.zeros(0), 3, "x"), {"e": torch.empty(2, 0, 3)}], "n": 5}
    packed = _through_a_file(pack_tensors(tree))
    assert is_packed(packed) and len(packed["buffers"]) < 6 < len(json.loads(packed["index"]))  # a buffer per dtype
    back = unpack_tensors(packed)
    listed = {**packed, "index": json.loads(packed["index"])}  # the index as checkpoints before its JSON form hold it
    assert same_tree(unpack_tensors(listed), back)
    assert isinstance(back["student"], OrderedDict) and back["student"]._metadata == tree["student"]._metadata

    assert same_tree(tree, back)
    restored = torch.optim.AdamW(net.parameters())
    restored.load_state_dict(back["optimizer"])  # loads like the unpacked state
    assert same_tree(restored.state_dict(), optimizer.state_dict())


def same_tree(a, b) -> bool:
    """Equal nested containers of equal tensors (dtype, shape, values) and values."""
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_a_packed_index_pointing_outside_its_buffer_is_an_error() -> None:
    import pytest

    from kdbench.store.tensors import pack_tensors, unpack_tensors

    packed = pack_tensors({"w": torch.ones(3)})
    packed["index"] = [(0, 2, (3,))]
    with pytest.raises(ValueError, match="outside its buffer"):
        unpack_tensors(packed)
