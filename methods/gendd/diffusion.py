"""Gaussian diffusion for GenDD's head, as IDDPM / DiT / MAR implement it.

Cosine noise schedule (1000 steps, betas capped at 0.999), epsilon prediction with a learned-range variance
(or a fixed "large" variance), the training loss ``MSE(eps, eps_hat) + VLB`` with the VLB computed on a
stop-gradient mean (so it trains only the variance; KL in bits per dimension, decoder NLL at t = 0), respacing
to K sampling steps, ancestral DDPM sampling with a temperature, and deterministic DDIM (eta = 0).

Schedules are computed in float64 and cast when used. ``model(x_t, t)`` is any callable that returns
``[eps, v]`` (learned variance) or ``eps`` (fixed variance) for a batch of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cosine_alpha_bar(t: np.ndarray | float) -> np.ndarray | float:
    """alpha_bar(t) = cos^2(((t + 0.008) / 1.008) * pi / 2) for t in [0, 1] (Nichol & Dhariwal 2021)."""
    return np.cos((np.asarray(t) + 0.008) / 1.008 * math.pi / 2) ** 2


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta), i = 0 .. T-1."""
    i = np.arange(num_steps, dtype=np.float64)
    return np.minimum(1 - cosine_alpha_bar((i + 1) / num_steps) / cosine_alpha_bar(i / num_steps), max_beta)


def space_timesteps(num_steps: int, count: int) -> list[int]:
    """IDDPM's respacing for one section: ``count`` evenly strided steps of ``range(num_steps)``, both ends kept.

    One step keeps the last timestep (the start of the chain). IDDPM keeps step 0 there, which makes a one-step
    chain start from noise at t = 0 and return the noise; K = 1 is a sampler of its own here (the issue's
    one-step prediction), so it starts where the chain starts."""
    if not 1 <= count <= num_steps:
        raise ValueError(f"cannot take {count} steps out of {num_steps}")
    if count == num_steps:
        return list(range(num_steps))
    if count == 1:
        return [num_steps - 1]
    stride = (num_steps - 1) / (count - 1)
    return [round(i * stride) for i in range(count)]


@dataclass
class Schedule:
    """A (possibly respaced) diffusion schedule: per-step float64 tables and the model's original timesteps."""

    betas: torch.Tensor
    timesteps: torch.Tensor  # original training timestep fed to the model at each step

    def __post_init__(self) -> None:
        b = self.betas.double()
        ac = torch.cumprod(1 - b, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        self.alphas_cumprod, self.alphas_cumprod_prev = ac, ac_prev
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - ac).sqrt()
        self.sqrt_recip_alphas_cumprod = (1 / ac).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1 / ac - 1).sqrt()
        self.posterior_variance = b * (1 - ac_prev) / (1 - ac)
        first = self.posterior_variance[1:2] if len(b) > 1 else self.posterior_variance[:1].clamp(min=1e-20)
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = b * ac_prev.sqrt() / (1 - ac)
        self.posterior_mean_coef2 = (1 - ac_prev) * (1 - b).sqrt() / (1 - ac)
        self.log_betas = torch.log(b)
        # FIXED_LARGE variance of IDDPM: posterior variance at step 1, then the betas
        self.fixed_large_log_variance = torch.log(torch.cat([self.posterior_variance[1:2] if len(b) > 1
                                                             else b[:1], b[1:]]))

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @classmethod
    def respaced(cls, base: Schedule, use_steps: list[int]) -> Schedule:
        """Keep only ``use_steps`` of ``base``: new betas are ``1 - alpha_bar_i / alpha_bar_prev_kept``."""
        betas, last = [], 1.0
        for step in use_steps:
            ac = float(base.alphas_cumprod[step])
            betas.append(1 - ac / last)
            last = ac
        return cls(torch.tensor(betas, dtype=torch.float64), base.timesteps[torch.tensor(use_steps)])


def _take(table: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``table[index]`` as a column broadcastable against ``like`` (rows x dims), in ``like``'s dtype/device."""
    return table.to(like.device)[index].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF used by IDDPM."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of ``x`` under a Gaussian discretised into 256 bins over [-1, 1] (IDDPM's decoder term)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class GaussianDiffusion:
    """The diffusion process: training schedule, loss, and samplers over respaced schedules."""

    def __init__(self, num_steps: int = 1000, learn_sigma: bool = True, max_beta: float = 0.999) -> None:
        betas = torch.from_numpy(cosine_betas(num_steps, max_beta))
        self.train_schedule = Schedule(betas, torch.arange(num_steps))
        self.num_steps = num_steps
        self.learn_sigma = learn_sigma

    # ------------------------------------------------------------------ forward process and posterior
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
        s = self.train_schedule
        return _take(s.sqrt_alphas_cumprod, t, x0) * x0 + _take(s.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    @staticmethod
    def q_posterior(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor,
                    t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)."""
        mean = _take(schedule.posterior_mean_coef1, t, x_t) * x0 + _take(schedule.posterior_mean_coef2, t, x_t) * x_t
        return (mean, _take(schedule.posterior_variance, t, x_t),
                _take(schedule.posterior_log_variance_clipped, t, x_t))

    def p_mean_variance(self, schedule: Schedule, output: torch.Tensor, x_t: torch.Tensor,
                        t: torch.Tensor) -> dict[str, torch.Tensor]:
        """From the model output at step ``t`` (index into ``schedule``): eps, predicted x0, mean, log-variance."""
        dims = x_t.shape[-1]
        if self.learn_sigma:
            eps, v = output[:, :dims], output[:, dims:]
            min_log = _take(schedule.posterior_log_variance_clipped, t, x_t)
            max_log = _take(schedule.log_betas, t, x_t)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        else:
            eps = output[:, :dims]
            log_variance = _take(schedule.fixed_large_log_variance, t, x_t).expand_as(x_t)
        pred_x0 = _take(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - \
            _take(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        mean, _, _ = self.q_posterior(schedule, pred_x0, x_t, t)
        return {"eps": eps, "pred_x0": pred_x0, "mean": mean, "log_variance": log_variance}

    # ------------------------------------------------------------------ training
    def vb_bits(self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-row variational-bound term in bits/dim: KL(q || p) for t > 0, decoder NLL at t = 0."""
        s = self.train_schedule
        true_mean, _, true_log_var = self.q_posterior(s, x0, x_t, t)
        out = self.p_mean_variance(s, output, x_t, t)
        kl = normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]).mean(dim=1) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        return torch.where(t == 0, nll.mean(dim=1) / math.log(2.0), kl)

    def training_losses(self, model: ModelFn, x0: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-row losses: ``mse`` (mean over dims of (eps - eps_hat)^2), ``vb`` (variance only), ``loss``."""
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, t)
        dims = x0.shape[-1]
        mse = ((noise - output[:, :dims]) ** 2).mean(dim=1)
        if not self.learn_sigma:
            return {"mse": mse, "loss": mse}
        frozen = torch.cat([output[:, :dims].detach(), output[:, dims:]], dim=1)  # the VLB trains the variance only
        vb = self.vb_bits(frozen, x0, x_t, t)
        return {"mse": mse, "vb": vb, "loss": mse + vb}

    # ------------------------------------------------------------------ sampling
    def sampling_schedule(self, steps: int, start_step: int | None = None) -> Schedule:
        """The training schedule respaced to ``steps`` steps over ``0 .. start_step`` (default: the last step)."""
        start = self.num_steps - 1 if start_step is None else start_step
        if not 0 <= start < self.num_steps:
            raise ValueError(f"start_step must be in [0, {self.num_steps - 1}], got {start}")
        return Schedule.respaced(self.train_schedule, space_timesteps(start + 1, steps))

    @torch.no_grad()
    def sample(self, model: ModelFn, noise: torch.Tensor, schedule: Schedule, sampler: str = "ddpm",
               temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Run the reverse chain from ``noise`` (taken as x at the schedule's last step) down to x0.

        ``ddpm``: ancestral sampling with the model's variance, noise scaled by ``temperature``, none at the
        last step. ``ddim``: the deterministic DDIM update (eta = 0) on the same steps. ``generator`` draws the
        ancestral noise (default: the global RNG).
        """
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler '{sampler}' (known: ddim, ddpm)")
        x = noise
        for i in reversed(range(schedule.num_steps)):
            index = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            out = self.p_mean_variance(schedule, model(x, schedule.timesteps.to(x.device)[index]), x, index)
            if sampler == "ddpm":
                x = out["mean"]
                if i > 0:
                    noise_i = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
                    x = x + torch.exp(0.5 * out["log_variance"]) * noise_i * temperature
            else:
                eps = (_take(schedule.sqrt_recip_alphas_cumprod, index, x) * x - out["pred_x0"]) / \
                    _take(schedule.sqrt_recipm1_alphas_cumprod, index, x)
                ac_prev = _take(schedule.alphas_cumprod_prev, index, x)
                x = out["pred_x0"] * ac_prev.sqrt() + (1 - ac_prev).sqrt() * eps
        return x
