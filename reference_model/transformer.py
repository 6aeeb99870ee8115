"""The transformer block shared by the planner and the generator (pre-norm, as in nanoGPT).

Attention can prepend cached keys/values (`past`), which is how the generator computes its prefix once
per image and the planner decodes one token at a time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

KV = tuple[torch.Tensor, torch.Tensor]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        new = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, c)), new


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        a, kv = self.attn(self.norm1(x), mask, past)
        x = x + a
        return x + self.mlp(self.norm2(x)), kv


def fourier_xy(xy: torch.Tensor, bands: int = 16) -> torch.Tensor:
    """(…, 2) positions in [0, 1] → (…, 4·bands) sin/cos features. The generator embeds image-token
    positions and planned object positions with the same features, so attention can match them."""
    freqs = torch.arange(1, bands + 1, device=xy.device, dtype=xy.dtype) * math.pi
    angles = xy[..., :, None] * freqs  # (…, 2, bands)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)
