"""The epoch checkpoint's compact forms (history as one JSON string, recent losses and the Python RNG state as
tensors) read back to the same values, and checkpoints written in the older plain form still load."""

from __future__ import annotations

import io
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
