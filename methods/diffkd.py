"""Huang et al., "Knowledge Diffusion for Distillation" (DiffKD, NeurIPS 2023), as its authors' code runs it.

Official code: GitHub ``hunto/DiffKD`` @7fcf2e5 (``diffkd.py``, ``diffkd_modules.py``, ``scheduling_ddim.py``); the
training wiring is in its submodule ``hunto/image_classification_sota`` (``lib/models/losses/kd_loss.py``, class
``KDLoss``, ``kd == 'diffkd'``; ImageNet R34->R18 config ``configs/strategies/distill/diffkd/diffkd_b1.yaml``).
Cited as [file:line] and [cfg key]. Where the paper and the code may differ, the code is followed.

A small diffusion model is trained on teacher features and then used to *denoise* the student's feature before it
is matched to the teacher's. Two branches, each with its own modules [kd_loss.py:82-91]:

- **feature branch** (kernel 3): the last stage map before pooling [kd_loss.py:15-30: ResNet ``layer4``,
  MobileNetV1 ``model.13``], with the autoencoder;
- **logit branch** (kernel 1): the logits as (B, K, 1, 1) maps, no autoencoder, matched with KL instead of MSE.

Per branch, with student map ``s``, teacher map ``f_T`` and the linear beta schedule
``alpha_bar_t = prod_{i<=t} (1 - beta_i)``, ``beta = linspace(1e-4, 0.02, N = 1000)`` [diffkd.py:33,
scheduling_ddim.py:110-131]:

1. autoencoder (feature branch): ``h_T = BN(conv1x1(f_T))``, ``L_ae = MSE(conv1x1(h_T), f_T)``; the target is
   ``z_T = sg(h_T)`` (else ``z_T = f_T``) [diffkd.py:47-50];
2. ``x = conv1x1(s)`` (to the target's channels) [diffkd.py:30,44];
3. adaptive noise matching: ``gamma = softmax(Linear(C, 2)(g(x)))[:, 0]`` in (0, 1), ``x_start = gamma x +
   (1 - gamma) eps``: the weights are gamma and 1 - gamma themselves, not the square roots of a
   variance-preserving step [scheduling_ddim.py:356-378]; a larger gamma means *less* noise (the first author
   describes it the other way round in hunto/DiffKD issue #3; the code is followed);
4. deterministic DDIM (eta 0) from ``t_start = (K - 1) r`` down to 0 in steps of ``r = N // (2K)``: the scheduler
   is set to 2K steps and only its second half is run [diffkd_modules.py:121-131], so with K = 5 the student's
   feature is taken as the noisy sample at t = 400 (alpha_bar 0.194) and denoised at t = 400, 300, 200, 100, 0:
   ``x0_hat = (x_t - sqrt(1 - a_t) eps_theta(x_t, t)) / sqrt(a_t)``,
   ``x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev) eps_theta``, ``a_prev = 1`` below t = 0
   [scheduling_ddim.py:150,285]; gradients flow through every step into the denoiser, the noise adapter and the
   student (nothing runs under no_grad);
5. ``x_ref = BN(conv1x1(x_0))`` [diffkd.py:37-40,63]; ``L_kd = MSE(x_ref, z_T)`` (feature) or
   ``tau^2 KL(softmax(z_T / tau) || softmax(x_ref / tau))``, batch mean (logits) [kd_loss.py:91, kl_div.py];
6. diffusion training on the teacher: ``t ~ U{0..N-1}`` per item, ``L_diff = MSE(eps_theta(sqrt(a_t) z_T +
   sqrt(1 - a_t) eps, t), eps)`` [diffkd.py:70-81].

``eps_theta(x, t) = net(x + E[t])`` with a learned per-channel embedding ``E`` (1280 x C) and ``net`` two residual
bottlenecks (reduction 4) + conv1x1 + BN (kernel 3) or a 1x1-conv MLP (kernel 1) [diffkd_modules.py:29-60].
``loss = ce * CE(z_s, y) + weight * sum_branches (L_kd + L_diff [+ L_ae])`` [kd_loss.py:148-167; cfg
ori_loss_weight 1, kd_loss_weight 1]. Prediction is the student's own logits: the denoiser is used only for
training (the authors' answer in hunto/DiffKD issue #5). No labels needed (the CE term is dropped without them).

Cost: with the default 1024 latent channels the feature branch runs the denoiser six times per step (five DDIM
steps with gradients, one diffusion-loss pass) on the last stage map; the logit branch's 4x MLP holds
~23M parameters at 1000 classes. ImageNet R34->R18 (224 px): +7.2 GFLOP per image per step over KD (18.0 -> 25.2,
fwd+bwd), 31M extra parameters. On CIFAR pairs the 1024-channel latent dominates (res32x4->res8x4: 3.2 -> 11.6
GFLOP per image per step; ``ae_channels: null`` (teacher channels // 2): 3.4).

Where this differs from the official code (kdbench rules, not choices of DiffKD): maps of unequal spatial size are
average-pooled to the smaller one (the official code only pairs nets with equal sizes); the feature tap is
kdbench's last stage tap (for the CIFAR WRN the block3 output before the final BN-ReLU, where the official code
taps ``relu`` after it); the method's modules are kdbench method parameters (officially attached to the student,
so they share its optimizer settings, as here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.methods.feature_utils import as_map, same_size, stage_tap
from kdbench.methods.kd import kd_loss
from kdbench.models import Network, Outputs

# ---------------------------------------------------------------------------------------------- pure pieces

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # eps_theta(x_t, t), t: one timestep per item


def linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """``alpha_bar_t = prod_{i<=t} (1 - beta_i)`` for ``beta = linspace(beta_start, beta_end, num_steps)``, in
    float64 (the official scheduler's ``beta_schedule="linear"`` defaults [scheduling_ddim.py DDIMScheduler])."""
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def ddim_timesteps(num_train_steps: int, inference_steps: int) -> tuple[list[int], int]:
    """The official denoising chain: the scheduler is set to ``2K`` steps (stride ``r = N // 2K``) and only its
    second half is run, so the student's feature is taken as the noisy sample at ``t = (K - 1) r``.
    Returns (timesteps, high to low, ending at 0; the stride r)."""
    if inference_steps < 1 or 2 * inference_steps > num_train_steps:
        raise ValueError(f"inference_steps must be in [1, {num_train_steps // 2}], got {inference_steps}")
    stride = num_train_steps // (2 * inference_steps)
    return [i * stride for i in reversed(range(inference_steps))], stride


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_t: float, alpha_prev: float) -> torch.Tensor:
    """One deterministic DDIM update (eta = 0) from cumulative alphas ``alpha_t`` to ``alpha_prev``."""
    x0 = (x - (1 - alpha_t) ** 0.5 * eps) / alpha_t**0.5
    return alpha_prev**0.5 * x0 + (1 - alpha_prev) ** 0.5 * eps


def adapt_noise(feature: torch.Tensor, noise: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Adaptive noise matching: ``gamma * feature + (1 - gamma) * noise``, one gamma per item."""
    gamma = gamma.reshape(-1, *([1] * (feature.dim() - 1)))
    return gamma * feature + (1 - gamma) * noise


def q_sample(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The forward process ``sqrt(a_t) x0 + sqrt(1 - a_t) noise``, one timestep per item."""
    a = alphas_cumprod.to(x0.device)[t].to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def diffusion_loss(denoiser: EpsModel, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Epsilon-prediction loss on clean (teacher) features: ``MSE(denoiser(q_sample(x0, t), t), noise)``."""
    return F.mse_loss(denoiser(q_sample(x0, noise, t, alphas_cumprod), t), noise)


def ddim_denoise(denoiser: EpsModel, x: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: list[int],
                 stride: int) -> torch.Tensor:
    """Run the DDIM chain over ``timesteps`` (high to low) from ``x``; differentiable throughout."""
    for t in timesteps:
        eps = denoiser(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        alpha_prev = float(alphas_cumprod[t - stride]) if t - stride >= 0 else 1.0
        x = ddim_step(x, eps, float(alphas_cumprod[t]), alpha_prev)
    return x


def feature_loss(refined: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The feature branch's distillation term: mean squared error over every element; the target is detached."""
    return F.mse_loss(refined, target.detach())


def compress(autoencoder: nn.Module, teacher_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher map through the autoencoder: (the latent, detached: the target of both the distillation and the
    diffusion loss; the reconstruction loss ``MSE(decoder(latent), teacher_map)``, which alone trains the AE)."""
    hidden, rebuilt = autoencoder(teacher_map)
    return hidden.detach(), F.mse_loss(rebuilt, teacher_map)


# ---------------------------------------------------------------------------------------------- small modules


def _conv_bn(c_in: int, c_out: int, kernel: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.BatchNorm2d(c_out)]


class Bottleneck(nn.Module):
    """Residual 1x1 -> 3x3 -> 1x1 bottleneck (each conv with bias and BN, ReLU between), ``x + block(x)``."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        mid = channels // reduction
        self.block = nn.Sequential(*_conv_bn(channels, mid), nn.ReLU(), *_conv_bn(mid, mid, 3), nn.ReLU(),
                                   *_conv_bn(mid, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class Denoiser(nn.Module):
    """``eps_theta(x, t) = net(x + E[t])``: a learned per-channel timestep embedding (1280 rows, as the official
    code allocates) added to the input; ``net`` = two bottlenecks + conv1x1 + BN (kernel 3) or the 1x1-conv MLP
    C -> 4C -> C -> 4C -> C with BN (kernel 1, for logits)."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.time_embed = nn.Embedding(1280, channels)
        if kernel_size == 3:
            self.net = nn.Sequential(Bottleneck(channels), Bottleneck(channels), *_conv_bn(channels, channels))
        else:
            wide = 4 * channels
            self.net = nn.Sequential(*_conv_bn(channels, wide), nn.ReLU(), *_conv_bn(wide, channels),
                                     *_conv_bn(channels, wide), nn.ReLU(), nn.Conv2d(wide, channels, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x + self.time_embed(t)[:, :, None, None])


class NoiseAdapter(nn.Module):
    """Predicts the per-item feature weight ``gamma = softmax(Linear(C, 2)(g(x)))[:, 0]``; ``g`` is a bottleneck
    (reduction 8) + global average pool (kernel 3) or a 1x1-conv MLP C -> 2C -> C with BN (kernel 1, 1x1 maps)."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size == 3:
            self.body = nn.Sequential(Bottleneck(channels, reduction=8), nn.AdaptiveAvgPool2d(1))
        else:
            self.body = nn.Sequential(*_conv_bn(channels, 2 * channels), nn.ReLU(), *_conv_bn(2 * channels, channels))
        self.head = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1)).softmax(dim=1)[:, 0]


class AutoEncoder(nn.Module):
    """The linear autoencoder on teacher maps: encoder conv1x1 + BN to ``latent`` channels, decoder conv1x1 back."""

    def __init__(self, channels: int, latent: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(*_conv_bn(channels, latent))
        self.decoder = nn.Conv2d(latent, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(x)
        return hidden, self.decoder(hidden)


@dataclass
class BranchOutput:
    """What one DiffKD branch gives: the denoised student map, its target, the diffusion loss, the AE's
    reconstruction loss (None without AE) and the noise adapter's gamma per item."""

    refined: torch.Tensor
    target: torch.Tensor
    diffusion: torch.Tensor
    reconstruction: torch.Tensor | None
    gamma: torch.Tensor


class DiffusionBranch(nn.Module):
    """One DiffKD branch (the official ``DiffKD`` module): student projection, optional teacher AE, denoiser,
    noise adapter, output projection; linear-beta DDIM with ``num_train_timesteps`` steps."""

    def __init__(self, student_channels: int, teacher_channels: int, *, kernel_size: int = 3,
                 inference_steps: int = 5, num_train_timesteps: int = 1000, ae_channels: int | None = None) -> None:
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"kernel_size must be 1 or 3, got {kernel_size}")
        self.autoencoder = AutoEncoder(teacher_channels, ae_channels) if ae_channels else None
        channels = ae_channels or teacher_channels
        if kernel_size == 3 and channels < 8:
            raise ValueError(f"the kernel-3 denoiser needs at least 8 target channels, got {channels}")
        self.project = nn.Conv2d(student_channels, channels, 1)
        self.denoiser = Denoiser(channels, kernel_size)
        self.noise_adapter = NoiseAdapter(channels, kernel_size)
        self.out_proj = nn.Sequential(*_conv_bn(channels, channels))
        self.num_train_timesteps = num_train_timesteps
        self.timesteps, self.stride = ddim_timesteps(num_train_timesteps, inference_steps)
        self.register_buffer("alphas_cumprod", linear_alphas_cumprod(num_train_timesteps), persistent=False)
        self._host_alphas = self.alphas_cumprod.clone()  # on the CPU: the DDIM chain reads scalars of it, and
        # reading them from a GPU buffer would make every step wait (20 times) for the device

    def forward(self, student_map: torch.Tensor, teacher_map: torch.Tensor, *, noise: torch.Tensor | None = None,
                train_noise: torch.Tensor | None = None, train_t: torch.Tensor | None = None) -> BranchOutput:
        """Denoise ``student_map`` and train the denoiser on ``teacher_map``. The random draws (start noise, then
        training noise, then training timesteps) happen in the official order unless given."""
        x = self.project(student_map)
        teacher_map = teacher_map.detach()
        target, reconstruction = teacher_map, None
        if self.autoencoder is not None:
            target, reconstruction = compress(self.autoencoder, teacher_map)
        noise = torch.randn_like(x) if noise is None else noise
        gamma = self.noise_adapter(x)
        x = ddim_denoise(self.denoiser, adapt_noise(x, noise, gamma), self._host_alphas, self.timesteps,
                         self.stride)
        refined = self.out_proj(x)
        train_noise = torch.randn_like(target) if train_noise is None else train_noise
        if train_t is None:
            train_t = torch.randint(0, self.num_train_timesteps, (target.shape[0],), device=target.device)
        diffusion = diffusion_loss(self.denoiser, target, train_noise, train_t, self.alphas_cumprod)
        return BranchOutput(refined, target, diffusion, reconstruction, gamma)


# ---------------------------------------------------------------------------------------------- the method


@register_method("diffkd")
class DiffKD(Method):
    """DiffKD: denoise the student's last stage map and logits with diffusion models trained on the teacher's
    (the feature's through a linear autoencoder), then MSE / KL to the teacher; plus CE."""

    needs = Needs(labels=False, teacher=True)
    description = ("DiffKD: DDIM-denoised student feature map (MSE to AE-compressed teacher map) and logits (KL), "
                   "diffusion models trained on teacher features, plus CE")
    uses = "last stage tap + logits; per branch a projection, a 2-bottleneck denoiser, a noise adapter (+ teacher AE)"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int,
                 weight: float = 1.0,  # kd_loss_weight on every DiffKD term [cfg diffkd_b1.yaml: kd_loss_weight 1]
                 ce: float = 1.0,  # [cfg diffkd_b1.yaml: ori_loss_weight 1]
                 tau: float = 1.0,  # logit KL temperature [cfg kd_loss_kwargs.tau 1; kd_loss.py:79 default 1]
                 use_ae: bool = True,  # feature branch only [cfg use_ae True; kd_loss.py:78,90]
                 # latent channels [cfg ae_channels 1024; kd_loss.py:77 default 1024]; None: teacher channels // 2
                 # (the DiffKD module's own default, diffkd.py:24-25). For R34 (512 ch) 1024 *expands* the map.
                 ae_channels: int | None = 1024,
                 kernel_size: int = 3,  # feature branch (3: bottlenecks, 1: MLP); logits always 1 [kd_loss.py:82]
                 inference_steps: int = 5,  # [diffkd.py:14 default; KDLoss does not pass it]
                 num_train_timesteps: int = 1000,  # linear betas 1e-4..0.02 [diffkd.py:15,33]
                 logit_branch: bool = True,  # the second DiffKD on logits [kd_loss.py:82 kernel_sizes = [3, 1]]
                 stage: int = -1,  # feature tap: the last stage [kd_loss.py:15-30 KD_MODULES: layer4 / model.13]
                 ) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.weight, self.ce, self.tau = weight, ce, tau
        s_tap, t_tap = stage_tap(student, stage, "diffkd"), stage_tap(teacher, stage, "diffkd")
        (s_chs, _), (t_chs, _) = student.tap_info(s_tap), teacher.tap_info(t_tap)
        latent = (ae_channels or t_chs // 2) if use_ae else None
        steps = {"inference_steps": inference_steps, "num_train_timesteps": num_train_timesteps}
        self.feature_branch = DiffusionBranch(s_chs, t_chs, kernel_size=kernel_size, ae_channels=latent, **steps)
        self.logit_branch = DiffusionBranch(num_classes, num_classes, kernel_size=1, **steps) if logit_branch else None
        self.needs = Needs(labels=False, teacher=True, student_taps=(s_tap,), teacher_taps=(t_tap,))

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        s_tap, t_tap = self.needs.student_taps[0], self.needs.teacher_taps[0]
        s_map, t_map = same_size(as_map(s.taps[s_tap]), as_map(t.taps[t_tap]))
        out = self.feature_branch(s_map, t_map)
        terms = {"feature_kd": feature_loss(out.refined, out.target), "feature_diffusion": out.diffusion}
        if out.reconstruction is not None:
            terms["feature_ae"] = out.reconstruction
        if self.logit_branch is not None:
            z = self.logit_branch(as_map(s.logits), as_map(t.logits))
            terms["logit_kd"] = kd_loss(z.refined.flatten(1), t.logits, self.tau)
            terms["logit_diffusion"] = z.diffusion
        terms = {name: self.weight * value for name, value in terms.items()}
        return {**terms, **ce_term(batch, s.logits, self.ce)}
