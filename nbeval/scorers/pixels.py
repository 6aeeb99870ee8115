"""Masked SSIM, PSNR and (optionally) LPIPS against true renders: is what should not have changed still there?

The truth names one or more comparisons, each a reference scene (rendered here by the world's
renderer at the image's size) and boxes to leave out (regions an edit was allowed to change). SSIM's
per-pixel map (torchmetrics: Gaussian window 11, σ 1.5, on RGB in [0, 1]) is averaged over the kept
pixels, with the boxes grown by the window's half-width so no changed pixel leaks into a kept window;
PSNR is computed over the kept pixels only and capped (identical pixels would give infinity).

LPIPS (lower = more similar) is off by default, as it needs ImageNet backbone weights nothing may
download here: the user gives a local torchvision state dict (`lpips.weights`) for `lpips.net` (alex,
vgg or squeeze); torchmetrics' own `_LPIPS` supplies the learned linear layers shipped inside its
package. LPIPS has no mask, so the reference's pixels are copied into the image's excluded (grown)
boxes, which then differ by nothing, and LPIPS's per-pixel map is averaged over the kept pixels, like
SSIM's, so the value does not shrink as the excluded area grows (with no box, this mean equals
torchmetrics' usual spatially averaged LPIPS to within 1e-5 relative). Known limitation: the network's
receptive fields near a box edge still see a little context across it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from nbeval.readings import PixelsReading, Similarity
from nbeval.records import sha256_file
from nbeval.scorers.base import Scorer, check_sha256
from nbeval.world import Scene, render, renderer_fingerprint

if TYPE_CHECKING:  # torch is imported where pixels are compared or LPIPS loads: fingerprinting needs none
    import torch

_KERNEL, _SIGMA = 11, 1.5
LPIPS_BACKBONES = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}  # torchmetrics net → torchvision model


def keep_mask(side: int, exclude: list, grow: int = _KERNEL // 2) -> np.ndarray:
    """(side, side) bool: True outside every excluded box (fractions x0, y0, x1, y1)."""
    mask = np.ones((side, side), dtype=bool)
    for x0, y0, x1, y1 in exclude:
        c0, r0 = max(0, int(x0 * side) - grow), max(0, int(y0 * side) - grow)
        c1, r1 = min(side, int(np.ceil(x1 * side)) + grow), min(side, int(np.ceil(y1 * side)) + grow)
        mask[r0:r1, c0:c1] = False
    return mask


def _tensor(img: Image.Image) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _torchvision_key(name: str) -> str:
    """torchmetrics' backbone parameter name → torchvision's: its slices (`slice1.0.weight`, or
    `slices.0.0.weight` for squeeze) keep the indices of torchvision's `features`."""
    return "features." + re.sub(r"^(slice\d+|slices\.\d+)\.", "", name)


def load_lpips(net: str, weights: Path) -> torch.nn.Module:
    """torchmetrics' LPIPS (per-pixel map) with the user's torchvision backbone weights.

    `pnet_rand=True` builds the backbone with `weights=None`: torchvision's pretrained path would
    download and would also demand its own file name (sha256 prefix), which a user's copy need not keep.
    """
    import torch
    from torchmetrics.functional.image.lpips import _LPIPS

    if net not in LPIPS_BACKBONES:
        raise ValueError(f"scorer.pixels.lpips.net must be one of {sorted(LPIPS_BACKBONES)}, got {net!r}")
    model = _LPIPS(pretrained=True, net=net, pnet_rand=True, spatial=True)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    given = {k: v for k, v in state.items() if k.startswith("features.")} if isinstance(state, dict) else {}
    want = {_torchvision_key(k): v.shape for k, v in model.net.state_dict().items()}
    missing, unexpected = sorted(want.keys() - given.keys()), sorted(given.keys() - want.keys())
    reshaped = sorted(k for k in want.keys() & given.keys() if given[k].shape != want[k])
    if missing or unexpected or reshaped:
        raise ValueError(
            f"LPIPS weights {weights} are not a torchvision {LPIPS_BACKBONES[net]} state dict (scorer.pixels.lpips.net={net!r}): "
            f"missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shape {reshaped[:4]}"
        )
    model.net.load_state_dict({k: given[_torchvision_key(k)] for k in model.net.state_dict()})
    return model.eval()


class MaskedSimilarity(Scorer):
    name = "pixels"
    reading = PixelsReading
    uses_truth = True

    def __init__(self, psnr_cap: float = 60.0, lpips: dict | None = None) -> None:
        """`lpips`: {net, weights, sha256}; off when None or `weights` is None."""
        if psnr_cap <= 0:
            raise ValueError(f"psnr_cap must be positive, got {psnr_cap}")
        self.psnr_cap = float(psnr_cap)
        lpips = dict(lpips or {})
        unknown = set(lpips) - {"net", "weights", "sha256"}
        if unknown:
            raise ValueError(f"unknown scorer.pixels.lpips keys {sorted(unknown)}; expected net, weights, sha256")
        self._lpips: torch.nn.Module | None = None
        self.lpips_net, self.lpips_sha256 = lpips.get("net", "alex"), None
        if lpips.get("weights") is not None:
            path = Path(lpips["weights"]).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"LPIPS weights {path} not found (scorer.pixels.lpips.weights): give a local file, nothing is downloaded")
            self.lpips_sha256 = sha256_file(path)
            check_sha256(f"LPIPS weights {path}", self.lpips_sha256, lpips.get("sha256"))
            self._lpips = load_lpips(self.lpips_net, path)

    def settings(self) -> dict:
        from importlib.metadata import version  # not torchmetrics.__version__: importing it costs seconds a warm run never needs

        out = {
            "version": 1,
            "ssim": {"kernel": _KERNEL, "sigma": _SIGMA, "data_range": 1.0, "colour": "RGB"},
            "psnr_cap": self.psnr_cap,
            "torchmetrics": version("torchmetrics"),
            "renderer": renderer_fingerprint(),
        }
        if self._lpips is not None:  # only when on, so runs without LPIPS keep their fingerprint
            out["lpips"] = {
                "net": self.lpips_net,
                "backbone": f"torchvision {LPIPS_BACKBONES[self.lpips_net]}",
                "backbone_sha256": self.lpips_sha256,
                "linear_layers": f"torchmetrics lpips_models/{self.lpips_net}.pth",
                "masking": "reference pixels copied into the grown excluded boxes; per-pixel map averaged over kept pixels",
            }
        return out

    def compare(self, img: Image.Image, reference: Image.Image, exclude: list) -> Similarity:
        import torch
        from torchmetrics.functional.image import (
            peak_signal_noise_ratio,
            structural_similarity_index_measure,
        )

        if img.size != reference.size or img.width != img.height:
            raise ValueError(f"image {img.size} and reference {reference.size} must be the same square size")
        mask = torch.from_numpy(keep_mask(img.width, exclude))
        if not mask.any():
            return {"ssim": None, "psnr": None, "kept": 0.0} | ({"lpips": None} if self._lpips is not None else {})
        a, b = _tensor(img), _tensor(reference)
        _, ssim_map = structural_similarity_index_measure(a, b, data_range=1.0, kernel_size=_KERNEL, sigma=_SIGMA, return_full_image=True)
        ssim = ssim_map[0].mean(0)[mask].mean().item()
        psnr = peak_signal_noise_ratio(a[0][:, mask], b[0][:, mask], data_range=1.0).item()
        out = {"ssim": ssim, "psnr": min(psnr, self.psnr_cap), "kept": mask.float().mean().item()}
        if self._lpips is not None:
            with torch.inference_mode():  # (1, 1, H, W): the per-pixel map, of the image with the reference in its boxes
                lpips_map = self._lpips(torch.where(mask, a, b), b, normalize=True)
            out["lpips"] = lpips_map[0, 0][mask].mean().item()
        return out

    def read(self, images: list[Image.Image], truths: list[dict]) -> list[PixelsReading]:
        """Each comparison of the truth against its reference: the render of a `scene`, or an image of
        the truth's context (`context`: "first", "previous", … — the model's own earlier images)."""
        out = []
        for img, truth in zip(images, truths):
            comparisons = truth.get("comparisons")
            if not comparisons:
                raise ValueError("the pixels scorer needs truth['comparisons']: {name: {scene or context, exclude}}")
            out.append({name: self.compare(img, self._reference(c, truth, img.width), c.get("exclude", [])) for name, c in comparisons.items()})
        return out

    @staticmethod
    def _reference(comparison: dict, truth: dict, side: int) -> Image.Image:
        if "context" in comparison:
            ref = truth["context"][comparison["context"]].convert("RGB")
            return ref if ref.size == (side, side) else ref.resize((side, side), Image.Resampling.BICUBIC)
        return render(Scene.from_dict(comparison["scene"]), side)
