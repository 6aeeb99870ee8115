"""Decoding images that come from outside (a folder, an HTTP API) into plain 8-bit RGB, or a clear error.

Models run elsewhere hand us whatever their pipeline wrote: CMYK JPEGs, 16-bit PNGs, palette images
with transparency, rotated phone photos, truncated files, decompression bombs. Each becomes either a
correct RGB image or an ImageError that names the problem, never a crash of the run.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_SIDE = 2048  # larger images are downscaled: no scorer here benefits from more


class ImageError(ValueError):
    """An input image that cannot be decoded into RGB; the message says why."""


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        if im.mode == "F" and a.max() <= 1.0:
            top = 1.0
        return Image.fromarray(np.clip(a / top * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
    """Open, check and convert an image file or encoded bytes to RGB uint8."""
    try:
        im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except UnidentifiedImageError as e:
        raise ImageError("not an image file PIL can decode") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large to decode safely: {e}") from e
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise ImageError(f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} (max_pixels)")
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"image data is corrupt or truncated: {e}") from e
        im = ImageOps.exif_transpose(im) or im
        rgb = _to_rgb(im)
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb


def resize_longest_side(img: Image.Image, side: int) -> Image.Image:
    """`img` in RGB with its longest side brought to `side` pixels (bicubic, up or down, aspect kept):
    how the OCR scorers bring every image to the size their card was measured at."""
    img = img.convert("RGB")
    scale = side / max(img.size)
    if scale == 1:
        return img
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC)
