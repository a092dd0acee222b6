"""Rectified-flow (flow-matching) objective for GenDD's head: the alternative to diffusion in the paper's first
open question ("can few-step sampling or flow matching keep the accuracy?").

Straight paths between a token ``x0`` and Gaussian noise ``e``: ``x_t = (1 - t) x0 + t e`` for t in [0, 1], the
head regresses the constant velocity ``v = e - x0`` (per-row mean squared error), t uniform per row. Sampling
integrates ``dx/dt = v(x, t)`` with Euler steps from ``t = start`` (1: pure noise) down to 0. The head sees the
time as ``t * time_scale`` (the 1000-step scale of its diffusion timestep embedding).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RectifiedFlow:
    """Training loss and Euler sampler of a rectified flow between data (t = 0) and noise (t = 1)."""

    def __init__(self, time_scale: float = 1000.0) -> None:
        self.time_scale = time_scale

    def training_losses(self, model: VelocityFn, x0: torch.Tensor, t: torch.Tensor | None = None,
                        noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-row ``mse`` (mean over dims of (v - v_hat)^2), also as ``loss``; ``t`` uniform in [0, 1)."""
        noise = torch.randn_like(x0) if noise is None else noise
        t = torch.rand(x0.shape[0], device=x0.device, dtype=x0.dtype) if t is None else t
        x_t = (1 - t[:, None]) * x0 + t[:, None] * noise
        mse = ((model(x_t, t * self.time_scale) - (noise - x0)) ** 2).mean(dim=1)
        return {"mse": mse, "loss": mse}

    @torch.no_grad()
    def sample(self, model: VelocityFn, noise: torch.Tensor, steps: int, start: float = 1.0) -> torch.Tensor:
        """Euler integration from ``noise`` at time ``start`` to 0 in ``steps`` equal steps."""
        if steps < 1 or not 0 < start <= 1:
            raise ValueError(f"flow sampling needs steps >= 1 and 0 < start <= 1, got {steps}, {start}")
        times = torch.linspace(start, 0.0, steps + 1, dtype=torch.float64)
        x = noise
        for now, then in zip(times[:-1].tolist(), times[1:].tolist(), strict=True):
            t = torch.full((x.shape[0],), now * self.time_scale, device=x.device, dtype=x.dtype)
            x = x + (then - now) * model(x, t)
        return x
