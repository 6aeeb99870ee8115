"""Shape counter for the world: colour segmentation, connected components, shape classification.

It knows the world's palette, so on clean renders it is exact; blur, noise and compression erode it
gradually, which is what the validity tests check. For open-world images a detector with weights is
the right tool; this one is the in-domain ground-truth instrument.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from nbeval.readings import CounterReading
from nbeval.scorers.base import Scorer
from nbeval.world.scene import BACKGROUND, COLOURS, TEXT_COLOUR

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def classify(mask: np.ndarray) -> str:
    """Kind of a filled blob from how much of its bounding box it fills.

    square ≈ 1.0 of the box, circle ≈ π/4 ≈ 0.79, triangle ≈ 0.5.
    """
    fill = mask.sum() / mask.size
    if fill > 0.9:
        return "square"
    if fill > 0.64:
        return "circle"
    return "triangle"


class ShapeCounter(Scorer):
    name = "counter"
    reading = CounterReading

    def __init__(self, work_side: int = 256, colour_tolerance: float = 90.0, min_area: float = 0.0012, median: int = 3, rim: int = 3) -> None:
        """`min_area` is a fraction of the image area (a small shape covers about 0.004); `rim` the
        width in pixels within which a blob counts as the rim of a neighbouring shape; `median` the side
        of the median filter applied first (odd: a window centred on its pixel; 1 for none)."""
        if median < 1 or median % 2 == 0:
            raise ValueError(f"median must be an odd window side (1 for none), not {median}")
        self.work_side, self.colour_tolerance, self.min_area, self.median, self.rim = work_side, colour_tolerance, min_area, median, rim
        self._names = list(COLOURS) + ["_background", "_text"]
        self._palette = np.array(list(COLOURS.values()) + [BACKGROUND, TEXT_COLOUR], dtype=np.float32)

    def settings(self) -> dict:
        return {
            "version": 3,
            "work_side": self.work_side,
            "colour_tolerance": self.colour_tolerance,
            "min_area": self.min_area,
            "median": self.median,
            "rim": self.rim,
            "palette": {k: list(v) for k, v in COLOURS.items()},
        }

    def _segment(self, img: Image.Image) -> np.ndarray:
        """Index of the nearest palette colour per pixel, -1 where nothing is near enough."""
        img = img.convert("RGB")
        if img.size != (self.work_side, self.work_side):
            img = img.resize((self.work_side, self.work_side), Image.Resampling.BILINEAR)
        a = np.asarray(img)
        if self.median > 1:
            # scipy.ndimage.median_filter(a, (m, m, 1)) to the byte (its "reflect" border is numpy's
            # "symmetric" pad), in Pillow's median filter: 9 ms an image, not 15
            m = self.median // 2
            padded = Image.fromarray(np.pad(a, ((m, m), (m, m), (0, 0)), mode="symmetric"))
            a = np.asarray(padded.filter(ImageFilter.MedianFilter(self.median)))[m:-m, m:-m]
        # A render holds few distinct colours: find the nearest palette entry once per colour, not per pixel.
        keys = (a[..., 0].astype(np.int32) << 16) | (a[..., 1].astype(np.int32) << 8) | a[..., 2]
        uniq, inverse = np.unique(keys.ravel(), return_inverse=True)
        colours = np.stack([uniq >> 16, (uniq >> 8) & 255, uniq & 255], axis=-1).astype(np.float32)
        d = np.linalg.norm(colours[:, None, :] - self._palette[None], axis=-1)
        nearest = d.argmin(-1)
        nearest[d.min(-1) > self.colour_tolerance] = -1
        return nearest[inverse].reshape(keys.shape)

    def _is_rim(self, blob: np.ndarray, near_other: np.ndarray) -> bool:
        from scipy import ndimage

        if near_other[blob].mean() <= 0.5:
            return False
        core = ndimage.binary_erosion(blob, _EIGHT_CONNECTED, iterations=self.rim - 1)
        return core.sum() < 0.25 * blob.sum()

    def _read_one(self, img: Image.Image) -> CounterReading:
        from scipy import ndimage

        idx = self._segment(img)
        min_px = self.min_area * idx.size
        shape_px = (idx >= 0) & (idx < len(COLOURS))
        objects = []
        for ci, colour in enumerate(COLOURS):
            labels, n = ndimage.label(idx == ci, structure=_EIGHT_CONNECTED)
            # Things never touch in the world, so a thin blob hugging another colour's shape is the
            # blended rim of that shape (resampling, anti-aliasing: orange edges read as yellow).
            near_other = ndimage.binary_dilation(shape_px & (idx != ci), _EIGHT_CONNECTED, iterations=self.rim)
            for sl, lab in zip(ndimage.find_objects(labels), range(1, n + 1)):
                blob = labels[sl] == lab
                if blob.sum() < min_px or self._is_rim(blob, near_other[sl]):
                    continue
                y, x = sl
                objects.append(
                    {
                        "kind": classify(blob),
                        "colour": colour,
                        "area": int(blob.sum()),
                        "bbox": [x.start / idx.shape[1], y.start / idx.shape[0], x.stop / idx.shape[1], y.stop / idx.shape[0]],
                    }
                )
        counts: dict[str, int] = {}
        for o in objects:
            key = f"{o['colour']} {o['kind']}"
            counts[key] = counts.get(key, 0) + 1
        return {"counts": dict(sorted(counts.items())), "objects": objects}

    def read(self, images: list[Image.Image], truths: list[dict]) -> list[CounterReading]:
        return [self._read_one(im) for im in images]
