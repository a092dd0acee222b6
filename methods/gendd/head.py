"""GenDD's diffusion head: MAR's SimpleMLPAdaLN (DiT-style adaLN residual MLP) plus a token-index embedding.

``forward(x_t, t, c, idx)``: x_t (rows x token_dim) noisy token, t (rows,) timestep, c (rows x cond_dim) the
condition (LayerNorm'd student feature, zero for the unconditional branch), idx (rows,) token index.
Output: rows x (2 * token_dim) (epsilon, variance interpolation) or rows x token_dim for a fixed variance.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: ``x * (1 + scale) + shift``."""
    return x * (1 + scale) + shift


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_k), sin(t f_k)]`` with ``f_k = max_period^(-k / (dim/2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepEmbedder(nn.Module):
    """Sinusoidal 256-d timestep features -> Linear -> SiLU -> Linear."""

    def __init__(self, width: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_dim))


class ResBlock(nn.Module):
    """``x + gate * MLP(modulate(LN(x), shift, scale))`` with (shift, scale, gate) from the condition."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    """Non-affine LayerNorm, adaLN shift/scale, Linear to the output channels."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiffusionHead(nn.Module):
    """The conditional noise predictor of GenDD (depth residual blocks of ``width``)."""

    def __init__(self, token_dim: int, cond_dim: int, num_tokens: int, width: int = 1024, depth: int = 3,
                 learn_sigma: bool = True) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.out_channels = 2 * token_dim if learn_sigma else token_dim
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.token_embed = nn.Embedding(num_tokens, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform Linear weights and zero biases; N(0, 0.02) timestep MLP; zero adaLN and output layers.
        The token embedding keeps PyTorch's N(0, 1) default."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for block in self.res_blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        y = self.time_embed(t) + self.cond_embed(c) + self.token_embed(idx)
        x = self.input_proj(x)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, idx: torch.Tensor,
                         scale: float) -> torch.Tensor:
        """Classifier-free guidance: eps = eps_u + scale * (eps_c - eps_u), the unconditional branch with c = 0;
        the variance output comes from the conditional branch. ``scale == 1`` runs the conditional branch only."""
        if scale == 1.0:
            return self(x, t, c, idx)
        n = x.shape[0]
        out = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, torch.zeros_like(c)]), torch.cat([idx, idx]))
        cond, uncond = out[:n], out[n:]
        eps = uncond[:, : self.token_dim] + scale * (cond[:, : self.token_dim] - uncond[:, : self.token_dim])
        return torch.cat([eps, cond[:, self.token_dim:]], dim=1)
