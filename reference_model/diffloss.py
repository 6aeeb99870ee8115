"""Per-token diffusion head (after MAR's `diffloss.py`): a small MLP denoiser conditioned on the
transformer's output for that token, so continuous tokens need no quantisation.

Training: DDPM with a cosine noise schedule and v-prediction (stable at few sampling steps). Sampling:
deterministic DDIM over a few respaced steps, starting from noise scaled by `temperature`, with
classifier-free guidance on the prediction. `RegressionHead` is the ablation: the same conditioning,
one MLP, mean-squared error, no noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TRAIN_STEPS = 1000


def alphas_cumprod(steps: int = TRAIN_STEPS) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: ᾱ(t) for t = 0…steps-1."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return (f[1:] / f[0]).clamp(1e-5, 1.0).float()


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class AdaLNBlock(nn.Module):
    """Residual MLP whose norm is scaled and shifted by the condition (DiT/MAR style)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class DiffusionHead(nn.Module):
    def __init__(self, token_dim: int, cond_dim: int, width: int = 384, depth: int = 3) -> None:
        super().__init__()
        self.token_dim, self.width = token_dim, width
        self.inp = nn.Linear(token_dim, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.cond = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, token_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("ab", alphas_cumprod(), persistent=False)

    def predict_v(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        c = self.time(timestep_embedding(t, self.width)) + self.cond(z)
        h = self.inp(x_t)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        return self.out(self.final_norm(h) * (1 + scale) + shift)

    def loss(self, target: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Mean v-prediction error; `target` (N, token_dim) clean tokens, `z` (N, cond_dim) conditions."""
        t = torch.randint(0, TRAIN_STEPS, (target.shape[0],), device=target.device)
        ab = self.ab[t][:, None]
        noise = torch.randn_like(target)
        x_t = ab.sqrt() * target + (1 - ab).sqrt() * noise
        v = ab.sqrt() * noise - (1 - ab).sqrt() * target
        return F.mse_loss(self.predict_v(x_t, t, z), v)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, noise: torch.Tensor, steps: int, cfg_scale: float = 1.0, z_uncond: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (N, token_dim) for conditions z (N, cond_dim), by DDIM over `steps` respaced steps from
        `noise` (standard normal times the sampling temperature, drawn by the caller per image)."""
        x = noise
        ts = torch.linspace(TRAIN_STEPS - 1, 0, steps).round().long().tolist()
        guided = z_uncond is not None and cfg_scale != 1.0
        zz = torch.cat([z, z_uncond]) if guided else z
        for i, t in enumerate(ts):
            tt = torch.full((zz.shape[0],), t, device=z.device, dtype=torch.long)
            v = self.predict_v(torch.cat([x, x]) if guided else x, tt, zz)
            if guided:
                v_c, v_u = v.chunk(2)
                v = v_u + cfg_scale * (v_c - v_u)
            ab = self.ab[t]
            x0 = ab.sqrt() * x - (1 - ab).sqrt() * v
            eps = (1 - ab).sqrt() * x + ab.sqrt() * v
            ab_next = self.ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=z.device)
            x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
        return x


class RegressionHead(nn.Module):
    """Ablation: predict each token's mean directly (no sampling, so no diversity and blurrier tokens)."""

    def __init__(self, token_dim: int, cond_dim: int, width: int = 384) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, token_dim))

    def loss(self, target: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.net(z), target)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, noise: torch.Tensor, steps: int, cfg_scale: float = 1.0, z_uncond: torch.Tensor | None = None) -> torch.Tensor:
        pred = self.net(z)
        if z_uncond is not None and cfg_scale != 1.0:
            pred = self.net(z_uncond) + cfg_scale * (pred - self.net(z_uncond))
        return pred
