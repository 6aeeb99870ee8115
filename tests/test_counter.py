"""The palette counter's segmentation equals its per-pixel definition (scipy's median filter, the
nearest palette colour of every pixel) on renders with few colours and on damaged ones with thousands:
it is computed once per distinct colour, in Pillow's median filter, for speed only."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from nbeval.adapters.base import GenRequest
from nbeval.adapters.oracle import OracleAdapter
from nbeval.scorers.counting import ShapeCounter
from suites.counting import CountingSuite


def _by_definition(counter: ShapeCounter, img) -> np.ndarray:
    img = img.convert("RGB")
    if img.size != (counter.work_side, counter.work_side):
        img = img.resize((counter.work_side, counter.work_side), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.float32)
    if counter.median > 1:
        a = ndimage.median_filter(a, size=(counter.median, counter.median, 1))
    d = np.linalg.norm(a[:, :, None, :] - counter._palette[None, None], axis=-1)
    idx = d.argmin(-1)
    idx[d.min(-1) > counter.colour_tolerance] = -1
    return idx


@pytest.mark.parametrize("median", [1, 3, 5])
def test_segmentation_equals_the_per_pixel_definition(median):
    suite = CountingSuite()
    reqs = [GenRequest(s.id, s.prompt, s.seed, suite.image_size, s.truth[0]) for s in suite.samples(3, 0)]
    images = []
    for corruption, severity in [(None, 0), ("noise", 5), ("jpeg", 4), ("blur", 3)]:
        images += [g.image for g in OracleAdapter(corruption=corruption, severity=severity).generate(reqs)]
    images.append(images[4].resize((300, 200)))  # resized to the working side first
    counter = ShapeCounter(median=median)
    n_colours = []
    for img in images:
        got = counter._segment(img)
        assert np.array_equal(got, _by_definition(counter, img))
        n_colours.append(len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)))
    assert min(n_colours) < 300 and max(n_colours) > 10_000, "both kinds of image were compared"


def test_an_even_median_window_is_refused():
    with pytest.raises(ValueError, match="odd"):
        ShapeCounter(median=4)
