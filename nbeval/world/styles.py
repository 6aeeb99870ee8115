"""The world's scenes drawn in graded other styles (`model=oracle_style`, severity 0–5): what a real
model's pictures look like beside the flat renders — shading, outlines, shadows, a background that is
not white, other fonts, a slightly tilted camera, sensor noise — with the truth kept exact: the same
objects in the same places (every centre stays in its named region), each still its colour to a human
eye, the same words, still readable.

Severities add up: 1 shading (each shape lit from one side, a gradient of its own colour; characters
lit alike); 2 + dark outlines and soft drop shadows; 3 + a tinted, textured background; 4 + a serif
font and a slight shear of the whole picture (as a camera not quite square to the page); 5 + camera
noise and a little blur. 0 is the flat render itself. Each object is drawn by the world's own renderer
alone (`render` of a one-object scene) and composited with its coverage, so edges stay anti-aliased.
The style's random choices (light direction, tint, texture) come from the sample, not the turn, so an
edit chain keeps its look and only what the edits change moves.
"""

from __future__ import annotations

import random
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from nbeval.world.render import FONT_PATH, render
from nbeval.world.scene import BACKGROUND, COLOURS, Scene

STYLE_VERSION = "1"
# shipped with matplotlib (DejaVu licence), found without importing it (a quarter second, at every run)
SERIF = Path(find_spec("matplotlib").submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSerif-Bold.ttf"
TINTS = ((246, 239, 224), (229, 236, 245), (235, 245, 234), (245, 233, 236))  # paper, grey-blue, mint, rose: light, far from the palette
SHADING = 0.22  # ± brightness across a shape, along the light
OUTLINE_PX, OUTLINE_DARKEN = 2, 0.55  # at 256 px
SHADOW_OFFSET, SHADOW_BLUR, SHADOW_DARKEN = 0.012, 2.5, 0.35
TEXTURE_AMPLITUDE = 10.0  # grey levels
SHEAR = 0.025  # x shifts by SHEAR·(y − centre): a centre moves at most 1.25 % of the side
NOISE_SIGMA, BLUR_RADIUS = 6.0, 0.7


def _coverage(layer: Image.Image) -> np.ndarray:
    """(H, W) in [0, 1]: how much of each pixel a one-object render covers (its difference from the
    background, relative to the largest)."""
    diff = np.abs(np.asarray(layer, dtype=np.float32) - np.array(BACKGROUND, dtype=np.float32)).max(-1)
    return np.clip(diff / max(float(diff.max()), 1.0), 0.0, 1.0)


def _lit(colour: np.ndarray, box: tuple[float, float, float, float], side: int, light: np.ndarray) -> np.ndarray:
    """(H, W, 3): `colour` brighter towards the light and darker away from it, across `box`."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    x0, y0, x1, y1 = box
    u = ((x - (x0 + x1) / 2) * light[0] + (y - (y0 + y1) / 2) * light[1]) / max(x1 - x0, y1 - y0, 1e-6)  # −½…½ across the box
    factor = 1 - 2 * SHADING * np.clip(u, -0.5, 0.5)
    return np.clip(colour[None, None, :] * factor[..., None], 0, 255)


def _background(side: int, severity: int, rng: random.Random) -> np.ndarray:
    if severity < 3:
        return np.broadcast_to(np.array(BACKGROUND, dtype=np.float32), (side, side, 3)).copy()
    tint = np.array(rng.choice(TINTS), dtype=np.float32)
    coarse = np.random.default_rng(rng.getrandbits(32)).normal(0, 1, (side // 16 + 1, side // 16 + 1)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
    return np.clip(tint[None, None, :] + TEXTURE_AMPLITUDE * texture[..., None], 0, 255)


def _over(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return canvas * (1 - alpha[..., None]) + colour * alpha[..., None]


def render_styled(scene: Scene, size: int, severity: int, rng: random.Random) -> Image.Image:
    """`scene` at `size` in style `severity` (0–5); `rng` makes the style's choices."""
    if severity == 0:
        return render(scene, size)
    angle = rng.uniform(0.15, 0.35) * np.pi  # light from the top left, give or take
    light = -np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)
    canvas = _background(size, severity, rng)
    shapes = [(s, _coverage(render(Scene(shapes=(s,)), size))) for s in scene.shapes]
    characters = render(Scene(characters=scene.characters), size)
    char_alpha = _coverage(characters)
    if severity >= 2:  # soft shadows fall away from the light
        solid = np.clip(sum((a for _, a in shapes), np.zeros((size, size), np.float32)) + char_alpha, 0, 1)
        dx, dy = (-light * SHADOW_OFFSET * size).round().astype(int)
        shadow = np.roll(np.roll(solid, dy, axis=0), dx, axis=1)
        shadow = np.asarray(Image.fromarray((shadow * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(SHADOW_BLUR * size / 256)), np.float32) / 255
        canvas = canvas * (1 - SHADOW_DARKEN * shadow[..., None])
    for s, alpha in shapes:
        colour = np.array(COLOURS[s.colour], dtype=np.float32)
        box = (s.x - s.radius, s.y - s.radius, s.x + s.radius, s.y + s.radius)
        canvas = _over(canvas, _lit(colour, box, size, light), alpha)
        if severity >= 2:
            inner = np.asarray(Image.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.MinFilter(2 * round(OUTLINE_PX * size / 256) + 1)), np.float32) / 255
            canvas = _over(canvas, colour * OUTLINE_DARKEN, np.clip(alpha - inner, 0, 1))
    if scene.characters:
        canvas = _over(canvas, np.clip(np.asarray(characters, np.float32) * _light_field(size, light)[..., None], 0, 255), char_alpha)
    words = render(Scene(words=scene.words), size, SERIF if severity >= 4 else FONT_PATH)
    word_alpha = _coverage(words)
    canvas = _over(canvas, np.asarray(words, np.float32), word_alpha)
    img = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8))
    if severity >= 4:
        edge = tuple(int(v) for v in np.asarray(img)[0, 0])
        img = img.transform(img.size, Image.Transform.AFFINE, (1, SHEAR, -SHEAR * size / 2, 0, 1, 0), Image.Resampling.BICUBIC, fillcolor=edge)
    if severity >= 5:
        a = np.asarray(img.filter(ImageFilter.GaussianBlur(BLUR_RADIUS * size / 256)), np.float32)
        a = a + np.random.default_rng(rng.getrandbits(32)).normal(0, NOISE_SIGMA, a.shape)
        img = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
    return img


def _light_field(side: int, light: np.ndarray) -> np.ndarray:
    """(H, W): a gentle brightness gradient across the whole picture, for what is not one shape."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    return 1 - SHADING * ((x - 0.5) * light[0] + (y - 0.5) * light[1])
