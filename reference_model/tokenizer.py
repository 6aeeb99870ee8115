"""Tokenizer: a small KL autoencoder, 128×128 RGB ↔ continuous latents whose geometry is a `Geometry`.

The shipped checkpoint's (`Geometry()`, the default) is 8× downsampling to 16×16×16 latents; its round
trip loses small text (a 2 px stroke is a fraction of one latent cell: OCR 0.325 vs 0.865 for the
renders, benchmarks/results/reference_tokenizer.md). The presets now train 4× downsampling to 32×32×8
latents (conf/preset), where a stroke keeps a latent cell of its own.

128 px rather than 64: at 64 px the world's text is too small to read even when drawn perfectly (OCR
exact match of the oracle rendered at 64 px and upscaled: 0.28, at 128 px: 0.88; see the model card).
The generator patches the latent (`Geometry.patch`): 2×2 patches of 16×16×16 are 64 tokens of 64 numbers,
of 32×32×8 256 tokens of 32.
Losses: L1 on pixels with dark (text) pixels weighted up, so strokes stay legible, plus a small KL term
(as in latent diffusion's KL-f8 autoencoders) that keeps the latent smooth enough to generate in. Our L1
is a per-pixel mean where latent diffusion sums over pixels, so the same 1e-6 KL weight is ~50,000×
stronger here: it kept the posterior noisy, blurred text and merged yellow with orange. 1e-8 does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 128


@dataclass(frozen=True)
class Geometry:
    """Channel widths per resolution (one 2× downsampling between consecutive widths), latent channels,
    and the side of the latent patch that makes one generator token."""

    widths: tuple[int, ...] = (16, 32, 64, 128)
    channels: int = 16
    patch: int = 2

    @classmethod
    def from_dict(cls, d: dict | None) -> Geometry:
        return cls(**{**d, "widths": tuple(d["widths"])}) if d else cls()

    @property
    def latent_side(self) -> int:
        return IMAGE_SIZE >> (len(self.widths) - 1)

    @property
    def grid(self) -> int:
        """Generator tokens per side."""
        return self.latent_side // self.patch

    @property
    def n_tokens(self) -> int:
        return self.grid**2

    @property
    def token_dim(self) -> int:
        return self.channels * self.patch**2


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _down(cin: int, cout: int) -> nn.Module:
    return nn.Conv2d(cin, cout, 4, stride=2, padding=1)


def _up(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))


class Tokenizer(nn.Module):
    def __init__(self, geometry: Geometry = Geometry()) -> None:
        super().__init__()
        self.geometry = geometry
        w, c = geometry.widths, geometry.channels
        # Layer order (and so the state-dict keys) is the shipped checkpoint's for the default geometry.
        enc: list[nn.Module] = [nn.Conv2d(3, w[0], 3, padding=1)]
        for a, b in zip(w, w[1:]):
            enc += [_down(a, b), ResBlock(b)]
        enc += [ResBlock(w[-1]), nn.GroupNorm(8, w[-1]), nn.SiLU(), nn.Conv2d(w[-1], 2 * c, 1)]
        dec: list[nn.Module] = [nn.Conv2d(c, w[-1], 3, padding=1), ResBlock(w[-1])]
        for i in range(len(w) - 1, 0, -1):
            dec += [ResBlock(w[i]), _up(w[i], w[i - 1])]
        dec += [nn.GroupNorm(8, w[0]), nn.SiLU(), nn.Conv2d(w[0], 3, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        # Per-channel statistics of the latents, set after training so the generator sees unit scale.
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B,3,128,128) → normalised latent means (B, channels, side, side)."""
        mean, _ = self.moments(images)
        return (mean - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents → images in [-1, 1]."""
        z = latents * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        return self.decoder(z).clamp(-1, 1)

    def to_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → the generator's tokens (B, n_tokens, token_dim)."""
        return patchify(self.encode(images), self.geometry.patch)

    def from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The generator's tokens → images in [-1, 1]."""
        return self.decode(unpatchify(tokens, self.geometry.patch, self.geometry.channels))

    def loss(self, images: torch.Tensor, kl_weight: float = 1e-8, dark_weight: float = 4.0) -> tuple[torch.Tensor, dict]:
        mean, logvar = self.moments(images)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        recon = self.decoder(z)
        # Text is dark on white: weight its pixels up so a few thin strokes are not averaged away.
        weight = 1 + dark_weight * (images.mean(1, keepdim=True) < 0).float()
        l1 = (weight * (recon - images).abs()).mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        return l1 + kl_weight * kl, {"l1": l1.item(), "kl": kl.item()}

    @torch.no_grad()
    def set_latent_stats(self, images: torch.Tensor) -> None:
        mean, _ = self.moments(images)
        self.latent_mean.copy_(mean.mean(dim=(0, 2, 3)))
        self.latent_std.copy_(mean.std(dim=(0, 2, 3)).clamp_min(1e-3))


def to_tensor(images: list) -> torch.Tensor:
    """PIL RGB images (128×128) → (B,3,H,W) in [-1, 1]."""
    import numpy as np

    a = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(a).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def to_images(x: torch.Tensor) -> list:
    """(B,3,H,W) in [-1, 1] → PIL RGB images."""
    from PIL import Image

    a = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(im) for im in a]


def patchify(latents: torch.Tensor, p: int = 2) -> torch.Tensor:
    """(B,C,H,W) → (B, H/p·W/p, C·p·p): the generator's tokens."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, p: int = 2, channels: int = Geometry().channels) -> torch.Tensor:
    b, n, _ = tokens.shape
    side = int(n**0.5)
    x = tokens.reshape(b, side, side, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, side * p, side * p)


def reconstruct_loss_check(model: Tokenizer, images: torch.Tensor) -> float:
    with torch.no_grad():
        return F.l1_loss(model.decode(model.encode(images)), images).item()
