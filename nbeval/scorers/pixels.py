"""Masked SSIM and PSNR against true renders: is what should not have changed still there?

The truth names one or more comparisons, each a reference scene (rendered here by the world's
renderer at the image's size) and boxes to leave out (regions an edit was allowed to change). SSIM's
per-pixel map (torchmetrics: Gaussian window 11, σ 1.5, on RGB in [0, 1]) is averaged over the kept
pixels, with the boxes grown by the window's half-width so no changed pixel leaks into a kept window;
PSNR is computed over the kept pixels only and capped (identical pixels would give infinity).
LPIPS is not offered: it needs network weights that cannot be downloaded here.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from nbeval.scorers.base import Scorer
from nbeval.world import Scene, render, renderer_fingerprint

_KERNEL, _SIGMA = 11, 1.5


def keep_mask(side: int, exclude: list, grow: int = _KERNEL // 2) -> np.ndarray:
    """(side, side) bool: True outside every excluded box (fractions x0, y0, x1, y1)."""
    mask = np.ones((side, side), dtype=bool)
    for x0, y0, x1, y1 in exclude:
        c0, r0 = max(0, int(x0 * side) - grow), max(0, int(y0 * side) - grow)
        c1, r1 = min(side, int(np.ceil(x1 * side)) + grow), min(side, int(np.ceil(y1 * side)) + grow)
        mask[r0:r1, c0:c1] = False
    return mask


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


class MaskedSimilarity(Scorer):
    name = "pixels"
    uses_truth = True

    def __init__(self, psnr_cap: float = 60.0) -> None:
        if psnr_cap <= 0:
            raise ValueError(f"psnr_cap must be positive, got {psnr_cap}")
        self.psnr_cap = float(psnr_cap)

    def settings(self) -> dict:
        import torchmetrics

        return {
            "version": 1,
            "ssim": {"kernel": _KERNEL, "sigma": _SIGMA, "data_range": 1.0, "colour": "RGB"},
            "psnr_cap": self.psnr_cap,
            "torchmetrics": torchmetrics.__version__,
            "renderer": renderer_fingerprint(),
        }

    def compare(self, img: Image.Image, reference: Image.Image, exclude: list) -> dict:
        from torchmetrics.functional.image import (
            peak_signal_noise_ratio,
            structural_similarity_index_measure,
        )

        if img.size != reference.size or img.width != img.height:
            raise ValueError(f"image {img.size} and reference {reference.size} must be the same square size")
        mask = torch.from_numpy(keep_mask(img.width, exclude))
        if not mask.any():
            return {"ssim": None, "psnr": None, "kept": 0.0}
        a, b = _tensor(img), _tensor(reference)
        _, ssim_map = structural_similarity_index_measure(a, b, data_range=1.0, kernel_size=_KERNEL, sigma=_SIGMA, return_full_image=True)
        ssim = ssim_map[0].mean(0)[mask].mean().item()
        psnr = peak_signal_noise_ratio(a[0][:, mask], b[0][:, mask], data_range=1.0).item()
        return {"ssim": ssim, "psnr": min(psnr, self.psnr_cap), "kept": mask.float().mean().item()}

    def score(self, images: list[Image.Image], truths: list[dict]) -> list[dict]:
        out = []
        for img, truth in zip(images, truths):
            comparisons = truth.get("comparisons")
            if not comparisons:
                raise ValueError("the pixels scorer needs truth['comparisons']: {name: {scene, exclude}}")
            out.append({
                name: self.compare(img, render(Scene.from_dict(c["scene"]), img.width), c.get("exclude", []))
                for name, c in comparisons.items()
            })
        return out
