"""Pieces every speed check shares: the device it runs on and how that device is named in its output."""

from __future__ import annotations

import torch


def device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model with the number of torch threads."""
    from kdbench.envinfo import cpu_name

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"
